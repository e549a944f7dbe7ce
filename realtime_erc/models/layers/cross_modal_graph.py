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
loop); ``step`` reads the past ``window`` utterances' keys/values from per-layer preallocated
rings (:class:`GraphCache`) in storage order, the offset and speaker biases permuted to match
(:class:`GraphTimeline`, shared by the layers), so a step costs ``O(layers · window · 3 · H)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MODALITY_NODES = 3


def shift_stack(x: Tensor, offsets: list[int], fill: float | bool | int = 0) -> Tensor:
    """``x``: ``[B, L, ...]`` → ``[B, L, S, ...]`` with ``out[:, i, s] = x[:, i − offsets[s]]``
    (``fill`` outside the dialogue)."""
    b, length = x.shape[:2]
    pad = max((abs(o) for o in offsets), default=0)
    edge = x.new_full((b, pad, *x.shape[2:]), fill)
    padded = torch.cat([edge, x, edge], 1)
    return torch.stack([padded[:, pad - o : pad - o + length] for o in offsets], 2)


@dataclass
class GraphCache:
    """One layer's streaming cache: ``keys`` / ``values`` ``[3, heads, 3 + window, d]`` per
    destination modality m and head: sources 0…2 are this utterance's nodes (rewritten each
    step), source ``3 + j`` is modality m of the utterance stored at slot j (utterance i at
    slot ``i mod window``), so one batched product covers cross-modal and temporal edges."""

    keys: Tensor
    values: Tensor


@dataclass
class GraphStep:
    """What the layers share for one new utterance: ``slot`` (where it is stored), ``rows`` n
    (cached past utterances, slots ``0 … n − 1``), ``bias_index`` ``[n]`` long (into a layer's
    ``[heads, window · 2]`` offset × same-speaker bias table), ``mask`` ``[3, 1, 3 + n]``
    additive (−1e9 where the source is absent: a modality of this utterance, or modality m of
    a stored one), ``node_mask`` ``[3, 1]`` float (None: all modalities present)."""

    slot: int
    rows: int
    bias_index: Tensor
    mask: Tensor
    node_mask: Tensor | None


class GraphTimeline:
    """The speakers and modality presence of the last ``window`` utterances of one
    conversation (slot ``j mod window``), turned into a :class:`GraphStep` per new utterance."""

    def __init__(self, window: int, device: torch.device | None = None) -> None:
        self.window, self.count, self.device = window, 0, device
        self.speakers = [-1] * window
        self.absent = torch.zeros(MODALITY_NODES, window, device=device)  # additive mask

    def add(self, speaker: int, absent: Tensor, node_mask: Tensor | None) -> GraphStep:
        """Register the next utterance (``absent`` ``[3]`` additive mask, −1e9 where the
        modality is absent; ``node_mask`` as in :class:`GraphStep`) → its step context."""
        w, t = self.window, self.count
        n, slot = min(t, w), t % w
        index = [2 * ((t - 1 - j) % w) + (self.speakers[j] == speaker) for j in range(n)]
        mask = torch.cat([absent.expand(MODALITY_NODES, -1), self.absent[:, :n]], 1)
        step = GraphStep(
            slot,
            n,
            torch.tensor(index, dtype=torch.long, device=self.device),
            mask.unsqueeze(1),
            node_mask,
        )
        self.speakers[slot] = speaker
        self.absent[:, slot] = absent
        self.count += 1
        return step


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

    def new_cache(self, device: torch.device | None = None) -> GraphCache:
        d = self.hidden // self.heads
        shape = (MODALITY_NODES, self.heads, MODALITY_NODES + self.window, d)
        return GraphCache(torch.zeros(shape, device=device), torch.zeros(shape, device=device))

    def step(self, x: Tensor, ctx: GraphStep, cache: GraphCache) -> Tensor:
        """One new utterance: ``x`` ``[3, H]`` with the shared ``ctx`` → ``[3, H]``; stores
        this utterance's keys/values at ``ctx.slot`` after reading the past ones."""
        h, d, n = self.heads, self.hidden // self.heads, ctx.rows
        nodes, sources = MODALITY_NODES, MODALITY_NODES + ctx.rows
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(nodes, 3, h, d)
        q, k, v = qkv.unbind(1)  # [3, h, d] each
        cache.keys[:, :, :nodes] = k.transpose(0, 1)  # every destination sees all 3 nodes
        cache.values[:, :, :nodes] = v.transpose(0, 1)
        # Bias [3, h, 3 + n]: pair biases, then offset + same-speaker biases of each slot.
        table = (self.time_bias[:, :, None] + self.speaker_bias[:, None, :]).view(h, -1)
        past = table[:, ctx.bias_index].expand(nodes, h, n)
        bias = torch.cat([self.pair_bias, past], -1).add_(ctx.mask)
        scores = torch.baddbmm(
            bias.view(nodes * h, 1, sources),
            q.reshape(nodes * h, 1, d),
            cache.keys[:, :, :sources].reshape(nodes * h, sources, d).transpose(1, 2),
            alpha=1.0 / math.sqrt(d),
        )
        attn = torch.softmax(scores, -1)
        out = torch.bmm(attn, cache.values[:, :, :sources].reshape(nodes * h, sources, d))
        out = F.linear(out.view(nodes, self.hidden), self.out.weight, self.out.bias)
        out = F.layer_norm(x + out, (self.hidden,), self.norm.weight, self.norm.bias, self.norm.eps)
        cache.keys[:, :, nodes + ctx.slot] = k
        cache.values[:, :, nodes + ctx.slot] = v
        return out if ctx.node_mask is None else out * ctx.node_mask
