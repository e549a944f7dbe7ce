"""Real ZeroMQ sockets on loopback (free ports): publisher, subscriber, and `watch` on top."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from rich.console import Console

from realtime_erc.events import EmotionEvent, utc_timestamp
from realtime_erc.outputs.console import ConsolePublisher, format_document, watch, watch_zmq
from realtime_erc.outputs.jsonl import JsonlWriter
from realtime_erc.outputs.publisher import OutputError, Publisher, PublishStage
from realtime_erc.outputs.schema import validate_document
from realtime_erc.outputs.topics import emotion_topic
from realtime_erc.outputs.zmq import ZmqPublisher, ZmqSubscriber

ANY_PORT = "tcp://127.0.0.1:*"
TIMEOUT = 5.0


def emotion_doc(i: int, session: str = "demo-01", speaker: str = "A", **changes: object) -> dict:
    doc = {
        "schema": "erc.emotion/1",
        "session_id": session,
        "utterance_id": i,
        "speaker": speaker,
        "start": 1.5 * i,
        "end": 1.5 * i + 1.0,
        "text": f"utterance {i} — ünïcode",
        "label": "joy",
        "scores": {"joy": 0.7, "neutral": 0.3},
        "label_set": "meld7",
        "modalities": {"text": True, "audio": True, "visual": False},
        "provisional": False,
        "model": None,
        "latency_ms": {"segment": 400.0, "total": 412.4},
        "emitted_at": utc_timestamp(),
    }
    doc.update(changes)
    return doc


async def test_subscriber_receives_every_document_in_order() -> None:
    pub = ZmqPublisher(ANY_PORT, wait_for_subscriber_s=TIMEOUT)
    assert isinstance(pub, Publisher)
    pub.bind()
    assert pub.bound_endpoint.startswith("tcp://127.0.0.1:")
    assert not pub.bound_endpoint.endswith(":*")
    sub = ZmqSubscriber(pub.bound_endpoint, prefix="erc/demo-01")
    assert sub.prefix == "erc/demo-01/"
    sub.connect()
    try:
        await asyncio.wait_for(pub.start(), TIMEOUT + 1)
        for i in range(200):
            # another session whose id shares the prefix must not leak in (trailing '/')
            await pub.publish(emotion_topic("erc", "demo-010", "A"), emotion_doc(i, "demo-010"))
            await pub.publish(emotion_topic("erc", "demo-01", "A"), emotion_doc(i))
        await pub.close()  # linger: queued messages are still delivered
        received = [await asyncio.wait_for(sub.receive(), TIMEOUT) for _ in range(200)]
    finally:
        sub.close()
        await pub.close()
    assert [doc["utterance_id"] for _, doc in received] == list(range(200))
    for topic, doc in received:
        assert topic == "erc/demo-01/A/emotion"
        assert doc["session_id"] == "demo-01"
        assert doc["text"].endswith("ünïcode")
        validate_document(doc)


async def test_each_message_is_exactly_two_frames() -> None:
    pub = ZmqPublisher(ANY_PORT, wait_for_subscriber_s=TIMEOUT)
    pub.bind()
    context = zmq.asyncio.Context()
    raw = context.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(pub.bound_endpoint)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        await pub.start()
        doc = emotion_doc(3)
        await pub.publish("erc/demo-01/A/emotion", doc)
        frames = await asyncio.wait_for(raw.recv_multipart(), TIMEOUT)
    finally:
        raw.close()
        context.term()
        await pub.close()
    assert len(frames) == 2
    assert frames[0] == b"erc/demo-01/A/emotion"
    assert json.loads(frames[1].decode("utf-8")) == doc


async def test_wait_for_subscriber_gives_up_after_its_timeout() -> None:
    pub = ZmqPublisher(ANY_PORT, wait_for_subscriber_s=0.2)
    began = time.monotonic()
    await pub.start()
    assert 0.15 < time.monotonic() - began < 2.0
    await pub.publish("erc/s/status", {"schema": "erc.status/1"})  # nobody listens: dropped
    await pub.close()
    await pub.close()  # idempotent


async def test_bind_conflict_is_an_output_error_naming_the_fix() -> None:
    first = ZmqPublisher(ANY_PORT)
    await first.start()
    try:
        taken = first.bound_endpoint
        with pytest.raises(OutputError) as info:
            await ZmqPublisher(taken).start()
        message = str(info.value)
        assert taken in message
        assert "another realtime-erc running" in message
        assert "--zmq tcp://127.0.0.1:PORT" in message
    finally:
        await first.close()


@pytest.mark.parametrize("endpoint", ["tcp://no-such-interface:5556", "bogus://127.0.0.1:1"])
async def test_bad_address_is_an_output_error(endpoint: str) -> None:
    with pytest.raises(OutputError, match="--zmq"):
        await ZmqPublisher(endpoint).start()


async def test_subscriber_skips_malformed_messages() -> None:
    context = zmq.asyncio.Context()
    raw = context.socket(zmq.XPUB)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.bind(ANY_PORT)
    sub = ZmqSubscriber(raw.getsockopt_string(zmq.LAST_ENDPOINT), prefix="erc/")
    try:
        sub.connect()
        await asyncio.wait_for(raw.recv(), TIMEOUT)  # the subscription has arrived
        for frames in (
            [b"erc/s/A/emotion"],
            [b"erc/s/A/emotion", b"{}", b"{}"],
            [b"erc/s/A/emotion", b"not json"],
            [b"erc/s/A/emotion", b"\xff\xfe"],
            [b"erc/s/A/emotion", b"[1, 2]"],
            [b"erc/s/A/emotion", json.dumps(emotion_doc(7)).encode()],
        ):
            await raw.send_multipart(frames)
        topic, doc = await asyncio.wait_for(sub.receive(), TIMEOUT)
    finally:
        sub.close()
        raw.close()
        context.term()
    assert topic == "erc/s/A/emotion"
    assert doc["utterance_id"] == 7
    assert sub.skipped == 5


def _event(i: int, label: str | None) -> EmotionEvent:
    return EmotionEvent(
        session_id="demo-01",
        utterance_id=i,
        speaker="A" if i % 2 == 0 else "B",
        start=float(i),
        end=i + 0.5,
        text=f"say [bold]{i}[/bold]",
        label=label,
        scores={"joy": 0.7, "neutral": 0.3} if label else None,
        label_set="meld7",
        modalities={"text": True, "audio": True, "visual": False},
        provisional=False,
        model="m@1" if label else None,
        latency_ms={"total": 412.0},
        emitted_at=utc_timestamp(),
    )


async def test_watch_prints_and_records_a_session_until_offline(tmp_path: Path) -> None:
    zmq_pub = ZmqPublisher(ANY_PORT, wait_for_subscriber_s=TIMEOUT)
    zmq_pub.bind()
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    jsonl = tmp_path / "watched" / "session.jsonl"
    watcher = asyncio.create_task(
        watch_zmq(zmq_pub.bound_endpoint, str(jsonl), until_offline=True, console=console)
    )
    stage = PublishStage("demo-01", "meld7", None, [zmq_pub])
    try:
        await asyncio.wait_for(stage.start(), TIMEOUT + 1)
        for i, label in enumerate([None, "joy", None]):
            async for _ in stage.process(_event(i, label)):
                pass
        async for _ in stage.flush():
            pass
        count = await asyncio.wait_for(watcher, TIMEOUT)
    finally:
        watcher.cancel()
        await stage.close()
    assert count == 5
    lines = out.getvalue().splitlines()
    assert "demo-01 online" in lines[0]
    assert lines[1].startswith('[0.0–0.5] A: "say [bold]0[/bold]"  label — (final)  412 ms')
    assert "B:" in lines[2] and "joy 0.70 (final)" in lines[2]
    assert "demo-01 offline" in lines[4]
    docs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [d["schema"] for d in docs] == ["erc.status/1"] + ["erc.emotion/1"] * 3 + [
        "erc.status/1"
    ]


async def test_watch_stops_after_max_events() -> None:
    pub = ZmqPublisher(ANY_PORT, wait_for_subscriber_s=TIMEOUT)
    pub.bind()
    console = Console(file=io.StringIO(), width=200, color_system=None)
    watcher = asyncio.create_task(watch_zmq(pub.bound_endpoint, max_events=2, console=console))
    try:
        await asyncio.wait_for(pub.start(), TIMEOUT + 1)
        for i in range(4):
            await pub.publish("erc/demo-01/A/emotion", emotion_doc(i))
        assert await asyncio.wait_for(watcher, TIMEOUT) == 2
    finally:
        watcher.cancel()
        await pub.close()


async def test_watch_leaves_what_it_was_given_open(tmp_path: Path) -> None:
    pub = ZmqPublisher(ANY_PORT, wait_for_subscriber_s=TIMEOUT)
    pub.bind()
    writer = JsonlWriter(tmp_path / "w.jsonl")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    try:
        async with ZmqSubscriber(pub.bound_endpoint) as sub:
            await asyncio.wait_for(pub.start(), TIMEOUT + 1)
            for i in range(3):
                await pub.publish("erc/demo-01/A/emotion", emotion_doc(i))
            assert await asyncio.wait_for(watch(sub, console, writer, max_events=2), TIMEOUT) == 2
            _, doc = await asyncio.wait_for(sub.receive(), TIMEOUT)  # still connected
            await writer.publish("t", doc)  # still open
    finally:
        await writer.close()
        await pub.close()
    ids = [json.loads(x)["utterance_id"] for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert ids == [0, 1, 2]


async def test_console_publisher_prints_one_line_per_document() -> None:
    out = io.StringIO()
    stage = PublishStage("demo-01", "meld7", None, [ConsolePublisher(Console(file=out, width=200))])
    assert isinstance(stage.publishers[0], Publisher)
    await stage.start()
    async for _ in stage.process(_event(0, None)):
        pass
    await stage.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "online" in lines[0] and "label —" in lines[1] and "offline" in lines[2]


def test_format_document_lines() -> None:
    doc = emotion_doc(0, start=12.3, end=14.04, text="oh my god", provisional=False)
    assert format_document(doc).plain == '[12.3–14.0] A: "oh my god"  joy 0.70 (final)  412 ms'
    pending = emotion_doc(1, label=None, scores=None, provisional=True, text="")
    assert "label — (provisional)" in format_document(pending).plain
    status = {
        "schema": "erc.status/1",
        "session_id": "demo-01",
        "state": "lost",
        "model": "m@1",
        "label_set": "meld7",
        "at": "2026-11-22T10:00:00.000Z",
    }
    assert format_document(status).plain.startswith("● demo-01 lost  model m@1  meld7")
    assert format_document({"schema": "x/9", "a": 1}).plain.startswith("?")
    assert format_document({"schema": "erc.emotion/1"}).plain.startswith("?")  # never raises
