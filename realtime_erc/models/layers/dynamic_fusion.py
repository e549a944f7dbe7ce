"""Dynamic fusion: a hypernetwork turns ``[prompt; utterance]`` into per-utterance fusion
parameters (DF-GCN's "dynamically generated fusion parameters", our interpretation).

For utterance n with modality vectors ``h_{n,m}`` ``[3, H]`` (zero where absent), prompt
``p_n`` ``[P]`` and static fusion ``f_n`` ``[H]``, with ``c_n = [p_n; f_n]``:

    w_n   = softmax_{m present}(W_w c_n)                  modality weights [3]
    x_n   = Σ_m w_{n,m} h_{n,m}                          [H]
    U_n   = reshape(W_U c_n) ∈ R^{H×r},  V_n = reshape(W_V c_n) ∈ R^{r×H}
    out_n = LayerNorm(GELU((W_0 + s·U_n V_n) x_n + b_0))  s = 1/√(H·r)

so both the modality weights and a rank-``r`` update of the fusion matrix differ per utterance
(``r`` = ``rank``). ``U_n V_n x_n`` is computed as ``U_n (V_n x_n)`` (never forming ``H×H``).
An utterance with no modality present gets ``w = 0`` and ``x = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class DynamicFusion(nn.Module):
    """``forward(h [N, 3, H], present [N, 3], prompt [N, P], static [N, H])`` →
    ``(fused [N, H], weights [N, 3])``."""

    def __init__(self, hidden: int, prompt_dim: int, rank: int, modalities: int = 3) -> None:
        super().__init__()
        cond = prompt_dim + hidden
        self.hidden, self.rank = hidden, rank
        self.modality_logits = nn.Linear(cond, modalities)
        self.u = nn.Linear(cond, hidden * rank)
        self.v = nn.Linear(cond, rank * hidden)
        self.base = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.scale = 1.0 / math.sqrt(hidden * rank)

    def reset_parameters(self) -> None:
        for module in (self.modality_logits, self.u, self.v, self.base, self.norm):
            module.reset_parameters()

    def forward(
        self, h: Tensor, present: Tensor, prompt: Tensor, static: Tensor
    ) -> tuple[Tensor, Tensor]:
        n = h.shape[0]
        c = torch.cat([prompt, static], -1)
        logits = self.modality_logits(c).masked_fill(~present, -1e9)
        any_present = present.any(-1, keepdim=True).to(h.dtype)
        weights = torch.softmax(logits, -1) * any_present
        x = torch.einsum("nm,nmh->nh", weights, h)
        u = self.u(c).view(n, self.hidden, self.rank)
        v = self.v(c).view(n, self.rank, self.hidden)
        delta = torch.einsum("nhr,nr->nh", u, torch.einsum("nrh,nh->nr", v, x)) * self.scale
        return self.norm(nn.functional.gelu(self.base(x) + delta)), weights
