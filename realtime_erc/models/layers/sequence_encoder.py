"""Project one modality's step sequence (tokens, audio frames, video frames) into the model width,
falling back to the pooled vector as a one-step sequence where no step is available.

``sequence`` ``[N, T, D_seq]`` with ``mask`` ``[N, T]`` → ``steps`` ``[N, T, H]`` (zero at
invalid steps) and ``valid`` ``[N, T]`` (= mask ∧ present). A present utterance with no valid step
(the feature extractor gave only a pooled vector) gets ``W_p · pooled`` at step 0 instead; a
modality without sequence features at all (``D_seq`` None) is the pooled vector as ``T = 1``.
The projected pooled vector ``W_p · pooled`` ``[N, H]`` (zero where absent) is returned too.
Every operation is per utterance, so padding to a longer ``T`` changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from realtime_erc.models.base import ModalityBatch


class SequenceEncoder(nn.Module):
    """``forward(batch: ModalityBatch, present [N]) → (steps [N, T, H], valid [N, T],
    pooled [N, H])``."""

    def __init__(self, pooled_dim: int, seq_dim: int | None, hidden: int) -> None:
        super().__init__()
        self.pooled_proj = nn.Linear(pooled_dim, hidden)
        self.seq_proj = nn.Linear(seq_dim, hidden) if seq_dim is not None else None

    def forward(self, batch: ModalityBatch, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pooled = self.pooled_proj(batch.pooled) * present.unsqueeze(-1)  # [N, H]
        if self.seq_proj is None or batch.sequence is None or batch.mask is None:
            return pooled.unsqueeze(1), present.unsqueeze(1), pooled
        steps = self.seq_proj(batch.sequence)  # [N, T, H]
        valid = batch.mask & present.unsqueeze(-1)
        fallback = present & ~valid.any(1)  # [N]
        first = torch.where(fallback.unsqueeze(-1), pooled, steps[:, 0])
        steps = torch.cat([first.unsqueeze(1), steps[:, 1:]], 1)
        valid = torch.cat([(valid[:, 0] | fallback).unsqueeze(1), valid[:, 1:]], 1)
        return steps * valid.unsqueeze(-1), valid, pooled
