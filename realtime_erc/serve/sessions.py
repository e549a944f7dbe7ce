"""One streamed conversation on the server: its media in from the socket, its documents out.

:class:`IngestSource` turns the socket's media messages into the pipeline's events (audio
resampled to 16 kHz mono on the session clock, JPEG frames decoded), and :class:`SocketPublisher`
sends the session's documents back down the socket. The rest of the session is the chain every
session runs (``session.build_stages``), over the models the server shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import soxr

from realtime_erc.config import ServeOptions
from realtime_erc.events import SAMPLE_RATE, AudioChunk, Event, VideoFrame
from realtime_erc.serve.protocol import (
    POLICY,
    ProtocolError,
    Start,
    audio_samples,
    video_frame,
)

log = logging.getLogger(__name__)

_END = object()


class IngestSource:
    """The session's events, in the order the client sent them (an async iterable).

    A bounded queue sits between the socket and the pipeline: when the pipeline falls behind,
    the reader waits, and so does the client's socket (nothing is dropped). Under ``"pace":
    "realtime"`` the session's overload policy sheds work as for live capture.

    ``record``: a directory to record the session's media in, as received (the recording
    format: its declared rate and channels, every decoded frame at its capture time).
    ``clock_start``: the session time of the first sample (a resumed session goes on from
    where its conversation state ends)."""

    def __init__(
        self,
        start: Start,
        limits: ServeOptions,
        queue_size: int = 256,
        *,
        session_id: str = "",
        record: Path | None = None,
        clock_start: float = 0.0,
    ) -> None:
        self.start = start
        self.limits = limits
        self.audio_s = 0.0
        self.frames = 0
        self._queue: asyncio.Queue = asyncio.Queue(queue_size)
        self._ended = False
        self._last_frame_at = clock_start
        self.recorder: Any = None  # RecordingTee
        if record is not None:
            from realtime_erc.sources.live import RecordingTee
            from realtime_erc.sources.recording import RecordingWriter

            audio = start.audio
            writer = RecordingWriter(
                record, session_id or record.name, sample_rate=audio.sample_rate,
                channels=audio.channels,
                source=f"realtime-erc serve: {audio.encoding} at {audio.sample_rate} Hz x "
                f"{audio.channels}" + (", JPEG video" if start.video is not None else ""),
            )  # fmt: skip
            self.recorder = RecordingTee(writer)
        rate = start.audio.sample_rate
        self._resampler = (
            soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if rate != SAMPLE_RATE
            else None
        )
        self._clock = clock_start  # session seconds of the audio resampled so far
        self._recent_frames: deque[float] = deque()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def push_audio(self, payload: bytes) -> None:
        frames = audio_samples(payload, self.start.audio)
        self.audio_s += len(frames) / self.start.audio.sample_rate
        if self.audio_s > self.limits.max_session_s:
            raise ProtocolError(
                POLICY,
                "too_long",
                f"the session is longer than {self.limits.max_session_s:g} s of audio: "
                "start a new one",
            )
        if self.recorder is not None:
            self.recorder.audio(frames)
        samples = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if len(samples):
            await self._queue.put(AudioChunk(samples, self._clock))
            self._clock += len(samples) / SAMPLE_RATE

    async def push_frame(self, payload: bytes) -> None:
        if self.start.video is None:
            raise ProtocolError(POLICY, "no_video", 'video sent, but "start" declared none')
        at, jpeg = video_frame(payload, self.limits)
        if at < self._last_frame_at:
            raise ProtocolError(
                POLICY, "bad_video", f"video capture time {at:g} s is before the previous "
                f"frame's {self._last_frame_at:g} s: send frames in capture order",
            )  # fmt: skip
        recent = self._recent_frames
        recent.append(at)
        while recent and recent[0] < at - 1.0:
            recent.popleft()
        # max_fps frames per second of capture time, and per second of audio received (plus
        # two seconds of slack for a camera that starts before the microphone)
        budget = self.limits.max_fps * (self.audio_s + 2.0)
        if len(recent) > self.limits.max_fps + 1 or self.frames + 1 > budget:
            raise ProtocolError(
                POLICY, "too_fast", f"more than {self.limits.max_fps:g} video frames a second "
                "(serve.max_fps)",
            )  # fmt: skip
        image = await asyncio.to_thread(cv2.imdecode, np.frombuffer(jpeg, np.uint8),
                                        cv2.IMREAD_COLOR)  # fmt: skip
        if image is None:
            raise ProtocolError(POLICY, "bad_video", "a video frame is not a JPEG image")
        self._last_frame_at = at
        if self.recorder is not None:
            self.recorder.frame(image, at)
        await self._queue.put(VideoFrame(image, self.frames, at))
        self.frames += 1

    async def end(self) -> None:
        """No more media: the pipeline finishes what it has (idempotent)."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._resampler = None
            if len(tail):
                await self._queue.put(AudioChunk(tail, self._clock))
        await self._queue.put(_END)

    def end_now(self) -> None:
        """End without waiting for room in the queue (the client is gone): what is queued is
        still processed, then the session ends."""
        self._ended = True
        with contextlib.suppress(asyncio.QueueFull):  # full: the flag ends it once drained
            self._queue.put_nowait(_END)

    def close_recording(self) -> None:
        """Finish the recording (blocks while the writer catches up; idempotent)."""
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception as e:
                log.warning("%s: finishing the recording failed: %s", self.recorder.path, e)
            if self.recorder.error is not None:
                log.warning("%s", self.recorder.error)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not (self._ended and self._queue.empty()):
            if (event := await self._queue.get()) is _END:
                return
            yield event


class SocketPublisher:
    """Sends the session's documents down its socket. Documents published before ``ready``
    wait for it (the protocol's first server message), and a gone client is not an error:
    the session's other outputs still get everything."""

    name = "socket"

    def __init__(self, send: Callable[[dict[str, Any]], Any]) -> None:
        self._send = send
        self._held: list[dict[str, Any]] | None = []
        self.gone = False
        self.sent = 0
        self.observers: list[Callable[[dict[str, Any]], None]] = []

    async def start(self) -> None:
        pass

    async def ready(self, document: dict[str, Any]) -> None:
        held, self._held = self._held or [], None
        await self._deliver(document)
        for doc in held:
            await self._deliver(doc)

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        for observe in self.observers:
            observe(document)
        if self._held is not None:
            self._held.append(document)
        else:
            await self._deliver(document)

    async def _deliver(self, document: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            await self._send(document)
            self.sent += 1
        except Exception:  # the client went away; the session finishes without it
            self.gone = True
            log.debug("client gone; its documents still go to the other outputs")

    async def close(self) -> None:
        pass


class SharedPublisher:
    """A publisher the server started once (ZeroMQ, JSONL), lent to every session: a session
    starting or closing does not start or close it."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher
        self.name = publisher.name

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        await self.publisher.publish(topic, document)

    async def close(self) -> None:
        pass
