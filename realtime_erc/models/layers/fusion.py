"""Presence-masked modality encoding and fusion of pooled utterance vectors (used by every model).

API (shared by all models — stable):

- ``ModalityEncoder(in_dim, hidden, dropout=0.0)``: ``(x [N, D_m], present [N]) → [N, H]``;
  ``Linear → LayerNorm → GELU → Dropout``, rows of absent modalities set to exactly 0.
- ``ModalityFusion(dims, hidden, mode="mean", dropout=0.0)``: one encoder per modality of
  ``MODALITIES``; ``forward(pooled: Sequence[Tensor], present [N, 3]) → FusedModalities``;
  ``from_batch(batch: DialogueBatch) → FusedModalities``.
- ``FusedModalities(fused [N, H], per_modality [N, 3, H], present [N, 3])``.

Fusion modes (a hyperparameter of every model that uses it):

- ``"mean"``: ``fused = Σ_m present_m · e_m / max(1, Σ_m present_m)`` — the average of the
  modalities that are there, so a missing face or silent audio neither shifts nor dilutes the
  representation; an utterance with nothing present fuses to 0.
- ``"concat"``: ``fused = GELU(W [e_text; e_audio; e_visual; present])`` — absent blocks are zero
  and the presence flags tell the projection which blocks to trust.

Every operation is per utterance (no batch statistics), so a 1-utterance ``step`` batch gives
exactly the rows a whole-dialogue ``forward`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from realtime_erc.events import MODALITIES
from realtime_erc.models.base import DialogueBatch, FeatureDims

FUSION_MODES = ("mean", "concat")


@dataclass
class FusedModalities:
    """``fused``: ``[N, H]``; ``per_modality``: ``[N, 3, H]`` (zeros where absent);
    ``present``: ``[N, 3]`` bool."""

    fused: Tensor
    per_modality: Tensor
    present: Tensor


class ModalityEncoder(nn.Module):
    """Project one modality's pooled vectors ``[N, D_m]`` to ``[N, H]``; absent rows → 0."""

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, present: Tensor) -> Tensor:
        h = self.drop(self.act(self.norm(self.proj(x))))
        return h * present.unsqueeze(-1).to(h.dtype)


class ModalityFusion(nn.Module):
    """Encode text/audio/visual pooled vectors and fuse them respecting presence (see module
    docstring for the two modes)."""

    def __init__(
        self, dims: FeatureDims, hidden: int, mode: str = "mean", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode {mode!r}: choose one of {', '.join(FUSION_MODES)}")
        self.mode = mode
        self.hidden = hidden
        self.encoders = nn.ModuleDict(
            {m: ModalityEncoder(dims.pooled(m), hidden, dropout) for m in MODALITIES}
        )
        if mode == "concat":
            self.combine = nn.Linear(len(MODALITIES) * (hidden + 1), hidden)

    def reset_parameters(self) -> None:
        for encoder in self.encoders.values():
            encoder.reset_parameters()
        if self.mode == "concat":
            self.combine.reset_parameters()

    def forward(self, pooled: Sequence[Tensor], present: Tensor) -> FusedModalities:
        """``pooled``: one ``[N, D_m]`` per modality (``MODALITIES`` order); ``present``:
        ``[N, 3]`` bool."""
        per = torch.stack(
            [
                self.encoders[m](x, present[:, k])
                for k, (m, x) in enumerate(zip(MODALITIES, pooled, strict=True))
            ],
            dim=1,
        )  # [N, 3, H]
        p = present.to(per.dtype)
        if self.mode == "mean":
            fused = per.sum(1) / p.sum(1, keepdim=True).clamp(min=1.0)
        else:
            flat = torch.cat([per, p.unsqueeze(-1)], dim=-1).flatten(1)  # [N, 3(H+1)]
            fused = nn.functional.gelu(self.combine(flat))
        return FusedModalities(fused, per, present)

    def from_batch(self, batch: DialogueBatch) -> FusedModalities:
        return self(tuple(batch.modality(m).pooled for m in MODALITIES), batch.present)
