"""The server's heap: freed pages of a worker thread's arena go back to the OS."""

from __future__ import annotations

import asyncio
import threading

import psutil
import pytest

from realtime_erc.serve import memory


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_release_free_memory_returns_a_worker_threads_freed_pages() -> None:
    if memory._libc() is None:
        pytest.skip("not glibc")
    kept: list[bytearray] = []

    def churn() -> None:
        # 64 KB blocks (below the mmap threshold: they live in this thread's arena); every
        # other one stays alive, so the freed ones sit between live ones and no top can shrink
        blocks = [bytearray(b"x" * 65536) for _ in range(3000)]
        kept.extend(blocks[::2])

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = _rss_mb()
    assert memory.release_free_memory()
    assert before - _rss_mb() > 50  # about 94 MB were freed between live blocks
    assert len(kept) == 1500


def test_trimmed_heap_trims_while_the_block_runs(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)

    async def main() -> None:
        async with memory.trimmed_heap(0.01):
            await asyncio.sleep(0.1)
        n = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == n  # stopped with the block

    asyncio.run(main())
    assert len(calls) >= 3
