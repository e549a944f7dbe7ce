"""Routed Mixture-of-Aligners (MoA): ``E`` aligner experts, ``top_k`` of them chosen per utterance.

Inputs per utterance n: modality vectors ``u`` ``[N, 3, H]`` (zero where absent), presence
``[N, 3]`` and a shared utterance representation ``s`` ``[N, H]`` (the router's input).

Expert e (interpretation: cross-attention from each modality to the *other* present ones)::

    q, k, v = Q_e u_m, K_e u_m', V_e u_m'
    â_{e,m} = u_m + O_e Σ_{m' ≠ m, present} softmax_m'(q·k / √H) v          [N, E, 3, H]

Router: ``π = softmax(W_r s)`` ``[N, E]``; the ``top_k`` experts keep their probabilities,
renormalised to sum 1 (``r`` ``[N, E]``, zero elsewhere); ``â_m = Σ_e r_e â_{e,m}``.
All experts are evaluated densely (E is small): unrouted experts get weight 0, hence no gradient.

Load balancing (Switch-Transformer form): ``L = E · Σ_e f_e · P_e`` with ``f_e`` the share of
routing slots given to e and ``P_e`` the mean router probability; 1 for perfectly balanced
routing, up to ``E / top_k`` when every utterance picks the same experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class Alignment:
    """``tokens``: aligned modality vectors ``[N, 3, H]`` (zero where absent); ``probs``:
    router probabilities ``[N, E]``; ``routes``: routing weights ``[N, E]`` (top-k, sum 1)."""

    tokens: Tensor
    probs: Tensor
    routes: Tensor


def load_balancing_loss(probs: Tensor, routes: Tensor) -> Tensor:
    """``probs``, ``routes``: ``[N, E]`` → scalar ``E · Σ_e f_e P_e``."""
    experts = probs.shape[-1]
    chosen = (routes > 0).to(probs.dtype)
    f = chosen.sum(0) / chosen.sum().clamp(min=1)
    return experts * (f * probs.mean(0)).sum()


class MixtureOfAligners(nn.Module):
    """``forward(u [N, 3, H], present [N, 3], s [N, H]) → Alignment``."""

    def __init__(self, hidden: int, experts: int = 4, top_k: int = 2) -> None:
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"MoA top_k={top_k} must lie in 1 … experts={experts}")
        self.experts, self.top_k, self.hidden = experts, top_k, hidden
        self.router = nn.Linear(hidden, experts)
        self.qkv = nn.Linear(hidden, experts * 3 * hidden)
        self.out = nn.Parameter(torch.randn(experts, hidden, hidden) / math.sqrt(hidden))

    def reset_parameters(self) -> None:
        self.router.reset_parameters()
        self.qkv.reset_parameters()
        nn.init.normal_(self.out, std=1.0 / math.sqrt(self.hidden))

    def route(self, s: Tensor) -> tuple[Tensor, Tensor]:
        probs = torch.softmax(self.router(s), -1)
        top, idx = probs.topk(self.top_k, -1)
        routes = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        return probs, routes

    def forward(self, u: Tensor, present: Tensor, s: Tensor) -> Alignment:
        n, m, h = u.shape
        e = self.experts
        qkv = self.qkv(u).view(n, m, e, 3, h).permute(3, 0, 2, 1, 4)  # [3, N, E, M, H]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.einsum("nemh,neph->nemp", q, k) / math.sqrt(h)  # [N, E, M, M']
        other = ~torch.eye(m, dtype=torch.bool, device=u.device)
        allowed = (other.unsqueeze(0) & present.unsqueeze(1)).unsqueeze(1)  # [N, 1, M, M']
        attn = torch.softmax(scores.masked_fill(~allowed, -1e9), -1)
        attn = attn * allowed.any(-1, keepdim=True)
        mixed = torch.einsum("nemp,neph->nemh", attn, v)
        aligned = u.unsqueeze(1) + torch.einsum("nemh,ehd->nemd", mixed, self.out)  # [N,E,M,H]
        probs, routes = self.route(s)
        tokens = torch.einsum("ne,nemh->nmh", routes, aligned) * present.unsqueeze(-1)
        return Alignment(tokens, probs, routes)

    def step(
        self, u: Tensor, s: Tensor, blocked: Tensor, attends: Tensor | None, present: Tensor | None
    ) -> Tensor:
        """One utterance (the streaming path of :meth:`forward`): ``u`` ``[3, H]``, ``s``
        ``[H]``, ``blocked`` ``[3, 3]`` bool (True where m may not attend to m': itself or an
        absent modality), ``attends`` ``[3, 1]`` float (1 where m has a present other modality,
        else 0) and ``present`` ``[3, 1]`` float (None: all 1) → tokens ``[3, H]``."""
        m, h = u.shape
        e = self.experts
        qkv = F.linear(u, self.qkv.weight, self.qkv.bias).view(m, e, 3, h).transpose(0, 1)
        q, k, v = qkv.unbind(2)  # [E, M, H] each
        scores = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(h)  # [E, M, M']
        attn = torch.softmax(scores.masked_fill(blocked, -1e9), -1)
        if attends is not None:
            attn = attn * attends
        aligned = u + torch.matmul(torch.matmul(attn, v), self.out)  # [E, M, H]
        probs = torch.softmax(F.linear(s, self.router.weight, self.router.bias), -1)
        top, idx = probs.topk(self.top_k)
        routes = torch.zeros_like(probs).scatter_(0, idx, top / top.sum())
        tokens = torch.matmul(routes, aligned.view(e, m * h)).view(m, h)
        return tokens if present is None else tokens * present
