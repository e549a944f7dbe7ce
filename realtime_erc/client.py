"""A client of ``realtime-erc serve`` (the ingest protocol, docs/INGEST_PROTOCOL.md).

    async with await connect("ws://127.0.0.1:8765/v1/sessions") as session:
        await session.send_audio(samples)          # float32 [-1, 1] or int16, at the start's rate
        await session.send_frame(jpeg, at=1.25)    # with video=True
        await session.end()
        async for document in session:             # erc.emotion/1 and erc.status/1, unchanged
            ...

:func:`stream_recording` streams a recording (the recording format) as a capture would, at real
time or as fast as the server takes it, and returns every document that came back. When the
connection is lost mid-session (the server's replica went away: close code 1001, 1006, 1011,
1012 or 1014), it reconnects with the same session id and sends again from where the session's
``online`` status says it resumes (its ``context``), or from the start when the server kept
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from realtime_erc.errors import UserError
from realtime_erc.events import AudioChunk

log = logging.getLogger(__name__)

AUDIO, VIDEO = b"\x01", b"\x02"
LOST = frozenset({1001, 1006, 1011, 1012, 1014})
"""Close codes after which a session may go on over a new connection: going away, no close
frame, internal error, service restart, bad gateway."""
RECONNECT_S = 120.0
"""How long a lost session keeps trying to reconnect (a lost replica's successor loads its
models first)."""


class ClientError(UserError):
    """The server refused or ended the session: ``code`` is its close code (1008 policy, 1009
    too big, 1011 internal, 1013 try again later), the message its explanation."""

    def __init__(self, message: str, code: int | None = None, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class Session:
    """One streamed conversation; :attr:`ready` is the server's ``ready`` message."""

    def __init__(
        self,
        ws: ClientConnection,
        ready: dict[str, Any],
        sample_rate: int,
        online: dict[str, Any] | None = None,
    ) -> None:
        self.ws = ws
        self.ready = ready
        self.session_id: str = ready["session_id"]
        self.sample_rate = sample_rate
        self.online = online
        """The message after ``ready``: a conforming server's ``online`` status, whose
        ``context`` says where a resumed session goes on."""
        self.error: dict[str, Any] | None = None
        """The server's ``error`` message, if it ended the session with one."""

    @property
    def resumed_at(self) -> float | None:
        """The session time a resumed session's audio goes on from (None: a new session)."""
        online = self.online or {}
        context = online.get("context") if online.get("schema") == "erc.status/1" else None
        return float(context["resumed_at"]) if context else None

    async def send_audio(self, samples: np.ndarray) -> None:
        """Audio in capture order: float32 in [-1, 1] or int16, channels interleaved."""
        if samples.dtype != np.int16:
            samples = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        await self.ws.send(AUDIO + samples.astype("<i2").tobytes())

    async def send_frame(self, jpeg: bytes, at: float) -> None:
        """One JPEG image captured at ``at`` seconds on the session clock."""
        await self.ws.send(VIDEO + struct.pack("<d", at) + jpeg)

    async def send_image(self, image: np.ndarray, at: float, quality: int = 85) -> None:
        """One ``[H, W, 3]`` uint8 BGR image captured at ``at`` s, sent as JPEG."""
        import cv2

        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            await self.send_frame(jpeg.tobytes(), at)

    def collect(
        self, on_document: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[list[dict[str, Any]], asyncio.Task]:
        """Start receiving in the background: the list the documents are appended to as they
        arrive (``on_document`` sees each too) and the task, done when the server closes."""
        documents: list[dict[str, Any]] = []
        return documents, asyncio.create_task(_receive(self, documents, on_document))

    async def end(self) -> None:
        """No more media: the server sends the last events and ``offline``, then closes."""
        await self.ws.send(json.dumps({"type": "end"}))

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """The session's documents until the server closes the socket."""

        async def messages() -> AsyncIterator[dict[str, Any]]:
            if self.online is not None:
                yield self.online
            async for message in self.ws:
                yield json.loads(message)

        try:
            async for document in messages():
                if document.get("type") == "error":
                    self.error = document
                    continue
                yield document
        except ConnectionClosed:
            pass

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(
    url: str,
    *,
    session_id: str | None = None,
    sample_rate: int = 16000,
    channels: int = 1,
    video: bool = False,
    pace: Literal["realtime", "max"] = "realtime",
    model: str | None = None,
    token: str | None = None,
    open_timeout_s: float = 120.0,
) -> Session:
    """Open a session: connect, send ``start``, wait for ``ready`` (models warm up first)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = await ws_connect(
            url, additional_headers=headers, max_size=None, open_timeout=10,
            compression=None,  # PCM and JPEG hardly deflate; the server declines it anyway
            # pushed as fast as the server takes it, the socket is paused while the server
            # catches up, and the pongs wait behind the media
            ping_timeout=None if pace == "max" else 20,
        )  # fmt: skip
    except (OSError, TimeoutError) as e:
        raise ClientError(f"cannot reach {url}: {e}: is `realtime-erc serve` running?") from None
    except Exception as e:  # a refused handshake (wrong token, origin)
        raise ClientError(f"{url} refused the connection: {e}") from None
    start = {
        "type": "start", "schema": "erc.ingest/1", "session_id": session_id, "model": model,
        "audio": {"encoding": "pcm_s16le", "sample_rate": sample_rate, "channels": channels},
        "video": {"encoding": "jpeg"} if video else None, "pace": pace,
    }  # fmt: skip
    # refused at once (e.g. the server is full): its error message is waiting
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({k: v for k, v in start.items() if v is not None}))
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), open_timeout_s))
    except ConnectionClosed as e:
        code, reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")
        raise ClientError(reason or f"the server closed the session ({code})", code) from None
    if first.get("type") == "error":
        await ws.wait_closed()
        raise ClientError(first.get("message", "refused"), ws.close_code, first.get("code", ""))
    if first.get("type") != "ready":
        raise ClientError(f"expected ready, got {first!r}")
    try:  # a conforming server's next message: the session's online status
        online = json.loads(await asyncio.wait_for(ws.recv(), open_timeout_s))
    except (ConnectionClosed, TimeoutError):
        online = None
    return Session(ws, first, sample_rate, online)


async def stream_recording(
    url: str,
    recording: Path,
    *,
    pace: Literal["realtime", "max"] = "realtime",
    chunk_ms: int = 32,
    session_id: str | None = None,
    token: str | None = None,
    on_document: Callable[[dict[str, Any]], None] | None = None,
    reconnect_s: float = RECONNECT_S,
) -> list[dict[str, Any]]:
    """Stream ``recording`` (audio, and its video as JPEG frames) and return every document that
    came back; ``on_document`` sees each as it arrives. ``reconnect_s``: how long to try to go
    on over a new connection when this one is lost (0: not at all; see the module's
    docstring)."""
    from realtime_erc.events import SAMPLE_RATE
    from realtime_erc.sources.recording import read_recording

    rec = read_recording(recording)
    audio = rec.read_audio()
    video = next(iter(rec.iter_frames()), None) is not None
    step = SAMPLE_RATE * chunk_ms // 1000
    began = time.perf_counter()

    async def send_from(session: Session, at: float) -> None:
        """The recording from session time ``at`` (paced on the first connection's clock)."""
        frames = ((t, img) for _, t, img in rec.iter_frames() if t >= at)
        frame = next(frames, None)
        for i in range(int(round(at * SAMPLE_RATE)), len(audio), step):
            now = i / SAMPLE_RATE
            while frame is not None and frame[0] <= now:
                await session.send_image(frame[1], frame[0])
                frame = next(frames, None)
            await session.send_audio(audio[i : i + step])
            if pace == "realtime":
                ahead = began + (i + step) / SAMPLE_RATE - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await session.end()

    return await _resumable(
        url, send_from, session_id=session_id, video=video, pace=pace, token=token,
        on_document=on_document, reconnect_s=reconnect_s,
    )  # fmt: skip


async def _resumable(
    url: str,
    send_from: Callable[[Session, float], Awaitable[None]],
    *,
    session_id: str | None,
    video: bool,
    pace: Literal["realtime", "max"],
    token: str | None,
    on_document: Callable[[dict[str, Any]], None] | None,
    reconnect_s: float,
) -> list[dict[str, Any]]:
    """One session over as many connections as it takes: ``send_from(session, at)`` sends the
    media from session time ``at`` (0, or where a resumed session goes on) and ends it."""
    from realtime_erc.events import SAMPLE_RATE

    documents: list[dict[str, Any]] = []
    retry = _Backoff(reconnect_s)
    connected = False
    while True:
        try:
            session = await connect(url, session_id=session_id, video=video, pace=pace,
                                    token=token, sample_rate=SAMPLE_RATE)  # fmt: skip
        except ClientError as e:
            # reconnecting: the replica that takes the session may still be starting
            if not connected or (delay := retry.next()) is None:
                raise
            log.info("reconnecting to %s: %s; again in %g s", url, e, delay)
            await asyncio.sleep(delay)
            continue
        connected, session_id = True, session.session_id
        receiver = asyncio.create_task(_receive(session, documents, on_document))
        try:
            await send_from(session, session.resumed_at or 0.0)
        except ConnectionClosed:
            pass  # the receiver sees the close
        finally:
            try:
                await receiver
            finally:
                receiver.cancel()
                await session.close()
        code = session.close_code
        if session.error is not None:
            raise ClientError(session.error["message"], code, session.error["code"])
        if code not in LOST:
            return documents
        retry.restart()
        if (delay := retry.next()) is None:
            raise ClientError(
                f"the connection to {url} was lost (close code {code}) and reconnecting did not "
                "bring the session back: is the server running?",
                code,
            )
        log.warning("session %s: connection lost (%s); reconnecting in %g s", session_id, code,
                    delay)  # fmt: skip
        await asyncio.sleep(delay)


class _Backoff:
    """Delays between reconnection attempts: 0.5 s doubling to 5 s, for ``window_s`` after
    the connection was lost."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.restart()

    def restart(self) -> None:
        self.lost_at = time.monotonic()
        self.delay = 0.5

    def next(self) -> float | None:
        if time.monotonic() - self.lost_at >= self.window_s:
            return None
        delay, self.delay = self.delay, min(5.0, 2 * self.delay)
        return delay


async def _receive(
    session: Session,
    documents: list[dict[str, Any]],
    on_document: Callable[[dict[str, Any]], None] | None,
) -> None:
    async for document in session:
        documents.append(document)
        if on_document is not None:
            on_document(document)


async def stream_live(
    url: str,
    source: Any,  # LiveSource
    *,
    token: str | None = None,
    on_document: Callable[[dict[str, Any]], None] | None = None,
    reconnect_s: float = RECONNECT_S,
    keep_s: float = 60.0,
) -> list[dict[str, Any]]:
    """Stream live capture (:func:`~realtime_erc.sources.live.open_live`) until it ends or is
    stopped (Ctrl-C stops the capture; the server then finishes the session). The last
    ``keep_s`` seconds of capture are kept, so that a session that goes on over a new
    connection gets again what the lost one had not finished (see the module's docstring)."""
    from realtime_erc.events import SAMPLE_RATE

    backlog = _Backlog(keep_s)

    async def capture() -> None:
        try:
            async for event in source:
                backlog.add(event)
        finally:
            backlog.end()

    async def send_from(session: Session, at: float) -> None:
        i = backlog.index_at(at)
        while (event := await backlog.get(i)) is not None:
            i = max(i, backlog.dropped) + 1  # an event gone from the backlog is skipped
            if isinstance(event, AudioChunk):
                skip = max(0, round((at - event.start) * SAMPLE_RATE))
                await session.send_audio(event.samples[skip:])
            else:
                await session.send_image(event.image, event.time, quality=80)
        await session.end()

    capturing = asyncio.create_task(capture())
    try:
        return await _resumable(
            url, send_from, session_id=None, video=source.camera is not None, pace="realtime",
            token=token, on_document=on_document, reconnect_s=reconnect_s,
        )  # fmt: skip
    finally:
        capturing.cancel()


class _Backlog:
    """Captured events (audio chunks and frames, in capture order) of the last ``keep_s``
    seconds, by absolute index: what has been sent can be sent again."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.events: deque[Any] = deque()
        self.dropped = 0
        self.ended = False
        self._changed = asyncio.Event()

    @staticmethod
    def _time(event: Any) -> float:
        return event.start if isinstance(event, AudioChunk) else event.time

    def add(self, event: Any) -> None:
        self.events.append(event)
        while self._time(self.events[0]) < self._time(event) - self.keep_s:
            self.events.popleft()
            self.dropped += 1
        self._changed.set()

    def end(self) -> None:
        self.ended = True
        self._changed.set()

    def index_at(self, at: float) -> int:
        """The first event still kept that reaches past session time ``at``."""
        for k, event in enumerate(self.events):
            end = event.end if isinstance(event, AudioChunk) else event.time
            if end > at:
                return self.dropped + k
        return self.dropped + len(self.events)

    async def get(self, i: int) -> Any | None:
        """Event ``i`` (waiting for it); None once the capture has ended before it."""
        while i - self.dropped >= len(self.events):
            if self.ended:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self.events[max(0, i - self.dropped)]
