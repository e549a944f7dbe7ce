"""Cross-modal conversation graph: nodes are (utterance, modality) pairs.

Node ``(i, m)`` receives messages from (edges ``src → dst``):

- ``(i, m')`` for every modality m' of the same utterance (itself included): cross-modal edges,
  with a learned bias per (m', m) pair and head;
- ``(i − o, m)`` for ``o = 1 … window``: the same modality along time (past window), with a
  learned bias per offset and head plus a same-/other-speaker bias; bidirectional mode adds
  ``(i + o, m)`` with their own offset biases.

Absent modalities are masked out (they neither send nor receive; their rows stay 0). Each layer
is a graph-attention layer (interpretation: dot-product GAT with edge-type biases, written with
dense windows instead of torch-geometric's edge lists, so ``forward`` and ``step`` share every
operation and the step path has no per-call graph construction)::

    α_{dst,src} = softmax_src(q_dst · k_src / √d + bias(edge))        per head, d = H / heads
    x'_dst      = LayerNorm(x_dst + W_o Σ_src α v_src)

``forward`` gathers the windows from dense dialogues ``[B, L, 3, H]`` by shifting (no per-edge
loop); ``step`` reads the past ``window`` utterances' keys/values from per-layer
:class:`RingCache` s, so a step costs ``O(layers · window · 3 · H)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from realtime_erc.conversation.context import RingCache

MODALITY_NODES = 3


def shift_stack(x: Tensor, offsets: list[int], fill: float | bool | int = 0) -> Tensor:
    """``x``: ``[B, L, ...]`` → ``[B, L, S, ...]`` with ``out[:, i, s] = x[:, i − offsets[s]]``
    (``fill`` outside the dialogue)."""
    b, length = x.shape[:2]
    pad = max((abs(o) for o in offsets), default=0)
    edge = x.new_full((b, pad, *x.shape[2:]), fill)
    padded = torch.cat([edge, x, edge], 1)
    return torch.stack([padded[:, pad - o : pad - o + length] for o in offsets], 2)


class CrossModalGraphLayer(nn.Module):
    """One graph-attention layer over the cross-modal graph (see the module docstring)."""

    def __init__(self, hidden: int, heads: int, window: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"graph heads={heads} must divide hidden={hidden}")
        self.hidden, self.heads, self.window = hidden, heads, window
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.pair_bias = nn.Parameter(torch.zeros(MODALITY_NODES, heads, MODALITY_NODES))
        self.time_bias = nn.Parameter(torch.zeros(heads, 2 * window))
        self.speaker_bias = nn.Parameter(torch.zeros(heads, 2))

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``[..., 3, H]`` → q, k, v ``[..., 3, heads, d]``."""
        q, k, v = self.qkv(x).chunk(3, -1)
        shape = (*x.shape[:-1], self.heads, self.hidden // self.heads)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def _attend(
        self,
        x: Tensor,
        qkv: tuple[Tensor, Tensor, Tensor],
        node_mask: Tensor,
        k_time: Tensor,
        v_time: Tensor,
        mask_time: Tensor,
        same: Tensor,
        time_bias: Tensor,
    ) -> Tensor:
        """``x``: ``[*, 3, H]``; q/k/v: ``[*, 3, h, d]``; ``node_mask``: ``[*, 3]``;
        ``k_time``/``v_time``: ``[*, S, 3, h, d]``; ``mask_time``: ``[*, S, 3]``; ``same``:
        ``[*, S]`` long; ``time_bias``: ``[h, S]`` → ``[*, 3, H]``."""
        q, k, v = qkv
        scale = 1.0 / math.sqrt(q.shape[-1])
        s_cross = torch.einsum("...mhd,...phd->...mhp", q, k) * scale + self.pair_bias
        s_cross = s_cross.masked_fill(~node_mask[..., None, None, :], -1e9)
        s_time = torch.einsum("...mhd,...smhd->...mhs", q, k_time) * scale
        speaker = self.speaker_bias.T[same].transpose(-1, -2).unsqueeze(-3)  # [*, 1, h, S]
        s_time = s_time + time_bias + speaker
        s_time = s_time.masked_fill(~mask_time.transpose(-1, -2)[..., None, :], -1e9)
        attn = torch.softmax(torch.cat([s_cross, s_time], -1), -1)
        out = torch.einsum("...mhp,...phd->...mhd", attn[..., :MODALITY_NODES], v)
        out = out + torch.einsum("...mhs,...smhd->...mhd", attn[..., MODALITY_NODES:], v_time)
        out = self.norm(x + self.out(out.flatten(-2)))
        return out * node_mask.unsqueeze(-1)

    def forward(self, x: Tensor, node_mask: Tensor, speaker: Tensor, causal: bool) -> Tensor:
        """``x``: ``[B, L, 3, H]``; ``node_mask``: ``[B, L, 3]``; ``speaker``: ``[B, L]`` →
        ``[B, L, 3, H]``."""
        w = self.window
        offsets = list(range(1, w + 1)) + ([] if causal else [-o for o in range(1, w + 1)])
        q, k, v = self._project(x)
        k_time, v_time = shift_stack(k, offsets), shift_stack(v, offsets)
        mask_time = shift_stack(node_mask, offsets, False)
        same = (shift_stack(speaker, offsets, -1) == speaker.unsqueeze(-1)).long()
        bias = self.time_bias if not causal else self.time_bias[:, :w]
        return self._attend(x, (q, k, v), node_mask, k_time, v_time, mask_time, same, bias)

    def new_cache(self, device: torch.device | None = None) -> dict[str, RingCache]:
        shape = (MODALITY_NODES, self.hidden)
        return {
            "k": RingCache(self.window, shape, device=device),
            "v": RingCache(self.window, shape, device=device),
            "mask": RingCache(self.window, (MODALITY_NODES,), device=device, dtype=torch.bool),
        }

    def step(
        self, x: Tensor, node_mask: Tensor, same: Tensor, cache: dict[str, RingCache]
    ) -> Tensor:
        """One new utterance: ``x`` ``[3, H]``, ``node_mask`` ``[3]``, ``same`` ``[S]`` long
        (same speaker as the utterance o = 1 … S back, S = cached rows) → ``[3, H]``."""
        q, k, v = self._project(x.unsqueeze(0))
        s = len(cache["k"])
        shape = (1, s, MODALITY_NODES, self.heads, self.hidden // self.heads)
        k_time = cache["k"].last(s).view(shape)
        v_time = cache["v"].last(s).view(shape)
        mask_time = cache["mask"].last(s).unsqueeze(0)
        out = self._attend(
            x.unsqueeze(0),
            (q, k, v),
            node_mask.unsqueeze(0),
            k_time,
            v_time,
            mask_time,
            same.unsqueeze(0),
            self.time_bias[:, :s],
        )
        cache["k"].append(k[0].flatten(-2))
        cache["v"].append(v[0].flatten(-2))
        cache["mask"].append(node_mask)
        return out[0]
