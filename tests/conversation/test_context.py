"""Cached global context: ring caches against brute force, bounded memory, running means and
horizon masks."""

from __future__ import annotations

import torch

from realtime_erc.conversation.context import (
    RingCache,
    RunningMean,
    causal_running_mean,
    horizon_mask,
)


def test_ring_cache_keeps_the_newest_rows_in_order():
    cache = RingCache(horizon=5, shape=(3,))
    rows = torch.randn(13, 3)
    for t in range(13):
        cache.append(rows[t])
        kept = rows[max(0, t - 4) : t + 1]
        assert torch.equal(cache.rows(), kept)
        assert torch.equal(cache.last(3), kept.flip(0)[:3])
        assert len(cache) == len(kept) and cache.count == t + 1


def test_ring_cache_memory_is_bounded():
    cache = RingCache(horizon=8, shape=(4,))
    for _ in range(1000):
        cache.append(torch.ones(4))
    assert cache._data.shape == (8, 4)
    assert cache.rows().shape == (8, 4)
    assert cache.last(100).shape == (8, 4)


def test_running_mean_matches_the_batch_form():
    x = torch.randn(2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    batch = causal_running_mean(x, mask)
    running = RunningMean()
    for t in range(9):
        assert torch.allclose(running.update(x[0, t]), batch[0, t], atol=1e-6)
    assert torch.allclose(batch[1, 5], x[1, :6].mean(0), atol=1e-6)


def test_horizon_mask():
    m = horizon_mask(6, 3, causal=True)
    for i in range(6):
        for j in range(6):
            assert bool(m[i, j]) == (j <= i and i - j < 3)
    b = horizon_mask(6, 2, causal=False)
    assert b.tolist() == [[abs(i - j) < 2 for j in range(6)] for i in range(6)]
