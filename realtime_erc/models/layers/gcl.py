"""Graph contrastive learning with dual-evaluation node importance (BIG-FUSION, training only).

**Node importance** ``s [N]`` combines two views of how much an utterance matters
(interpretation of the paper's "dual evaluation"):

- *global*: the attention mass the node receives in the global attention branch (mean over the
  queries allowed to see it), or its PageRank on the reversed conversation graph (edges point from
  an utterance to the context it draws on, so much-used context ranks high);
- *local*: the attention mass it receives within its window in the sliding-window branch, or its
  degree-normalised similarity (mean cosine similarity to its graph neighbours);

each min–max normalised within its dialogue, then ``s = α · global + (1 − α) · local``.

**Adaptive augmentation** (GCA-style, Zhu et al. 2021): with ``s_max`` / ``s_mean`` per dialogue,

    p = min(p_max, p_mean · (s_max − s) / (s_max − s_mean))

is the probability to drop each edge (``s`` of its source node: the node whose information the
edge carries; self loops are never dropped) and to mask each feature of each node (``s`` of that
node). Important nodes keep their features and out-edges more often.

**Loss**: two augmented views through the graph branch, a projection head, and the symmetric
InfoNCE of GRACE (Zhu et al. 2020) with temperature τ: for node i the positive is its twin in the
other view, the negatives every other node of both views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realtime_erc.conversation.graph import SELF

GLOBAL_IMPORTANCE = ("attention", "pagerank")
LOCAL_IMPORTANCE = ("attention", "similarity")


@dataclass(frozen=True)
class AugmentOptions:
    """Drop/mask rates of the adaptive augmentation (mirrored in ``BigFusionConfig``)."""

    edge_p_mean: float = 0.3
    edge_p_max: float = 0.7
    feature_p_mean: float = 0.3
    feature_p_max: float = 0.7


def pagerank(edge_index: Tensor, num_nodes: int, damping: float = 0.85, iters: int = 20) -> Tensor:
    """PageRank ``[N]`` of the graph with edges reversed (i → j for each j → i), self loops
    ignored; dangling nodes teleport uniformly within the whole batch (dialogues are separate
    components, and each is normalised on its own afterwards)."""
    src, dst = edge_index
    keep = src != dst
    src, dst = dst[keep], src[keep]  # reversed
    n = num_nodes
    out_deg = torch.zeros(n, device=src.device).index_add_(
        0, src, torch.ones_like(src, dtype=torch.float)
    )
    rank = torch.full((n,), 1.0 / max(n, 1), device=src.device)
    for _ in range(iters):
        share = rank / out_deg.clamp(min=1)
        flow = torch.zeros_like(rank).index_add_(0, dst, share[src])
        dangling = rank[out_deg == 0].sum()
        rank = (1 - damping) / n + damping * (flow + dangling / n)
    return rank


def similarity_importance(x: Tensor, edge_index: Tensor) -> Tensor:
    """``[N]``: mean cosine similarity of each node to its neighbours (either edge direction,
    self loops ignored); 0 for a node without neighbours."""
    src, dst = edge_index
    keep = src != dst
    src, dst = src[keep], dst[keep]
    z = F.normalize(x, dim=-1)
    sim = (z[src] * z[dst]).sum(-1)
    n = x.shape[0]
    total = torch.zeros(n, device=x.device).index_add_(0, src, sim).index_add_(0, dst, sim)
    deg = torch.zeros(n, device=x.device)
    ones = torch.ones_like(sim)
    deg.index_add_(0, src, ones).index_add_(0, dst, ones)
    return total / deg.clamp(min=1)


def _per_dialogue(values: Tensor, dialogue: Tensor, reduce: str) -> Tensor:
    """``[N]`` → ``[N]``: the ``reduce`` ("amax" | "amin" | "mean") of each node's dialogue."""
    b = int(dialogue.max().item()) + 1
    out = values.new_zeros(b).scatter_reduce(0, dialogue, values, reduce, include_self=False)
    return out[dialogue]


def normalise_per_dialogue(values: Tensor, dialogue: Tensor) -> Tensor:
    """Min–max scale ``[N]`` into [0, 1] within each dialogue (0 where a dialogue is flat)."""
    lo = _per_dialogue(values, dialogue, "amin")
    hi = _per_dialogue(values, dialogue, "amax")
    return (values - lo) / (hi - lo).clamp(min=1e-12)


def dual_importance(glob: Tensor, local: Tensor, dialogue: Tensor, alpha: float = 0.5) -> Tensor:
    """``s = α · norm(glob) + (1 − α) · norm(local)``, ``[N]`` in [0, 1]."""
    g = normalise_per_dialogue(glob, dialogue)
    loc = normalise_per_dialogue(local, dialogue)
    return alpha * g + (1 - alpha) * loc


def drop_probability(s: Tensor, dialogue: Tensor, p_mean: float, p_max: float) -> Tensor:
    """GCA's adaptive rate ``[N]``: ``min(p_max, p_mean · (s_max − s) / (s_max − s_mean))``."""
    s_max = _per_dialogue(s, dialogue, "amax")
    s_mean = _per_dialogue(s, dialogue, "mean")
    return (p_mean * (s_max - s) / (s_max - s_mean).clamp(min=1e-12)).clamp(max=p_max)


def augment(
    x: Tensor,
    edge_index: Tensor,
    edge_type: Tensor,
    importance: Tensor,
    dialogue: Tensor,
    options: AugmentOptions,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One augmented view: ``x [N, H]`` with features masked, and the kept edges
    (``edge_index [2, E']``, ``edge_type [E']``). ``importance``: ``[N]``."""
    p_edge = drop_probability(importance, dialogue, options.edge_p_mean, options.edge_p_max)
    p_feat = drop_probability(importance, dialogue, options.feature_p_mean, options.feature_p_max)
    u = torch.rand(edge_type.shape, device=x.device, generator=generator)
    keep = (u >= p_edge[edge_index[0]]) | (edge_type == SELF)
    u = torch.rand(x.shape, device=x.device, generator=generator)
    feat_keep = (u >= p_feat[:, None]).to(x.dtype)
    return x * feat_keep, edge_index[:, keep], edge_type[keep]


def info_nce(z1: Tensor, z2: Tensor, tau: float = 0.5) -> Tensor:
    """Symmetric GRACE InfoNCE between paired rows of ``z1``, ``z2`` ``[N, P]`` → scalar."""

    def one_side(a: Tensor, b: Tensor) -> Tensor:
        between = torch.exp(a @ b.T / tau)  # [N, N], diagonal = positives
        within = torch.exp(a @ a.T / tau)
        pos = between.diagonal()
        denom = between.sum(1) + within.sum(1) - within.diagonal()
        return -torch.log(pos / denom)

    a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    return 0.5 * (one_side(a, b) + one_side(b, a)).mean()


class ProjectionHead(nn.Module):
    """GRACE's projection ``[N, H]`` → ``[N, P]``: Linear → ELU → Linear."""

    def __init__(self, hidden: int, proj: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, proj), nn.ELU(), nn.Linear(proj, proj))

    def reset_parameters(self) -> None:
        self.net[0].reset_parameters()
        self.net[2].reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
