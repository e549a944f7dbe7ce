"""Hotspot detector: finds the few steps of an utterance that carry its emotional evidence.

For each modality m (own parameters; the ``M`` modalities run as one batched computation with
per-modality weight tensors, the 1-D convolution written as windows × weights, which is faster
on the CPU than a grouped ``Conv1d`` for these short sequences), steps ``x`` ``[N, M, T, H]``
(zero where invalid) with validity ``[N, M, T]``:

    c = GELU(Conv1d_k,m(x))                   local context of each step          [N, M, T, H]
    s = w_m · c + b_m                         hotspot score                       [N, M, T]
    k = max(1, ⌊fraction · n_valid⌋)          (fraction = 0.25 by default)        [N, M]
    a = select(s, top-k valid steps)          selection weights, Σ_t a_t = 1      [N, M, T]
    h = Σ_t a_t c_t                           hotspot vector                      [N, M, H]
    g = Σ_t x_t / n_valid                     global (masked mean) vector         [N, M, H]

``selection`` (interpretation; both make the top-k choice trainable):

- ``"straight_through"``: forward value ``1/k`` on the top-k steps (a hard choice); gradient of
  ``softmax(s / temperature)`` over the valid steps.
- ``"sparsemax"``: sparsemax of ``s / temperature`` over the top-k steps (sparse, exact gradient).

:meth:`HotspotDetector.detect_step` is the streaming path for one utterance (same numbers,
fewer operations: the top-k is chosen in NumPy on the ``M × T`` scores).

A single valid step (``T = 1``, pooled-only input) gives ``k = 1`` and ``h`` = its context
vector: the detector degrades to utterance level. Rows with no valid step give ``h = g = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

SELECTIONS = ("straight_through", "sparsemax")


@dataclass
class Hotspots:
    """``vector`` / ``context``: ``[N, M, H]`` (h and g); ``weights``: ``[N, M, T]``;
    ``selected``: ``[N, M, T]`` bool (the top-k); ``k``: ``[N, M]`` long."""

    vector: Tensor
    context: Tensor
    weights: Tensor
    selected: Tensor
    k: Tensor


def sparsemax(scores: Tensor, mask: Tensor) -> Tensor:
    """Sparsemax (Martins & Astudillo 2016) over the last axis, restricted to ``mask``
    (``[..., T]`` bool; rows with no True give 0)."""
    z = scores.masked_fill(~mask, -1e4)
    z_sorted, _ = torch.sort(z, dim=-1, descending=True)
    ks = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(-1)
    support = (1 + ks * z_sorted > cumsum) & (z_sorted > -1e4 / 2)
    k_z = support.sum(-1, keepdim=True).clamp(min=1)
    tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0) * mask


class HotspotDetector(nn.Module):
    """``forward(steps [N, M, T, H], valid [N, M, T]) → Hotspots`` (see the module docstring);
    ``modalities`` = M, each with its own conv and scorer."""

    def __init__(
        self,
        hidden: int,
        modalities: int = 3,
        kernel: int = 3,
        fraction: float = 0.25,
        selection: str = "straight_through",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"hotspot conv kernel {kernel} must be odd (same-length output)")
        if selection not in SELECTIONS:
            raise ValueError(f"hotspot selection {selection!r}: choose one of {SELECTIONS}")
        self.modalities, self.kernel = modalities, kernel
        bound = 1.0 / math.sqrt(hidden * kernel)  # Conv1d's default initialisation
        self.conv_weight = nn.Parameter(
            torch.empty(modalities, hidden, kernel, hidden).uniform_(-bound, bound)
        )
        self.conv_bias = nn.Parameter(torch.empty(modalities, hidden).uniform_(-bound, bound))
        self.score_weight = nn.Parameter(torch.randn(modalities, hidden) / hidden**0.5)
        self.score_bias = nn.Parameter(torch.zeros(modalities))
        self.fraction, self.selection, self.temperature = fraction, selection, temperature

    def reset_parameters(self) -> None:
        hidden = self.conv_weight.shape[1]
        bound = 1.0 / math.sqrt(hidden * self.kernel)  # Conv1d's default initialisation
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        nn.init.normal_(self.score_weight, std=hidden**-0.5)
        nn.init.zeros_(self.score_bias)

    def top_k(self, scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """The top ``k = max(1, ⌊fraction · n_valid⌋)`` valid steps of each row:
        ``([..., T] bool, k [...])``."""
        n_valid = valid.sum(-1)
        k = torch.clamp((n_valid.to(scores.dtype) * self.fraction).floor().long(), min=1)
        order = torch.argsort(scores.masked_fill(~valid, float("-inf")), -1, descending=True)
        positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        return (rank < k.unsqueeze(-1)) & valid, k

    def local_context(self, x: Tensor) -> Tensor:
        """``c = GELU(Conv1d(x))``: ``[N, M, T, H]`` → ``[N, M, T, H]`` (zero padding)."""
        pad = self.kernel // 2
        windows = nn.functional.pad(x, (0, 0, pad, pad)).unfold(2, self.kernel, 1)  # [N,M,T,H,k]
        c = torch.einsum("nmthk,mhko->nmto", windows, self.conv_weight)
        return nn.functional.gelu(c + self.conv_bias.unsqueeze(1))

    def scores(self, c: Tensor) -> Tensor:
        """``[N, M, T, H]`` → hotspot scores ``[N, M, T]``."""
        return torch.einsum("nmth,mh->nmt", c, self.score_weight) + self.score_bias.unsqueeze(-1)

    def forward(self, steps: Tensor, valid: Tensor) -> Hotspots:
        x = steps * valid.unsqueeze(-1)
        c = self.local_context(x)
        s = self.scores(c)
        selected, k = self.top_k(s.detach(), valid)
        z = s / self.temperature
        if self.selection == "sparsemax":
            weights = sparsemax(z, selected)
        else:
            hard = selected.to(s.dtype) / k.unsqueeze(-1).to(s.dtype)
            soft = torch.softmax(z.masked_fill(~valid, -1e9), -1) * valid
            weights = hard + soft - soft.detach()
        has = valid.any(-1, keepdim=True).to(s.dtype)
        vector = torch.einsum("nmt,nmth->nmh", weights, c) * has
        context = x.sum(-2) / valid.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
        return Hotspots(vector, context, weights, selected, k)

    def detect_step(self, x: Tensor, valid: np.ndarray) -> tuple[Tensor, Tensor]:
        """One utterance, all modalities at once (the streaming path of :meth:`forward`):
        steps ``x`` ``[M, T, H]`` (zero where invalid), ``valid`` ``[M, T]`` bool (NumPy; a row
        without a valid step is an absent modality) → hotspot vectors h and global vectors g,
        ``[M, H]`` each (zero for absent rows). The top-k is chosen in NumPy on the scores;
        h takes the straight-through weights' forward value."""
        m, t, hid = x.shape
        pad = self.kernel // 2
        windows = nn.functional.pad(x, (0, 0, pad, pad)).unfold(1, self.kernel, 1)
        weight = self.conv_weight.view(m, -1, hid)  # [M, H·k, H], rows (h, k) like windows
        c = torch.baddbmm(self.conv_bias.unsqueeze(1), windows.reshape(m, t, -1), weight)
        c = nn.functional.gelu(c)  # [M, T, H]
        n_valid = valid.sum(-1)  # [M]
        k = np.maximum(1, np.floor(n_valid.astype(np.float32) * np.float32(self.fraction)))
        weights = np.zeros((m, t), np.float32)
        single = n_valid <= 1  # the one valid step (if any) is the hotspot: no scores needed
        weights[single] = valid[single]
        scores = None
        if not single.all():
            scores = torch.baddbmm(
                self.score_bias.view(m, 1, 1), c, self.score_weight.unsqueeze(-1)
            ).view(m, t)
            masked = np.where(valid, scores.cpu().numpy(), -np.inf)
            order = np.argsort(-masked, -1, kind="stable")
            for row in np.flatnonzero(~single):
                weights[row, order[row, : int(k[row])]] = np.float32(1) / np.float32(k[row])
        dev = x.device
        if self.selection == "sparsemax" and scores is not None:
            selected = torch.from_numpy(weights > 0).to(dev)
            weights_t = sparsemax(scores / self.temperature, selected)
        else:
            weights_t = torch.from_numpy(weights).to(dev)
        vector = torch.bmm(weights_t.unsqueeze(1), c).squeeze(1)  # [M, H]
        mean = valid / np.maximum(n_valid, 1)[:, None].astype(np.float32)
        context = torch.bmm(torch.from_numpy(mean.astype(np.float32)).to(dev).unsqueeze(1), x)
        return vector, context.squeeze(1)
