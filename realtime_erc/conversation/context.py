"""Cached global context for streaming: key/value rows and running vectors with a bounded
horizon, so one ``step`` costs the same at utterance 10 and utterance 10 000.

:class:`RingCache` keeps the last ``horizon`` rows of any ``[D]`` vectors (attention keys and
values, per-layer hidden states of past utterances for graph layers); :class:`RunningMean` keeps
an O(1) causal mean. ``forward`` passes reproduce the same horizon with :func:`horizon_mask`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RingCache:
    """The last ``horizon`` rows appended, oldest first. ``append(x [*, D])`` is O(D)."""

    def __init__(self, horizon: int, shape: tuple[int, ...], device=None, dtype=None) -> None:
        self.horizon = horizon
        self._data = torch.zeros((horizon, *shape), device=device, dtype=dtype)
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, self.horizon)

    @property
    def count(self) -> int:
        """Rows appended so far (also those that fell out of the horizon)."""
        return self._count

    def append(self, row: Tensor) -> None:
        self._data[self._count % self.horizon] = row
        self._count += 1

    def rows(self) -> Tensor:
        """``[min(count, horizon), *shape]``, oldest first."""
        n = len(self)
        if self._count <= self.horizon:
            return self._data[:n]
        start = self._count % self.horizon
        return torch.cat([self._data[start:], self._data[:start]])

    def stored(self) -> Tensor:
        """The same rows as :meth:`rows` in storage order, without a copy — for consumers to
        which order does not matter (attention without positional terms)."""
        return self._data[: len(self)]

    def last(self, k: int) -> Tensor:
        """The newest ``min(k, len)`` rows, newest first: ``[k', *shape]``."""
        k = min(k, len(self))
        idx = (self._count - 1 - torch.arange(k, device=self._data.device)) % self.horizon
        return self._data[idx]


class RunningMean:
    """Causal mean of every vector seen: ``update(x)`` returns mean(x_0 … x_t)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def update(self, x: Tensor) -> Tensor:
        self.total = x.clone() if self.total is None else self.total + x
        self.count += 1
        return self.total / self.count


def horizon_mask(length: int, horizon: int, causal: bool = True, device=None) -> Tensor:
    """``[L, L]`` bool, True where query i may attend to key j: j ≤ i and i − j < horizon
    (causal), or |i − j| < horizon (bidirectional)."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    if causal:
        return (j <= i) & (i - j < horizon)
    return (i - j).abs() < horizon


def causal_running_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``x``: ``[B, L, D]``, ``mask``: ``[B, L]`` → ``[B, L, D]`` mean of x over 0..t (valid
    steps only): the batch form of :class:`RunningMean`."""
    m = mask.unsqueeze(-1).to(x.dtype)
    total = torch.cumsum(x * m, dim=1)
    count = torch.cumsum(m, dim=1).clamp(min=1.0)
    return total / count
