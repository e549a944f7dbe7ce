"""Micro-batching: concurrent requests to one model, coalesced into one batched call.

Sessions that are ready at the same time (a server's) each ``await batcher.submit(item)``; the
first request of a batch waits ``window_s`` for others, then one ``fn(items)`` runs on a worker
thread, one batch at a time (so each caller's requests keep their order), and every caller gets
its own result. A failure of the batch is every caller's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """``fn``: items → results, one per item, in order; ``max_batch``: the most items a call;
    ``on_batch``: told each batch's size (metrics)."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        window_s: float = 0.002,
        max_batch: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.batches = 0  # batches run so far
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._queue.put_nowait((item, future))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(self.window_s)
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            except Exception as e:  # delivered to every waiting caller
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
