"""The conversation graph: utterances are nodes; an edge j → i joins i to the utterances j in its
context window, typed by speaker relation (and direction when non-causal).

Relation ids (``edge_type``):

==  ====================  ==============================
0   self                  j = i
1   same speaker, past    j < i, speaker(j) = speaker(i)
2   other speaker, past   j < i, speaker(j) ≠ speaker(i)
3   same speaker, future  j > i (non-causal only)
4   other speaker, future j > i (non-causal only)
==  ====================  ==============================

Both constructions are tensor operations (no per-edge Python loop): :func:`build_graph` for a
batch of whole dialogues, :class:`IncrementalGraph` for the edges one new utterance adds while
streaming. For ``future=0`` they produce the same edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SELF, SAME_PAST, OTHER_PAST, SAME_FUTURE, OTHER_FUTURE = range(5)
NUM_RELATIONS_CAUSAL = 3
NUM_RELATIONS = 5


@dataclass
class ConversationGraph:
    """``edge_index``: ``[2, E]`` long (row 0 = source j, row 1 = target i, flat utterance
    indices); ``edge_type``: ``[E]`` long relation ids; ``offset``: ``[E]`` long, i − j."""

    edge_index: Tensor
    edge_type: Tensor
    offset: Tensor
    num_nodes: int


def build_graph(
    speaker: Tensor, position: Tensor, past: int = 10, future: int = 0
) -> ConversationGraph:
    """Edges of a flattened batch of dialogues (each contiguous and in order).

    ``speaker``, ``position``: ``[N]`` long (see ``DialogueBatch``). Utterance i links to
    i−1 … i−past and, if ``future`` > 0, i+1 … i+future within its own dialogue, plus itself.
    """
    n = speaker.shape[0]
    device = speaker.device
    target = torch.arange(n, device=device)
    lengths_after = _remaining(position)  # utterances after i in its dialogue
    offsets = torch.cat(
        [
            torch.zeros(1, dtype=torch.long, device=device),
            torch.arange(1, past + 1, device=device),
            -torch.arange(1, future + 1, device=device),
        ]
    )  # [K]: 0, +1..+past (source before target), -1..-future
    tgt = target[:, None].expand(n, len(offsets))
    src = tgt - offsets[None, :]
    valid = (offsets[None, :] <= position[:, None]) & (-offsets[None, :] <= lengths_after[:, None])
    src, tgt, off = src[valid], tgt[valid], offsets[None, :].expand(n, -1)[valid]
    same = speaker[src] == speaker[tgt]
    edge_type = torch.where(
        off == 0,
        SELF,
        torch.where(
            off > 0,
            torch.where(same, SAME_PAST, OTHER_PAST),
            torch.where(same, SAME_FUTURE, OTHER_FUTURE),
        ),
    )
    return ConversationGraph(torch.stack([src, tgt]), edge_type, off, n)


def _remaining(position: Tensor) -> Tensor:
    """``[N]``: how many utterances follow each one in its dialogue."""
    n = position.shape[0]
    if n == 0:
        return position
    # Dialogue starts are where position == 0; the next start (or n) bounds each dialogue.
    starts = torch.nonzero(position == 0).flatten()
    ends = torch.cat([starts[1:], torch.tensor([n], device=position.device)])
    lengths = ends - starts
    dialogue_of = torch.cumsum((position == 0).long(), 0) - 1
    return lengths[dialogue_of] - 1 - position


class IncrementalGraph:
    """The causal graph of one conversation, grown one utterance at a time.

    Keeps only the last ``past`` speakers (a ring buffer), so memory and the cost of
    :meth:`add` are bounded whatever the conversation's length.
    """

    def __init__(self, past: int = 10, device: torch.device | str = "cpu") -> None:
        self.past = past
        self.length = 0
        self._speakers = torch.full((past + 1,), -1, dtype=torch.long, device=device)

    def add(self, speaker: int) -> tuple[Tensor, Tensor]:
        """Register utterance ``self.length`` spoken by ``speaker``; return its in-edges as
        ``offset`` ``[K]`` (0 = itself, k = the utterance k steps back) and ``edge_type`` ``[K]``,
        K = min(length, past) + 1, in the order :func:`build_graph` lists them."""
        i = self.length
        self._speakers[i % (self.past + 1)] = speaker
        k = min(i, self.past)
        offset = torch.arange(0, k + 1, device=self._speakers.device)
        past_speakers = self._speakers[(i - offset) % (self.past + 1)]
        same = past_speakers == speaker
        edge_type = torch.where(offset == 0, SELF, torch.where(same, SAME_PAST, OTHER_PAST))
        self.length += 1
        return offset, edge_type
