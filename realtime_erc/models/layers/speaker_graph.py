"""Speaker-aware relational GNN branch over the conversation graph (BIG-FUSION's local branch).

Nodes are utterances, edges those of :mod:`realtime_erc.conversation.graph` (j → i within the
past window, typed self / same speaker / other speaker, × past/future when bidirectional). Each
of ``layers`` residual layers is

    h^{l+1} = LayerNorm(h^l + Dropout(GELU(RGCN_l(h^l))))      h^0 = x  [N, H]

with :class:`~realtime_erc.models.layers.rgcn.RelationalGraphConv` (per-relation mean
aggregation, the self loop being one relation).

Streaming (:meth:`SpeakerGraphBranch.step`): every node's layer inputs ``h^l`` depend only on
its past, so they are cached once (a ``RingCache`` of the last ``past`` rows per layer) and the
new node's layer-l update gathers its in-neighbours' cached rows — it never recomputes the past.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from realtime_erc.conversation.context import RingCache
from realtime_erc.conversation.graph import NUM_RELATIONS
from realtime_erc.models.layers.rgcn import RelationalGraphConv


class SpeakerGraphBranch(nn.Module):
    def __init__(
        self,
        hidden: int,
        layers: int = 2,
        past: int = 10,
        num_bases: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.past = past
        self.convs = nn.ModuleList(
            RelationalGraphConv(hidden, hidden, NUM_RELATIONS, num_bases) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        """``x`` ``[N, H]``, ``edge_index`` ``[2, E]``, ``edge_type`` ``[E]`` → ``[N, H]``."""
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + self.drop(self.act(conv(h, edge_index, edge_type))))
        return h

    def new_cache(self, hidden: int, device: torch.device) -> list[RingCache]:
        """One ring of past layer inputs ``[past, H]`` per layer."""
        return [RingCache(max(self.past, 1), (hidden,), device=device) for _ in self.convs]

    def step(self, x: Tensor, edge_type: Tensor, cache: list[RingCache]) -> Tensor:
        """The newest node: ``x`` ``[H]``; ``edge_type`` ``[K]`` its in-edges ordered by offset
        0 … K−1 (as :meth:`IncrementalGraph.add` returns them) → ``[H]``.

        Per layer the rows are averaged per relation first and each ``W_r`` applied once
        (``Σ_r W_r mean_r(h)`` = the batch form's ``Σ_r mean_r(W_r h)``): one ``[R, K]`` averaging
        matrix shared by all layers, then a single ``[1, R·D] @ [R·D, D]`` product per layer.
        Runs in eval mode (no dropout).
        """
        k = edge_type.shape[0] - 1  # in-neighbours besides itself
        onehot = nn.functional.one_hot(edge_type, NUM_RELATIONS).to(x.dtype)  # [K, R]
        average = (onehot / onehot.sum(0).clamp(min=1)).T  # [R, K]
        h = x
        for conv, norm, ring in zip(self.convs, self.norms, cache, strict=True):
            rows = torch.cat([h[None], ring.last(k)]) if k else h[None]  # offsets 0 … k
            ring.append(h)
            means = (average @ rows).reshape(1, -1)  # [1, R·D]
            update = means @ conv.relation_weights().reshape(means.shape[1], -1) + conv.bias
            h = norm(h + self.act(update[0]))
        return h

    def step_many(
        self, x: Tensor, edge_types: Sequence[Tensor], caches: Sequence[list[RingCache]]
    ) -> Tensor:
        """The newest node of ``S`` conversations: ``x [S, H]``, one ``edge_type [K_s]`` and
        one cache per conversation → ``[S, H]`` (neighbour rows padded to the largest K)."""
        s = x.shape[0]
        ks = [int(et.shape[0]) for et in edge_types]
        k_max = max(ks)
        types = x.new_full((s, k_max), -1, dtype=torch.long)
        for i, et in enumerate(edge_types):
            types[i, : ks[i]] = et
        onehot = nn.functional.one_hot(types.clamp(min=0), NUM_RELATIONS).to(x.dtype)
        onehot = onehot * (types >= 0).unsqueeze(-1).to(x.dtype)  # [S, K, R]
        average = (onehot / onehot.sum(1, keepdim=True).clamp(min=1)).transpose(1, 2)  # [S, R, K]
        h = x
        for layer, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            rows = x.new_zeros(s, k_max, x.shape[1])
            for i, cache in enumerate(caches):
                ring = cache[layer]
                rows[i, 0] = h[i]
                if ks[i] > 1:
                    rows[i, 1 : ks[i]] = ring.last(ks[i] - 1)
                ring.append(h[i])
            means = (average @ rows).reshape(s, -1)  # [S, R·D]
            update = means @ conv.relation_weights().reshape(means.shape[1], -1) + conv.bias
            h = norm(h + self.act(update))
        return h
