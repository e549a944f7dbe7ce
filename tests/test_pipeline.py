"""Runner logic: ordering, backpressure, drain on stop, failures named by stage."""

import asyncio

import numpy as np
import pytest

from realtime_erc.events import AudioChunk
from realtime_erc.pipeline import Outbox, Parallel, Pipeline, Stage, StageError, find_stage


def chunk(i: int) -> AudioChunk:
    return AudioChunk(samples=np.full(16, i, dtype=np.float32), start=i * 0.001)


async def count_source(n: int, delay: float = 0.0):
    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        yield chunk(i)


class Double(Stage):
    name = "double"

    async def process(self, event):
        yield event
        yield event


class Collect(Stage):
    name = "collect"

    def __init__(self):
        self.seen: list[int] = []
        self.flushed = False
        self.closed = False

    async def process(self, event):
        self.seen.append(int(event.samples[0]))
        return
        yield

    async def flush(self):
        self.flushed = True
        return
        yield

    async def close(self):
        self.closed = True


class Boom(Stage):
    name = "boom"

    async def process(self, event):
        if event.start > 0.002:
            raise RuntimeError("kaput")
        yield event


async def test_events_flow_in_order_through_a_small_queue():
    sink = Collect()
    stats = await Pipeline(count_source(100), [Double(), sink], queue_size=1).run()
    assert sink.seen == [i for i in range(100) for _ in range(2)]
    assert sink.flushed and sink.closed
    assert stats.events_in == {"source": 100, "double": 100, "collect": 200}
    assert not stats.stopped_early


async def test_failing_stage_is_named_and_everything_is_closed():
    sink = Collect()
    with pytest.raises(StageError) as e:
        await Pipeline(count_source(10), [Boom(), sink]).run()
    assert e.value.stage == "boom" and "kaput" in str(e.value)
    assert sink.closed


async def test_failing_source_is_named():
    async def broken():
        yield chunk(0)
        raise OSError("device unplugged")

    sink = Collect()
    with pytest.raises(StageError, match="stage 'mic' failed: OSError: device unplugged"):
        await Pipeline(broken(), [sink], source_name="mic").run()
    assert sink.closed


async def test_request_stop_drains_and_flushes():
    sink = Collect()
    pipeline = Pipeline(count_source(10_000, delay=0.001), [sink])
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.1)
    pipeline.request_stop()
    stats = await asyncio.wait_for(task, 5)
    assert stats.stopped_early and sink.flushed and sink.closed
    assert 0 < len(sink.seen) < 10_000
    assert sink.seen == list(range(len(sink.seen)))


async def test_the_drain_timeout_bounds_the_whole_shutdown_not_each_stage():
    class SlowFlush(Collect):
        async def flush(self):
            await asyncio.sleep(1.0)  # e.g. a transcription still running
            self.flushed = True
            return
            yield

    stages = [SlowFlush() for _ in range(4)]
    for i, stage in enumerate(stages):
        stage.name = f"slow{i}"
    pipeline = Pipeline(count_source(10_000, delay=0.001), stages, drain_timeout_s=1.5)
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.1)
    pipeline.request_stop()
    started = asyncio.get_running_loop().time()
    stats = await asyncio.wait_for(task, 10)
    # each flush alone fits the budget, the four in a row (4 s) do not: stopped at 1.5 s
    assert asyncio.get_running_loop().time() - started < 3.0
    assert stats.stopped_early and all(stage.closed for stage in stages)
    assert stages[0].flushed and not stages[-1].flushed


async def test_failing_start_is_named():
    class NoModel(Stage):
        name = "asr"

        async def start(self):
            raise FileNotFoundError("model.bin")

    with pytest.raises(StageError, match="stage 'asr' failed"):
        await Pipeline(count_source(1), [NoModel()]).run()


async def test_stop_during_start_up_skips_the_stages_not_yet_started():
    class SlowModel(Stage):
        name = "asr"
        started = False

        async def start(self):
            await asyncio.sleep(0.3)  # a model loading
            SlowModel.started = True

    class Upstream(Stage):
        name = "segmenter"
        started = False

        async def start(self):
            Upstream.started = True

    sink = Collect()
    pipeline = Pipeline(count_source(10), [Upstream(), SlowModel(), sink])
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.1)  # the sink is started, the model is loading
    pipeline.request_stop()
    stats = await asyncio.wait_for(task, 5)
    assert stats.stopped_early and sink.closed and sink.seen == []
    assert SlowModel.started and not Upstream.started


async def test_a_stage_sends_results_that_finish_in_the_background_through_its_outbox():
    class Background(Stage):
        """Hands every chunk to a slow job and lets later events overtake it."""

        name = "background"

        def __init__(self):
            self.jobs: list[asyncio.Task] = []

        async def process(self, event):
            async def job(e=event):
                await asyncio.sleep(0.05)
                await self.outbox.send(e)

            self.jobs.append(asyncio.create_task(job()))
            return
            yield

        async def flush(self):
            await asyncio.gather(*self.jobs)
            return
            yield

    sink = Collect()
    await Pipeline(count_source(5), [Background(), sink]).run()
    assert sorted(sink.seen) == list(range(5)) and sink.flushed


async def test_a_stage_outside_a_pipeline_has_an_outbox_that_drops():
    class Sender(Stage):
        async def process(self, event):
            await self.outbox.send(event)
            return
            yield

    stage = Sender()
    assert [e async for e in stage.process(chunk(1))] == []  # nowhere to go, no error
    queue: asyncio.Queue = asyncio.Queue()
    stage.bind(Outbox(queue))
    [e async for e in stage.process(chunk(2))]
    assert int(queue.get_nowait().samples[0]) == 2


class Tagger(Stage):
    """A branch: answers each chunk it accepts with a tagged copy (slowly, when ``delay``)."""

    accepts = (AudioChunk,)

    def __init__(self, name: str, delay: float = 0.0, fail_at: int | None = None):
        self.name, self.delay, self.fail_at = name, delay, fail_at
        self.seen: list[int] = []
        self.closed = False

    async def process(self, event):
        i = int(event.samples[0])
        if i == self.fail_at:
            raise ValueError(f"{self.name} cannot take {i}")
        await asyncio.sleep(self.delay)
        self.seen.append(i)
        yield (self.name, i)

    async def close(self):
        self.closed = True


class Tags(Stage):
    name = "tags"

    def __init__(self):
        self.tags: list[tuple[str, int]] = []
        self.other: list = []

    async def process(self, event):
        (self.tags if isinstance(event, tuple) else self.other).append(event)
        return
        yield


async def test_parallel_branches_each_get_every_event_and_work_side_by_side():
    slow, fast = Tagger("slow", delay=0.02), Tagger("fast")
    sink = Tags()
    parallel = Parallel(slow, fast, queue_size=32)
    assert parallel.name == "slow ‖ fast"
    started = asyncio.get_running_loop().time()
    await Pipeline(count_source(20), [parallel, sink]).run()
    assert slow.seen == fast.seen == list(range(20))  # each branch in order
    assert sorted(sink.tags) == sorted([(n, i) for n in ("slow", "fast") for i in range(20)])
    # the fast branch did not wait for the slow one: its answers are out first
    assert [n for n, _ in sink.tags[:20]].count("fast") > 15
    assert asyncio.get_running_loop().time() - started < 0.02 * 20 + 1.0
    assert slow.closed and fast.closed and find_stage([parallel, sink], Tagger) is slow


async def test_events_no_branch_accepts_pass_through_once():
    class Other(Stage):
        name = "other"

        async def process(self, event):
            yield event
            yield "not audio"

    sink = Tags()
    await Pipeline(count_source(3), [Other(), Parallel(Tagger("a"), Tagger("b")), sink]).run()
    assert sink.other == ["not audio"] * 3 and len(sink.tags) == 6


async def test_a_failing_branch_is_named_and_every_branch_closed():
    bad, good = Tagger("transcription", fail_at=3), Tagger("analysis")
    with pytest.raises(StageError, match="stage 'transcription' failed: ValueError"):
        await Pipeline(count_source(50), [Parallel(good, bad, queue_size=2), Tags()]).run()
    assert bad.closed and good.closed


def test_parallel_branches_must_say_what_they_accept():
    with pytest.raises(ValueError, match="accepts"):
        Parallel(Tagger("a"), Collect())


async def test_parallel_branches_flush_on_an_empty_stream():
    a, b = Tagger("a"), Tagger("b")
    sink = Tags()
    stats = await Pipeline(count_source(0), [Parallel(a, b), sink]).run()
    assert sink.tags == [] and a.closed and b.closed and not stats.stopped_early
