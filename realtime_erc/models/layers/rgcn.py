"""Relational graph convolution over edge lists, in batch form and one-node (streaming) form.

For target node ``i`` with in-edges ``(j → i, r)`` (relation ids of
:mod:`realtime_erc.conversation.graph`; the self edge is relation ``SELF``):

    h'_i = Σ_r Σ_{j ∈ N_r(i)} (1 / c_{i,r}) · W_r h_j  + b,      c_{i,r} = |N_r(i)|

(Schlichtkrull et al. 2018, the form DialogueGCN uses; the self loop is one of the relations, so
no separate root weight). ``W_r`` is either a free ``[D_in, D_out]`` matrix per relation or, with
``num_bases`` set, the basis decomposition ``W_r = Σ_b a_{r,b} V_b``.

- :meth:`RelationalGraphConv.forward` — ``x [N, D_in]``, ``edge_index [2, E]`` (row 0 = source
  j, row 1 = target i), ``edge_type [E]`` → ``[N, D_out]``: the sources are first averaged per
  (target, relation) with ``index_add_`` (no per-edge Python loop), then each relation's mean is
  transformed once — ``Σ_r mean_r(h_j) W_r``, the same sum in fewer operations.
- :meth:`RelationalGraphConv.node` — ``x [K, D_in]`` (the new node's in-neighbours' cached input
  rows, itself included), ``edge_type [K]`` → ``[D_out]``: the same sum for one target, so a
  streaming step equals the batch pass on the causal graph. :meth:`RelationalGraphConv.nodes`
  does it for ``S`` conversations' new nodes at once (padded ``[S, K, D_in]`` + validity mask).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class RelationalGraphConv(nn.Module):
    def __init__(
        self, in_dim: int, out_dim: int, num_relations: int, num_bases: int | None = None
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.num_relations = in_dim, out_dim, num_relations
        self.num_bases = num_bases
        n_mats = num_bases if num_bases else num_relations
        self.weight = nn.Parameter(torch.empty(n_mats, in_dim, out_dim))
        self.comp = nn.Parameter(torch.empty(num_relations, num_bases)) if num_bases else None
        self.bias = nn.Parameter(torch.zeros(out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.comp is not None:
            nn.init.normal_(self.comp, std=1.0 / math.sqrt(num_bases or 1))

    def relation_weights(self) -> Tensor:
        """``[R, D_in, D_out]``."""
        if self.comp is None:
            return self.weight
        return torch.einsum("rb,bio->rio", self.comp, self.weight)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        n, r = x.shape[0], self.num_relations
        src, dst = edge_index[0], edge_index[1]
        key = dst * r + edge_type  # (target, relation) slot of each edge
        count = torch.zeros(n * r, dtype=x.dtype, device=x.device)
        count.index_add_(0, key, torch.ones_like(key, dtype=x.dtype))
        # Mean of the sources per (target, relation), then one transform per relation.
        agg = x.new_zeros(n * r, x.shape[1])
        agg.index_add_(0, key, x[src] / count[key].unsqueeze(-1))
        return agg.view(n, -1) @ self.relation_weights().reshape(-1, self.out_dim) + self.bias

    def node(self, x: Tensor, edge_type: Tensor) -> Tensor:
        """One target: ``x [K, D_in]`` rows of its sources, ``edge_type [K]`` → ``[D_out]``."""
        return self.nodes(x.unsqueeze(0), edge_type.unsqueeze(0))[0]

    def nodes(self, x: Tensor, edge_type: Tensor, valid: Tensor | None = None) -> Tensor:
        """``S`` targets at once (one per conversation): ``x [S, K, D_in]``, ``edge_type [S, K]``,
        ``valid [S, K]`` bool (False = padding; None = all valid) → ``[S, D_out]``."""
        onehot = nn.functional.one_hot(edge_type, self.num_relations).to(x.dtype)  # [S, K, R]
        if valid is not None:
            onehot = onehot * valid.unsqueeze(-1).to(x.dtype)
        mean = onehot / onehot.sum(1, keepdim=True).clamp(min=1.0)  # per-relation mean weights
        agg = mean.transpose(1, 2) @ x  # [S, R, D_in]
        weights = self.relation_weights().reshape(-1, self.out_dim)
        return agg.flatten(1) @ weights + self.bias
