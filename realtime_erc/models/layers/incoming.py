"""The incoming-edge subgraph of new nodes: what a streaming ``step`` runs a graph layer on.

``S`` conversations each add one node whose ``K_s`` in-neighbours (itself first, offsets
0 … K_s − 1, as :meth:`~realtime_erc.conversation.graph.IncrementalGraph.add` lists them) are
laid out one conversation after another as the *source* rows ``[Σ K_s, D]``; the new nodes
are the *target* rows ``[S, D]``. :func:`incoming_edges` gives the bipartite ``edge_index``
``[2, Σ K_s]`` (source row → its conversation's target), built with tensor operations, so a
PyG layer called as ``conv((x_src, x_dst), edge_index, ...)`` computes exactly the rows its
batch ``forward`` computes for those nodes on the causal graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def incoming_edges(edge_types: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """One ``edge_type [K_s]`` per new node → ``edge_index [2, Σ K_s]`` (row 0: source row,
    row 1: target row) and the concatenated ``edge_type [Σ K_s]``."""
    device = edge_types[0].device
    counts = torch.tensor([len(t) for t in edge_types], device=device)
    targets = torch.repeat_interleave(torch.arange(len(edge_types), device=device), counts)
    sources = torch.arange(int(counts.sum()), device=device)
    return torch.stack([sources, targets]), torch.cat(list(edge_types))
