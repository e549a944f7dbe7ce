"""Speaker-aware relational GNN branch over the conversation graph (BIG-FUSION's local branch).

Nodes are utterances, edges those of :mod:`realtime_erc.conversation.graph` (j → i within the
past window, typed self / same speaker / other speaker, × past/future when bidirectional). Each
of ``layers`` residual layers is

    h^{l+1} = LayerNorm(h^l + Dropout(GELU(RGCN_l(h^l))))      h^0 = x  [N, H]

with torch-geometric's :class:`~torch_geometric.nn.RGCNConv` (``aggr="mean"``, no root weight:
``RGCN(h)_i = Σ_r mean_{j ∈ N_r(i)} h_j W_r + b``, the self loop being one relation).

Streaming (:meth:`SpeakerGraphBranch.step`): every node's layer inputs ``h^l`` depend only on
its past, so they are cached once (a ``RingCache`` of the last ``past`` rows per layer) and each
layer runs on the new nodes' incoming-edge subgraph (:mod:`.incoming`), its sources read from
the cache: the past is never recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import RGCNConv

from realtime_erc.conversation.context import RingCache
from realtime_erc.conversation.graph import NUM_RELATIONS
from realtime_erc.models.layers.incoming import incoming_edges


class SpeakerGraphBranch(nn.Module):
    """``forward(x [N, H], edge_index [2, E], edge_type [E]) → [N, H]``."""

    def __init__(
        self,
        hidden: int,
        layers: int = 2,
        past: int = 10,
        num_bases: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.past, self.hidden = past, hidden
        self.convs = nn.ModuleList(
            RGCNConv(hidden, hidden, NUM_RELATIONS, num_bases, aggr="mean", root_weight=False)
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            conv.reset_parameters()
            norm.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + self.drop(self.act(conv(h, edge_index, edge_type))))
        return h

    def new_cache(self, device: torch.device) -> list[RingCache]:
        """One ring of past layer inputs ``[past, H]`` per layer."""
        return [RingCache(max(self.past, 1), (self.hidden,), device=device) for _ in self.convs]

    def step(
        self, x: Tensor, edge_types: Sequence[Tensor], caches: Sequence[list[RingCache]]
    ) -> Tensor:
        """The newest node of ``S`` conversations: ``x [S, H]``, one ``edge_type [K_s]`` (its
        in-edges by offset 0 … K_s − 1) and one cache per conversation → ``[S, H]``. Eval mode
        (no dropout)."""
        edge_index, edge_type = incoming_edges(edge_types)
        h = x
        for layer, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            rows = []
            for i, (cache, types) in enumerate(zip(caches, edge_types, strict=True)):
                ring = cache[layer]
                rows += [h[i : i + 1], ring.last(len(types) - 1)]  # offsets 0 … K_s − 1
                ring.append(h[i])
            update = conv((torch.cat(rows), h), edge_index, edge_type)
            h = norm(h + self.act(update))
        return h
