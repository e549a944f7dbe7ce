"""Project one modality's step sequence (tokens, audio frames, video frames) into the model width,
falling back to the pooled vector as a one-step sequence where no step is available.

``sequence`` ``[N, T, D_seq]`` with ``mask`` ``[N, T]`` → ``steps`` ``[N, T, H]`` (zero at
invalid steps) and ``valid`` ``[N, T]`` (= mask ∧ present). A present utterance with no valid step
(the feature extractor gave only a pooled vector) gets ``W_p · pooled`` at step 0 instead; a
modality without sequence features at all (``D_seq`` None) is the pooled vector as ``T = 1``.
The projected pooled vector ``W_p · pooled`` ``[N, H]`` (zero where absent) is returned too.
Every operation is per utterance, so padding to a longer ``T`` changes nothing.

:meth:`SequenceEncoder.encode_one` is the streaming path for one utterance: it reads the
:class:`ModalityFeatures` directly (the same steps and validity the collation would give, without
building a batch) and trims invalid steps at both ends (zeros, which the detector's zero-padded
convolution sees anyway).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from realtime_erc.events import ModalityFeatures
from realtime_erc.models.base import ModalityBatch


class SequenceEncoder(nn.Module):
    """``forward(batch: ModalityBatch, present [N]) → (steps [N, T, H], valid [N, T],
    pooled [N, H])``."""

    def __init__(self, pooled_dim: int, seq_dim: int | None, hidden: int) -> None:
        super().__init__()
        self.pooled_proj = nn.Linear(pooled_dim, hidden)
        self.seq_proj = nn.Linear(seq_dim, hidden) if seq_dim is not None else None

    def reset_parameters(self) -> None:
        self.pooled_proj.reset_parameters()
        if self.seq_proj is not None:
            self.seq_proj.reset_parameters()

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

    def encode_one(
        self, features: ModalityFeatures, pooled_dim: int, seq_dim: int | None
    ) -> tuple[Tensor, np.ndarray | None, Tensor] | None:
        """One present-or-absent modality of one utterance → None when absent, else
        ``(steps [T', H], valid [T'] bool or None = all valid, pooled [H])``: the steps of
        :meth:`forward` from the first to the last valid one (invalid inner steps zero)."""
        if not features.present:
            return None
        device = self.pooled_proj.weight.device
        pooled_np = np.asarray(features.pooled, np.float32)
        pooled = F.linear(
            torch.from_numpy(pooled_np).to(device), self.pooled_proj.weight, self.pooled_proj.bias
        )
        seq = features.sequence
        if self.seq_proj is None or seq_dim is None:
            return pooled.unsqueeze(0), None, pooled
        if seq is None:  # the collation's stand-in: the pooled vector if it has the step size
            seq = pooled_np[None, :seq_dim] if seq_dim == pooled_dim else seq
            if seq is None:
                return pooled.unsqueeze(0), None, pooled
        valid = np.ones(len(seq), bool) if features.mask is None else np.asarray(features.mask)
        idx = np.flatnonzero(valid[: len(seq)])
        if not len(idx):  # no valid step: the projected pooled vector stands in
            return pooled.unsqueeze(0), None, pooled
        first, last = int(idx[0]), int(idx[-1]) + 1
        rows = np.ascontiguousarray(seq[first:last], np.float32)
        steps = F.linear(
            torch.from_numpy(rows).to(device), self.seq_proj.weight, self.seq_proj.bias
        )
        if len(idx) == last - first:
            return steps, None, pooled
        valid = valid[first:last].astype(bool)
        return steps * torch.from_numpy(valid).to(device, steps.dtype).unsqueeze(-1), valid, pooled
