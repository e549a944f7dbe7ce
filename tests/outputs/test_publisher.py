"""PublishStage: online first, one document per EmotionEvent, offline last and exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from realtime_erc.events import EmotionEvent, Event, StatusEvent, VideoFrame, utc_timestamp
from realtime_erc.outputs.jsonl import JsonlWriter
from realtime_erc.outputs.publisher import Publisher, PublishStage
from realtime_erc.outputs.schema import SchemaError, validate_document
from realtime_erc.pipeline import Pipeline, Stage, StageError


class Recorder:
    """A publisher that remembers what it got, and can be told to fail."""

    def __init__(self, name: str = "rec", fail_on: str = "") -> None:
        self.name = name
        self.fail_on = fail_on
        self.calls: list[str] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def _step(self, what: str) -> None:
        self.calls.append(what)
        if what == self.fail_on:
            raise RuntimeError(f"{self.name} fails on {what}")

    async def start(self) -> None:
        self._step("start")

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        self.sent.append((topic, document))
        self._step("publish")

    async def close(self) -> None:
        self._step("close")

    def states(self) -> list[str]:
        return [d.get("state", d["schema"]) for _, d in self.sent]


def event(i: int, speaker: str = "A", label_set: str = "meld7") -> EmotionEvent:
    return EmotionEvent(
        session_id="demo/01",
        utterance_id=i,
        speaker=speaker,
        start=float(i),
        end=i + 0.8,
        text=f"utterance {i}",
        label=None,
        scores=None,
        label_set=label_set,
        modalities={"text": True, "audio": True, "visual": False},
        provisional=False,
        model=None,
        latency_ms={"segment": 300.0, "total": 350.0},
        emitted_at=utc_timestamp(),
    )


async def drain(gen: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in gen]


def test_recorder_is_a_publisher() -> None:
    assert isinstance(Recorder(), Publisher)


async def test_online_first_events_then_offline_exactly_once() -> None:
    rec = Recorder()
    stage = PublishStage("demo/01", "meld7", None, [rec])
    assert stage.name == "publish"
    await stage.start()
    for i in range(3):
        assert await drain(stage.process(event(i, speaker="B" if i else "A"))) == []
    assert await drain(stage.flush()) == []
    await stage.close()
    assert rec.states() == ["online"] + ["erc.emotion/1"] * 3 + ["offline"]
    assert rec.calls[0] == "start" and rec.calls[-1] == "close"
    topics = [t for t, _ in rec.sent]
    assert topics[0] == "erc/demo_01/status" == topics[-1]
    assert topics[1:4] == [
        "erc/demo_01/A/emotion",
        "erc/demo_01/B/emotion",
        "erc/demo_01/B/emotion",
    ]
    for _, doc in rec.sent:
        validate_document(doc)
    assert rec.sent[0][1]["session_id"] == "demo/01"  # the raw id stays in the payload
    assert stage.published == 5


async def test_close_without_flush_still_says_offline_once() -> None:
    rec = Recorder()
    stage = PublishStage("s", "meld7", "m@1", [rec], topic_prefix="lab/erc")
    await stage.start()
    await drain(stage.process(event(0)))
    await stage.close()
    await stage.close()
    assert rec.states() == ["online", "erc.emotion/1", "offline"]
    assert rec.sent[0][0] == "lab/erc/s/status"
    assert rec.sent[0][1]["model"] == "m@1"


async def test_status_events_from_upstream_are_published_with_their_load() -> None:
    from realtime_erc.events import LoadReport

    rec = Recorder()
    stage = PublishStage("s", "meld7", "m@1", [rec])
    await stage.start()
    load = LoadReport(1, ("provisional",), 1200.0, {"provisional": 2})
    status = StatusEvent("s", "online", None, "meld7", utc_timestamp(), load)
    assert await drain(stage.process(status)) == []
    await stage.close()
    assert rec.states() == ["online", "online", "offline"]
    assert rec.sent[1][1]["load"]["shedding"] == ["provisional"]
    assert rec.sent[1][1]["model"] == "m@1"  # the stage's own identity, not the event's


async def test_a_resumed_session_says_what_it_kept_in_its_online_status() -> None:
    from realtime_erc.events import Resumption

    rec = Recorder()
    resumed = Resumption(41.2049, 13, ("conversation",), ("speakers", "speaker_statistics"))
    stage = PublishStage("s", "meld7", "m@1", [rec], resumed=resumed)
    await stage.start()
    await stage.close()
    online, offline = (doc for _, doc in rec.sent)
    assert online["context"] == {"resumed_at": 41.205, "next_utterance_id": 13,
                                 "kept": ["conversation"],
                                 "lost": ["speakers", "speaker_statistics"]}  # fmt: skip
    assert "context" not in offline
    validate_document(online)
    with pytest.raises(SchemaError, match="context"):
        validate_document({**online, "context": {**online["context"], "next_utterance_id": -1}})


async def test_other_events_pass_through_untouched() -> None:
    rec = Recorder()
    stage = PublishStage("s", "meld7", None, [rec])
    await stage.start()
    frame = VideoFrame(np.zeros((2, 2, 3), np.uint8), 0, 0.0)
    assert await drain(stage.process(frame)) == [frame]
    await stage.close()
    assert rec.states() == ["online", "offline"]


async def test_every_publisher_gets_every_document_and_closes_despite_failures() -> None:
    bad, good = Recorder("bad", fail_on="close"), Recorder("good")
    stage = PublishStage("s", "meld7", None, [bad, good])
    await stage.start()
    await drain(stage.process(event(0)))
    await stage.close()
    assert bad.calls[-1] == "close" and good.calls[-1] == "close"
    assert good.states() == bad.states() == ["online", "erc.emotion/1", "offline"]


async def test_a_failing_publish_reaches_the_others_then_raises() -> None:
    bad, good = Recorder("bad"), Recorder("good")
    stage = PublishStage("s", "meld7", None, [bad, good])
    await stage.start()
    bad.fail_on = "publish"
    with pytest.raises(RuntimeError, match="bad fails"):
        await drain(stage.process(event(0)))
    assert good.states() == ["online", "erc.emotion/1"]
    bad.fail_on = ""
    await stage.close()
    assert good.states() == bad.states() == ["online", "erc.emotion/1", "offline"]


async def test_start_failure_closes_the_publishers_already_started() -> None:
    first, broken, never = Recorder("first"), Recorder("broken", fail_on="start"), Recorder("n")
    stage = PublishStage("s", "meld7", None, [first, broken, never])
    with pytest.raises(RuntimeError, match="broken"):
        await stage.start()
    assert first.calls == ["start", "close"]
    assert never.calls == []
    assert first.sent == []  # no online without every output up


async def test_invalid_document_is_refused_when_validating() -> None:
    rec = Recorder()
    stage = PublishStage("s", "meld7", None, [rec])
    await stage.start()
    with pytest.raises(SchemaError, match="label_set"):
        await drain(stage.process(event(0, label_set="")))
    await stage.close()
    assert rec.states() == ["online", "offline"]

    lax = PublishStage("s", "meld7", None, [rec], validate=False)
    await lax.start()
    await drain(lax.process(event(0, label_set="")))
    await lax.close()


def test_bad_topic_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="topic prefix"):
        PublishStage("s", "meld7", None, [], topic_prefix="erc/#")


class Boom(Stage):
    name = "boom"

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, EmotionEvent) and event.utterance_id == 2:
            raise RuntimeError("boom")
        yield event


async def _source(n: int) -> AsyncIterator[Event]:
    for i in range(n):
        yield event(i)


async def test_in_a_pipeline_offline_is_last_and_once(tmp_path: Path) -> None:
    rec = Recorder()
    path = tmp_path / "out" / "s.jsonl"
    stage = PublishStage("demo/01", "meld7", None, [rec, JsonlWriter(path)])
    stats = await Pipeline(_source(4), [Stage(), stage]).run()
    assert stats.events_in["publish"] == 4
    assert rec.states() == ["online"] + ["erc.emotion/1"] * 4 + ["offline"]
    lines = path.read_text().splitlines()
    assert len(lines) == 6


async def test_in_a_failing_pipeline_offline_is_still_sent_once() -> None:
    rec = Recorder()
    stage = PublishStage("s", "meld7", None, [rec])
    with pytest.raises(StageError, match="boom"):
        await Pipeline(_source(4), [Boom(), stage]).run()
    assert rec.states()[0] == "online"
    assert rec.states()[-1] == "offline"
    assert rec.states().count("offline") == 1
    assert rec.calls[-1] == "close"
