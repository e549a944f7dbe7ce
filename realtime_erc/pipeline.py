"""Stages and the runner that joins them with bounded asyncio queues.

A *source* is an async iterable of events (microphone, camera, a replayed recording). A *stage*
turns each incoming event into zero or more outgoing ones; events it does not handle pass through
unchanged, so a video frame travels past the speech stages to whoever uses it. The last stages are
sinks (publishers) that yield nothing. The runner gives every stage an :class:`Outbox` (the next
stage's queue), which a stage whose work finishes outside :meth:`Stage.process` sends with.
:class:`Parallel` runs branches on the same events at once (``analysis ‖ transcription``).

Shutdown: :meth:`Pipeline.request_stop` (Ctrl-C / SIGTERM) stops the source only; every stage then
drains what is queued, flushes (the segmenter closes its open utterance, publishers send
``offline``) and is closed. A stage that raises stops the pipeline with a :class:`StageError`
naming it; every stage is still closed so files are flushed and sockets released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from realtime_erc.events import Event

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker on the queues; never leaves this module
S = TypeVar("S", bound="Stage")


class Outbox:
    """Where a stage's events go downstream: the next stage's bounded queue. The runner gives
    each stage its own (:meth:`Stage.bind`); unbound (a stage used on its own), events drop."""

    def __init__(self, queue: asyncio.Queue | None = None) -> None:
        self._queue = queue

    async def send(self, event: Event) -> None:
        if self._queue is None:
            log.debug("no stage downstream; %s dropped", type(event).__name__)
            return
        await self._queue.put(event)


class Stage:
    """Base class of a pipeline stage. Override :meth:`process`; the default passes through."""

    name: str = "stage"
    accepts: ClassVar[tuple[type, ...]] = ()
    """The event types the stage works on, for :class:`Parallel` (a branch gets only these)."""
    outbox: Outbox = Outbox()

    def bind(self, outbox: Outbox) -> None:
        """Called by the runner before the first event: where this stage's events go."""
        self.outbox = outbox

    async def start(self) -> None:
        """Acquire resources (load models, bind sockets) before the first event."""

    async def process(self, event: Event) -> AsyncIterator[Event]:
        yield event

    async def flush(self) -> AsyncIterator[Event]:
        """Emit what is still pending at end of stream."""
        return
        yield  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        """Release resources. Always called, also after a failure elsewhere."""


class Parallel(Stage):
    """Branches working on the same events at the same time, e.g. ``analysis ‖ transcription``.

    Each event goes to every branch that :attr:`~Stage.accepts` its type; events no branch
    accepts pass through. Each branch runs in its own task behind its own queue of
    ``queue_size`` events, so a slow branch holds up neither the other branch nor the events
    behind it until its queue is full (then it backpressures upstream). What the branches
    produce leaves through this stage's outbox as soon as it is ready, in no fixed order
    between branches (the stage that joins them matches by id). A branch that raises stops the
    pipeline with a :class:`StageError` naming that branch.
    """

    def __init__(self, *branches: Stage, queue_size: int = 4) -> None:
        undeclared = [b.name for b in branches if not b.accepts]
        if len(branches) < 2 or undeclared:
            raise ValueError(f"Parallel needs two or more branches with accepts: {undeclared}")
        self.branches = branches
        self.name = " ‖ ".join(b.name for b in branches)
        self.accepts = tuple({t for b in branches for t in b.accepts})
        self._queues = [asyncio.Queue(queue_size) for _ in branches]
        self._workers: list[asyncio.Task] = []

    def bind(self, outbox: Outbox) -> None:
        super().bind(outbox)
        for branch in self.branches:
            branch.bind(outbox)

    async def start(self) -> None:
        for branch in reversed(self.branches):
            try:
                await branch.start()
            except Exception as e:
                raise StageError(branch.name, e) from e

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(branch, queue), name=branch.name)
                for branch, queue in zip(self.branches, self._queues, strict=True)
            ]

    async def process(self, event: Event) -> AsyncIterator[Event]:
        self._start_workers()
        takers = [i for i, b in enumerate(self.branches) if isinstance(event, b.accepts)]
        if not takers:
            yield event
        for i in takers:
            put = asyncio.ensure_future(self._queues[i].put(event))
            # a failed branch no longer empties its queue: wait for either
            await asyncio.wait({put, self._workers[i]}, return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                await self._workers[i]  # raises its StageError

    async def flush(self) -> AsyncIterator[Event]:
        self._start_workers()  # a stream may end before its first event
        for queue, worker in zip(self._queues, self._workers, strict=True):
            if not worker.done():
                await queue.put(_END)
        await asyncio.gather(*self._workers)
        for branch in self.branches:
            async for event in branch.flush():
                yield event

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(BaseException):
                await worker
        for branch in self.branches:
            try:
                await branch.close()
            except Exception:
                log.exception("closing stage '%s' failed", branch.name)

    async def _work(self, branch: Stage, queue: asyncio.Queue) -> None:
        try:
            while (event := await queue.get()) is not _END:
                async for produced in branch.process(event):
                    await self.outbox.send(produced)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise StageError(branch.name, e) from e


def find_stage(stages: Sequence[Stage], kind: type[S]) -> S:
    """The first stage of type ``kind`` in a chain, looking into :class:`Parallel` branches."""
    for stage in stages:
        if isinstance(stage, kind):
            return stage
        if isinstance(stage, Parallel):
            with contextlib.suppress(LookupError):
                return find_stage(stage.branches, kind)
    raise LookupError(f"no {kind.__name__} in the chain")


class StageError(RuntimeError):
    """A stage (or the source) raised; ``stage`` is its name."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"stage '{stage}' failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


@dataclass
class PipelineStats:
    events_in: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False
    started_at: float = 0.0
    """perf_counter when the source started (every stage was started by then)."""
    finished_at: float = 0.0
    """perf_counter when the last stage had flushed."""

    @property
    def running_s(self) -> float:
        return self.finished_at - self.started_at


class Pipeline:
    """Runs ``source → stages[0] → … → stages[-1]``, one asyncio task per hop.

    ``queue_size`` bounds every queue: a slow stage backpressures the ones before it down to the
    source (a replay slows down; a live source decides what it may drop).
    """

    def __init__(
        self,
        source: AsyncIterable[Event],
        stages: Sequence[Stage],
        *,
        source_name: str = "source",
        queue_size: int = 32,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.source = source
        self.source_name = source_name
        self.stages = list(stages)
        self.queue_size = queue_size
        self.drain_timeout_s = drain_timeout_s
        self.stats = PipelineStats()
        self._source_task: asyncio.Task | None = None
        self._stop_requested = False
        self.running = asyncio.Event()
        """Set once every stage has started and the source is being read."""

    def request_stop(self) -> None:
        """Stop reading the source; what is already in the pipeline is processed and flushed."""
        self._stop_requested = True
        self.stats.stopped_early = True
        if self._source_task is not None and not self._source_task.done():
            self._source_task.cancel()

    async def run(self) -> PipelineStats:
        queues: list[asyncio.Queue] = [
            asyncio.Queue(self.queue_size) for _ in range(len(self.stages))
        ]
        started: list[Stage] = []
        tasks: list[asyncio.Task] = []
        try:
            # Downstream first: publishers are bound before anything can reach them, and a
            # bad output address fails before models load.
            for stage in reversed(self.stages):
                if self._stop_requested:  # stopped while models load: no point going on
                    log.info("stopped during start-up; '%s' and upstream not started", stage.name)
                    return self.stats
                try:
                    await stage.start()
                except StageError:
                    raise
                except Exception as e:
                    raise StageError(stage.name, e) from e
                started.append(stage)
            self.stats.started_at = time.perf_counter()
            self.running.set()
            self._source_task = asyncio.create_task(self._pump_source(queues[0]), name="source")
            if self._stop_requested:
                self._source_task.cancel()
            tasks = [self._source_task]
            for i, stage in enumerate(self.stages):
                out = queues[i + 1] if i + 1 < len(queues) else None
                tasks.append(asyncio.create_task(self._run_stage(stage, queues[i], out)))
            await self._wait(tasks)
            self.stats.finished_at = time.perf_counter()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for stage in reversed(started):  # upstream first: publishers close last
                try:
                    await stage.close()
                except Exception:
                    log.exception("closing stage '%s' failed", stage.name)
        return self.stats

    async def _wait(self, tasks: list[asyncio.Task]) -> None:
        pending = set(tasks)
        deadline: float | None = None  # one drain budget for all stages, from the stop request
        while pending:
            if self._stop_requested and deadline is None:
                deadline = time.monotonic() + self.drain_timeout_s
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                log.warning("pipeline did not drain within %.0f s; stopping", self.drain_timeout_s)
                return
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _pump_source(self, out: asyncio.Queue) -> None:
        try:
            async for event in self.source:
                self._count(self.source_name)
                await out.put(event)
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise
        except Exception as e:
            raise StageError(self.source_name, e) from e
        finally:
            close = getattr(self.source, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        await out.put(_END)

    async def _run_stage(
        self, stage: Stage, inbox: asyncio.Queue, out: asyncio.Queue | None
    ) -> None:
        outbox = Outbox(out)
        stage.bind(outbox)
        try:
            while True:
                event = await inbox.get()
                if event is _END:
                    async for produced in stage.flush():
                        await outbox.send(produced)
                    if out is not None:
                        await out.put(_END)
                    return
                self._count(stage.name)
                async for produced in stage.process(event):
                    await outbox.send(produced)
        except (asyncio.CancelledError, StageError):
            raise
        except Exception as e:
            raise StageError(stage.name, e) from e

    def _count(self, name: str) -> None:
        self.stats.events_in[name] = self.stats.events_in.get(name, 0) + 1
