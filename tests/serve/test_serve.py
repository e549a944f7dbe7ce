"""``realtime-erc serve`` end to end with real parts: the Python client streams the demo to a
real server (one subprocess, models loaded once), which publishes on a real mosquitto too; two
sessions at once stay separate."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
from cli_support import DEMO, popen_cli
from mqtt_fixtures import Subscriber, mosquitto_fixture  # noqa: F401 - the "mosquitto" fixture

from realtime_erc.client import ClientError, connect, stream_recording
from realtime_erc.outputs.schema import validate_document
from realtime_erc.sources.recording import read_recording

pytestmark = pytest.mark.slow


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


@pytest.fixture
def server(mosquitto):
    """A server publishing on mosquitto; yields (sessions URL, broker host and port)."""
    proc = popen_cli(
        "serve", "--port", "0", "--no-zmq", "--mqtt", mosquitto.url,
        "--set", "serve.max_sessions=2", "--set", "serve.idle_timeout_s=8",
    )  # fmt: skip
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "sessions: ws://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(240), "".join(lines) + (proc.stderr.read() if proc.poll() else "")
        url = re.search(r"sessions: (ws://\S+)", "".join(lines)).group(1)
        host, port = re.match(r"mqtt://([^:]+):(\d+)", mosquitto.url).groups()
        yield url, host, int(port)
    finally:
        proc.terminate()
        proc.wait(30)


def finals(documents: list[dict]) -> list[dict]:
    return [d for d in documents if d["schema"] == "erc.emotion/1" and not d["provisional"]]


def test_two_clients_stream_the_demo_at_once_and_every_utterance_comes_back(server):
    url, host, port = server
    subscriber = Subscriber(f"mqtt://{host}:{port}")
    annotations = read_recording(DEMO).annotations

    async def both() -> list[list[dict]]:
        return await asyncio.gather(
            stream_recording(url, DEMO, pace="max", session_id="room-a"),
            stream_recording(url, DEMO, pace="max", session_id="room-b"),
        )

    try:
        streams = asyncio.run(both())
    finally:
        subscriber.close()

    for session_id, documents in zip(("room-a", "room-b"), streams, strict=True):
        for doc in documents:
            validate_document(doc)
            assert doc["session_id"] == session_id  # nothing of the other session
        assert documents[0]["state"] == "online" and documents[-1]["state"] == "offline"
        events = finals(documents)
        for ann in annotations:  # every annotated utterance, exactly once
            hits = [e for e in events if overlap(ann.start, ann.end, e["start"], e["end"]) > 0]
            assert len(hits) == 1, (session_id, ann.utterance_id, len(hits))
        assert all(e["label"] and e["model"] == documents[0]["model"] for e in events)
        assert [e["utterance_id"] for e in events] == list(range(len(events)))
        # each session attributes its own two voices (its own speaker state)
        assert len({e["speaker"] for e in events}) == 2

    # the same final events reached the broker, per session
    for session_id, documents in zip(("room-a", "room-b"), streams, strict=True):
        on_broker = {
            d["utterance_id"]: d["label"]
            for d in finals([d for d in subscriber.documents if d["session_id"] == session_id])
        }
        assert on_broker == {e["utterance_id"]: e["label"] for e in finals(documents)}
    # the two conversations are the same recording: the same words, and the same labels where
    # the inputs were the same. What a busy server sees may differ: Whisper's punctuation with
    # what it was batched with, the face head's scores with which frames it had time for
    a, b = (finals(s) for s in streams)
    assert [words(e["text"]) for e in a] == [words(e["text"]) for e in b]
    same = [(x, y) for x, y in zip(a, b, strict=True)
            if x["text"] == y["text"] and same_heads(x, y)]  # fmt: skip
    assert len(same) >= len(a) // 2, "the inputs differed on most utterances"
    assert [x["label"] for x, _ in same] == [y["label"] for _, y in same]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def same_heads(x: dict, y: dict, tol: float = 1e-3) -> bool:
    hx, hy = x.get("heads") or {}, y.get("heads") or {}
    return hx.keys() == hy.keys() and all(
        hx[m].keys() == hy[m].keys() and all(abs(hx[m][k] - hy[m][k]) <= tol for k in hx[m])
        for m in hx
    )


def test_a_session_beyond_the_limit_is_told_to_try_later(server):
    url, _, _ = server

    async def go() -> None:
        first = await connect(url, session_id="one")
        with pytest.raises(ClientError) as same:
            await connect(url, session_id="one")
        assert same.value.code == 1008 and "session_id" in str(same.value)
        second = await connect(url, session_id="two")
        try:
            with pytest.raises(ClientError) as refused:
                await connect(url, session_id="three")
            assert refused.value.code == 1013 and "serve.max_sessions" in str(refused.value)
        finally:
            for session in (first, second):
                await session.end()
                documents = [d async for d in session]
                assert documents[-1]["state"] == "offline" and session.close_code == 1000

    asyncio.run(go())


def test_a_started_session_that_sends_nothing_is_ended(server):
    url, _, _ = server

    async def go() -> tuple[list[dict], dict | None, int | None]:
        session = await connect(url, session_id="quiet")
        documents = [d async for d in session]  # nothing sent: the server ends it
        return documents, session.error, session.close_code

    documents, error, code = asyncio.run(asyncio.wait_for(go(), 60))
    assert code == 1008 and error["code"] == "idle" and "8 s" in error["message"]
    assert documents[-1]["state"] == "offline"
