"""Hotspot-Gated Fusion (HGF): per channel, how much of an utterance's modality representation
comes from its hotspots and how much from the whole utterance.

    z = σ(W_m [h; g] + b_m)      [N, M, H]   (h: hotspot vector, g: global masked mean)
    u = z ⊙ h + (1 − z) ⊙ g      [N, M, H]

one gate per modality m (``modalities`` = M, batched as one weight tensor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class HotspotGatedFusion(nn.Module):
    """``forward(h [N, M, H], g [N, M, H]) → u [N, M, H]``."""

    def __init__(self, hidden: int, modalities: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(modalities, 2 * hidden, hidden) / (2 * hidden) ** 0.5
        )
        self.bias = nn.Parameter(torch.zeros(modalities, hidden))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=1.0 / (self.weight.shape[1]) ** 0.5)
        nn.init.zeros_(self.bias)

    def forward(self, h: Tensor, g: Tensor) -> Tensor:
        z = torch.sigmoid(
            torch.einsum("nmi,mio->nmo", torch.cat([h, g], -1), self.weight) + self.bias
        )
        return z * h + (1 - z) * g

    def fuse_step(self, h: Tensor, g: Tensor) -> Tensor:
        """One utterance (the streaming path): ``h``, ``g`` ``[M, H]`` → ``u`` ``[M, H]``
        (one batched product, ``u = g + z ⊙ (h − g)``)."""
        hg = torch.cat([h, g], -1).unsqueeze(1)  # [M, 1, 2H]
        z = torch.sigmoid(torch.baddbmm(self.bias.unsqueeze(1), hg, self.weight)).squeeze(1)
        return torch.lerp(g, h, z)
