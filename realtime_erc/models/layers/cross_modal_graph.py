"""Cross-modal conversation graph attention: nodes are (utterance, modality) pairs.

Node ``(i, m)`` (flat id ``3 i + m``) receives messages from (edges ``src → dst``):

- ``(i, m')`` for every modality m' of the same utterance (itself included): cross-modal edges,
  edge kind ``3 m + m'``;
- ``(i − o, m)`` for ``o = 1 … window`` in the same dialogue: the same modality along time,
  edge kind ``9 + 2 (o − 1) + same_speaker``; bidirectional mode adds ``(i + o, m)``, kind
  ``9 + 2 (window + o − 1) + same_speaker``.

Absent modalities have no edges (they neither send nor receive; their rows are 0). The layer
(:class:`CrossModalGraphLayer`, a ``MessagePassing`` dot-product graph attention with one
learned bias per edge kind and head, ``d = H / heads``)::

    α_{ij} = softmax_{j ∈ N(i)}(q_i · k_j / √d + bias_h(kind(j → i)))        per head
    x'_i   = LayerNorm(x_i + W_o Σ_j α_{ij} v_j) · present_i                 [3N, H]

``bias_h`` is read from ``pair_bias`` ``[3, heads, 3]`` (dst m, head, src m'), ``time_bias``
``[heads, 2 · window]`` and ``speaker_bias`` ``[heads, 2]``. :func:`cross_modal_graph` builds
the batched graph of whole dialogues with tensor operations; :class:`CrossModalHistory` keeps
the last ``window`` utterances of one conversation (their speakers, presence and each layer's
inputs) and gives a new utterance's incoming-edge subgraph, on which ``step`` runs the same layer,
so a step costs ``O(layers · window · 3 · H²)`` whatever the conversation's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from realtime_erc.conversation.context import RingCache

MODALITY_NODES = 3
CROSS_KINDS = MODALITY_NODES * MODALITY_NODES


@dataclass
class CrossModalGraph:
    """``edge_index`` ``[2, E]`` over flat node ids ``3 i + m``; ``kind`` ``[E]`` long (see the
    module docstring); ``present`` ``[3N]`` bool."""

    edge_index: Tensor
    kind: Tensor
    present: Tensor


def cross_modal_graph(
    speaker: Tensor, dialogue: Tensor, position: Tensor, present: Tensor, window: int, causal: bool
) -> CrossModalGraph:
    """The graph of a flattened batch of dialogues (each contiguous and in order): ``speaker``,
    ``dialogue``, ``position`` ``[N]`` long, ``present`` ``[N, 3]`` bool."""
    n, m, dev = present.shape[0], MODALITY_NODES, present.device
    node = torch.arange(n * m, device=dev).view(n, m)
    # Cross-modal: every (dst m, src m') pair of each utterance.
    dst = node[:, :, None].expand(n, m, m)
    src = node[:, None, :].expand(n, m, m)
    kind = torch.arange(CROSS_KINDS, device=dev).view(1, m, m).expand(n, m, m)
    keep = present[:, :, None] & present[:, None, :]
    edges = [(src[keep], dst[keep], kind[keep])]
    # Temporal: the same modality o utterances back (and ahead when bidirectional).
    offsets = list(range(1, window + 1)) + ([] if causal else [-o for o in range(1, window + 1)])
    for t, o in enumerate(offsets):  # one tensor op per offset, not per edge
        j = torch.arange(n, device=dev) - o
        ok = (j >= 0) & (j < n)
        j = j.clamp(0, n - 1)
        ok &= (dialogue[j] == dialogue) & (position[j] == position - o)
        same = (speaker[j] == speaker).long()
        keep = ok[:, None] & present & present[j]
        k = (CROSS_KINDS + 2 * t + same)[:, None].expand(n, m)
        edges.append((node[j][keep], node[keep], k[keep]))
    src, dst, kind = (torch.cat(e) for e in zip(*edges, strict=True))
    return CrossModalGraph(torch.stack([src, dst]), kind, present.reshape(-1))


class CrossModalGraphLayer(MessagePassing):
    """One graph-attention layer over the cross-modal graph (see the module docstring):
    ``forward(x [3N, H] or (x_src, x_dst), edge_index [2, E], kind [E], present [3N_dst])``."""

    def __init__(self, hidden: int, heads: int, window: int) -> None:
        super().__init__(aggr="add", node_dim=0)
        if hidden % heads:
            raise ValueError(f"graph heads={heads} must divide hidden={hidden}")
        self.hidden, self.heads, self.window = hidden, heads, window
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.pair_bias = nn.Parameter(torch.zeros(MODALITY_NODES, heads, MODALITY_NODES))
        self.time_bias = nn.Parameter(torch.zeros(heads, 2 * window))
        self.speaker_bias = nn.Parameter(torch.zeros(heads, 2))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in (self.qkv, self.out, self.norm):
            module.reset_parameters()
        for bias in (self.pair_bias, self.time_bias, self.speaker_bias):
            nn.init.zeros_(bias)

    def bias_table(self) -> Tensor:
        """``[9 + 4 · window, heads]``: the bias of each edge kind."""
        pair = self.pair_bias.permute(0, 2, 1).reshape(CROSS_KINDS, self.heads)
        time = self.time_bias[:, :, None] + self.speaker_bias[:, None, :]  # [h, 2w, 2]
        return torch.cat([pair, time.reshape(self.heads, -1).T])

    def forward(
        self, x: Tensor | tuple[Tensor, Tensor], edge_index: Tensor, kind: Tensor, present: Tensor
    ) -> Tensor:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        shape = (-1, self.heads, self.hidden // self.heads)
        q = nn.functional.linear(x_dst, *_rows(self.qkv, 0, self.hidden)).view(shape)
        kv = nn.functional.linear(x_src, *_rows(self.qkv, self.hidden, 3 * self.hidden))
        k, v = (t.reshape(shape) for t in kv.chunk(2, -1))
        bias = self.bias_table()[kind]  # [E, heads]
        out = self.propagate(edge_index, q=q, k=k, v=v, bias=bias, size=(len(x_src), len(x_dst)))
        out = self.norm(x_dst + self.out(out.reshape(-1, self.hidden)))
        return out * present.unsqueeze(-1).to(out.dtype)

    def message(
        self, q_i: Tensor, k_j: Tensor, v_j: Tensor, bias: Tensor, index: Tensor, ptr, size_i
    ) -> Tensor:
        score = (q_i * k_j).sum(-1) / math.sqrt(q_i.shape[-1]) + bias  # [E, heads]
        return softmax(score, index, ptr, size_i).unsqueeze(-1) * v_j


def _rows(linear: nn.Linear, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Rows ``start:stop`` of a linear layer's weight and bias (the q or the k, v part)."""
    return linear.weight[start:stop], linear.bias[start:stop]


class CrossModalHistory:
    """The last ``window`` utterances of one conversation for the streaming ``step``: their
    speakers, modality presence and every layer's node inputs ``[3, H]`` (rings, newest
    read first), and the incoming-edge subgraph of a new utterance."""

    def __init__(self, window: int, layers: int, hidden: int, device=None) -> None:
        self.window = window
        size = max(window, 1)
        self.speakers = RingCache(size, (), device=device, dtype=torch.long)
        self.present = RingCache(size, (MODALITY_NODES,), device=device, dtype=torch.bool)
        self.inputs = [
            RingCache(size, (MODALITY_NODES, hidden), device=device) for _ in range(layers)
        ]

    def subgraph(self, speaker: int, present: Tensor) -> CrossModalGraph:
        """The new utterance's in-edges (call before :meth:`add`): sources are its 3 nodes
        then modality m of the ``K`` past utterances, newest first (rows ``3 + 3 (o − 1) + m``),
        targets its 3 nodes; ``present`` ``[3]`` bool."""
        past = self.present.last(self.window)  # [K, 3], offset 1 … K
        k, m = past.shape[0], MODALITY_NODES
        dev = present.device
        modality = torch.arange(m, device=dev)
        dst = modality[:, None].expand(m, m)
        src = modality[None, :].expand(m, m)
        keep = present[:, None] & present[None, :]
        same = (self.speakers.last(self.window) == speaker).long()  # [K]
        t_src = (m + m * torch.arange(k, device=dev)[:, None] + modality).reshape(-1)
        t_dst = modality.repeat(k)
        t_kind = (CROSS_KINDS + 2 * torch.arange(k, device=dev) + same)[:, None].expand(k, m)
        t_keep = (past & present).reshape(-1)
        edge_index = torch.stack(
            [torch.cat([src[keep], t_src[t_keep]]), torch.cat([dst[keep], t_dst[t_keep]])]
        )
        kind = torch.cat([(m * dst + src)[keep], t_kind.reshape(-1)[t_keep]])
        return CrossModalGraph(edge_index, kind, present)

    def sources(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s source rows for a new utterance with inputs ``x`` ``[3, H]``:
        ``[3 + 3K, H]``; then stores ``x``."""
        ring = self.inputs[layer]
        rows = torch.cat([x, ring.last(self.window).reshape(-1, x.shape[-1])])
        ring.append(x)
        return rows

    def add(self, speaker: int, present: Tensor) -> None:
        self.speakers.append(torch.tensor(speaker))
        self.present.append(present)
