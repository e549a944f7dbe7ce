"""The client's side of a lost connection (logic only, against a scripted WebSocket peer on
loopback; the real thing, a killed Ray replica, is in tests/serve/on_ray/): it reconnects with
the same session id and sends again from where the session's online status says it resumes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.server import serve

from realtime_erc.client import ClientError, stream_recording

RATE = 16000


def recording(folder: Path, seconds: float = 3.0) -> Path:
    """An audio-only recording whose every sample encodes its own index (as int16 / 32767)."""
    folder.mkdir()
    samples = (np.arange(int(seconds * RATE)) % 20000).astype(np.float32) / 32767.0
    sf.write(folder / "audio.flac", samples, RATE, subtype="PCM_16")
    meta = {
        "format": "realtime-erc.recording/1",
        "session_id": "r",
        "audio": {"file": "audio.flac"},
    }
    (folder / "session.json").write_text(json.dumps(meta))
    return folder


def status(state: str, **extra) -> str:
    return json.dumps({"schema": "erc.status/1", "session_id": "kept", "state": state,
                       "model": None, "label_set": "meld7", "at": "2026-12-06T00:00:00Z",
                       **extra})  # fmt: skip


READY = json.dumps({"type": "ready", "session_id": "kept", "model": None, "label_set": "meld7",
                    "labels": [], "limits": {}})  # fmt: skip


async def scripted_peer(connections: list[dict], lose_after_s: float | None, resume_at: float):
    """The first connection is dropped (no close frame) after ``lose_after_s`` of audio; the
    next says it resumes at ``resume_at`` and ends cleanly. Each connection's start message and
    first audio sample index are recorded."""

    async def handler(ws) -> None:
        start = json.loads(await ws.recv())
        seen: dict = {"start": start, "first_sample": None, "audio_s": 0.0}
        connections.append(seen)
        await ws.send(READY)
        resumed = len(connections) > 1
        context = {"resumed_at": resume_at, "next_utterance_id": 4, "kept": ["conversation"],
                   "lost": ["speakers"]}  # fmt: skip
        await ws.send(status("online", **({"context": context} if resumed else {})))
        async for message in ws:
            if isinstance(message, str):  # "end"
                await ws.send(status("offline"))
                await ws.close()
                return
            samples = np.frombuffer(message[1:], "<i2")
            if seen["first_sample"] is None:
                seen["first_sample"] = int(samples[0])
            seen["audio_s"] += len(samples) / RATE
            if not resumed and lose_after_s is not None and seen["audio_s"] >= lose_after_s:
                ws.transport.abort()  # the replica is gone: no close frame (1006)
                return

    return await serve(handler, "127.0.0.1", 0)


def test_a_lost_connection_goes_on_from_where_the_session_resumes(tmp_path: Path) -> None:
    rec = recording(tmp_path / "rec")
    connections: list[dict] = []

    async def run() -> list[dict]:
        server = await scripted_peer(connections, lose_after_s=1.5, resume_at=1.0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await stream_recording(f"ws://127.0.0.1:{port}/v1/sessions", rec, pace="max")

    documents = asyncio.run(run())
    assert len(connections) == 2
    assert connections[0]["start"].get("session_id") is None  # the server named it ...
    assert connections[1]["start"]["session_id"] == "kept"  # ... and the reconnect reuses it
    assert connections[0]["first_sample"] == 0
    # sent again from 1.0 s (an int16 round trip may lose one unit)
    assert abs(connections[1]["first_sample"] - RATE) <= 2
    assert connections[1]["audio_s"] == pytest.approx(2.0, abs=0.04)
    states = [d["state"] for d in documents]
    assert states == ["online", "online", "offline"]
    assert documents[1]["context"]["resumed_at"] == 1.0


def test_without_a_server_to_reconnect_to_it_says_so(tmp_path: Path) -> None:
    rec = recording(tmp_path / "rec")

    async def run() -> None:
        connections: list[dict] = []
        server = await scripted_peer(connections, lose_after_s=0.5, resume_at=0.0)
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/sessions"
        task = asyncio.create_task(stream_recording(url, rec, pace="max", reconnect_s=1.5))
        while not connections or connections[0]["audio_s"] < 0.5:
            await asyncio.sleep(0.01)
        server.close()  # gone for good
        await server.wait_closed()
        await task

    with pytest.raises(ClientError, match="was lost|cannot reach"):
        asyncio.run(run())
