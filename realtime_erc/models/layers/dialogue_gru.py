"""A GRU along each dialogue of a flattened batch: causal (forward direction only) or
bidirectional (forward + backward, summed so the width is the same in both modes).

- :meth:`DialogueGRU.forward` — ``x [N, D]`` flat utterances, ``batch`` (for dialogue/position)
  → ``[N, H]``. Dialogues are padded to ``[B, L, D]`` at the end, which cannot affect earlier
  steps of the forward direction; the backward direction runs on each dialogue reversed within
  its own length (:func:`reverse_index`), so padding never leaks into it either.
- :meth:`DialogueGRU.step` — ``x [S, D]`` one new utterance for each of ``S`` conversations,
  ``h [1, S, H]`` or None → ``(out [S, H], h [1, S, H])``: the forward direction carried one
  utterance at a time (streaming), identical to the batch pass.
"""

from __future__ import annotations

from torch import Tensor, nn

from realtime_erc.models.base import DialogueBatch


def reverse_index(batch: DialogueBatch) -> Tensor:
    """``[N]`` flat index that reverses every dialogue in place (an involution):
    ``x[reverse_index(batch)]`` lists each dialogue back to front."""
    lengths = batch.lengths
    starts = lengths.cumsum(0) - lengths
    d = batch.dialogue
    return starts[d] + lengths[d] - 1 - batch.position


class DialogueGRU(nn.Module):
    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.fwd = nn.GRU(in_dim, hidden, batch_first=True)
        self.bwd = nn.GRU(in_dim, hidden, batch_first=True)

    def reset_parameters(self) -> None:
        self.fwd.reset_parameters()
        self.bwd.reset_parameters()

    def forward(self, x: Tensor, batch: DialogueBatch, causal: bool = True) -> Tensor:
        dense, _ = batch.dense(x)
        out = batch.flat(self.fwd(dense)[0])
        if not causal:
            rev = reverse_index(batch)
            dense_rev, _ = batch.dense(x[rev])
            out = out + batch.flat(self.bwd(dense_rev)[0])[rev]
        return out

    def step(self, x: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        out, h = self.fwd(x.unsqueeze(1), h)
        return out.squeeze(1), h
