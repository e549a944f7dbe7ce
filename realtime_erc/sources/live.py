"""Live capture as one async source: microphone + optional camera on a shared session clock,
with an optional recording tee.

:class:`LiveSource` yields :class:`AudioChunk` and :class:`VideoFrame` events in arrival order;
audio always comes first when both are waiting (it is never dropped, frames may be). The
:class:`RecordingTee` writes what was *captured* — the microphone's native blocks (native rate
and channels) and every timestamped camera frame, also the ones a slow consumer dropped — on a
writer thread, so disk I/O never blocks capture. Replaying such a recording applies the same
mono + soxr HQ conversion as the live path, so the pipeline sees the same samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.events import SAMPLE_RATE, AudioChunk, VideoFrame, now
from realtime_erc.sources.camera import Camera, CameraOptions, parse_camera_spec
from realtime_erc.sources.clock import SessionClock
from realtime_erc.sources.microphone import Microphone, MicrophoneOptions
from realtime_erc.sources.recording import RecordingError, RecordingWriter

log = logging.getLogger(__name__)

BACKLOG_WARN_ITEMS = 300  # writer queue length (blocks + frames) worth a warning


class RecordingTee:
    """Writes captured audio blocks and frames to a :class:`RecordingWriter` on its own thread.

    ``audio``/``frame`` only enqueue (never block); :meth:`close` finishes the queue and closes
    the files. A write failure (disk full ...) is kept in :attr:`error` as the
    :class:`RecordingError` that names its cause and fix, and stops further writing; what was
    written until then stays a replayable recording.
    """

    def __init__(self, writer: RecordingWriter) -> None:
        self.writer = writer
        self.error: RecordingError | None = None
        self._queue: queue.SimpleQueue[tuple[str, Any, float] | None] = queue.SimpleQueue()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        return self.writer.path

    def audio(self, block: np.ndarray) -> None:
        """Queue ``[n, channels]`` float32 native-rate samples."""
        self._put(("a", block, 0.0))

    def frame(self, image: np.ndarray, time: float) -> None:
        """Queue one ``[H, W, 3]`` uint8 BGR frame at session ``time``."""
        self._put(("v", image, time))

    def _put(self, item: tuple[str, Any, float]) -> None:
        if self.error is None:
            self._queue.put(item)
            if not self._warned and self._queue.qsize() > BACKLOG_WARN_ITEMS:
                self._warned = True
                log.warning(
                    "recorder: the disk is falling behind (%d items queued)", BACKLOG_WARN_ITEMS
                )

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            kind, data, time = item
            try:
                if kind == "a":
                    self.writer.write_audio(data)
                else:
                    self.writer.write_frame(data, time)
            except RecordingError as e:
                self.error = e
            except Exception as e:
                self.error = RecordingError(
                    f"{self.writer.path}: writing the recording failed: {type(e).__name__}: {e} "
                    "(check free disk space and permissions)"
                )

    def close(self) -> None:
        """Write what is queued, then finalise the recording (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.writer.close()


@dataclass
class LiveOptions:
    mic: MicrophoneOptions
    camera: CameraOptions
    duration_s: float | None = None
    """End after this much audio (session seconds); None = until stopped."""


class LiveSource:
    """Microphone (+ camera) as one event source; build with :func:`open_live`.

    Ends when stopped (:meth:`request_stop`, or the pipeline cancelling it), after
    ``duration_s``, or when the microphone is lost (then :attr:`lost` says why). The camera
    ending (end of a video file, unplugged) only ends the video.
    """

    name = "live"

    def __init__(
        self,
        mic: Microphone,
        camera: Camera | None = None,
        recorder: RecordingTee | None = None,
        duration_s: float | None = None,
    ) -> None:
        self.mic = mic
        self.camera = camera
        self.recorder = recorder
        self.duration_s = duration_s
        self.lost: str | None = None
        self._stop = False
        self._wake: asyncio.Event | None = None
        self._closed = False
        self.started_at: float | None = None

    def request_stop(self) -> None:
        """End the stream after the blocks already captured (safe from the loop only)."""
        self._stop = True
        if self._wake is not None:
            self._wake.set()

    async def __aiter__(self) -> AsyncIterator[AudioChunk | VideoFrame]:
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()
        self.started_at = now()
        try:
            self.mic.start(loop, wake.set)
            if self.camera is not None:
                self.camera.start(loop, wake.set)
            while True:
                wake.clear()  # anything arriving from here on wakes the wait below
                for chunk in self.mic.take_chunks():
                    if chunk.start == 0:
                        log.info(
                            "capturing from microphone %s (session clock started)", self.mic.label
                        )
                    yield chunk
                    if self.duration_s is not None and chunk.end >= self.duration_s:
                        return
                frame = self.camera.take() if self.camera is not None else None
                if frame is not None:
                    yield frame
                if self.recorder is not None and self.recorder.error is not None:
                    raise self.recorder.error
                if self._stop:
                    return
                if not self.mic.check_alive():
                    if self.mic.options.on_device_lost == "wait" and await self.mic.reopen():
                        continue
                    for chunk in self.mic.take_chunks():
                        yield chunk
                    self.lost = (
                        f"microphone {self.mic.label} was lost: {self.mic.lost}. "
                        "Everything captured until then was processed; set "
                        'mic.on_device_lost = "wait" to wait for it to return'
                    )
                    log.error("%s", self.lost)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=0.5)
        finally:
            self.close()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the devices and finalise the recording (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.mic.stop()
        if self.camera is not None:
            self.camera.stop()
        if self.recorder is not None:
            self.mic.take_chunks()  # blocks captured but not yet consumed still get recorded
            self.recorder.close()

    def summary(self) -> dict[str, Any]:
        """Capture counters, for the log line at the end and the benchmark."""
        mic = self.mic.stats
        out: dict[str, Any] = {
            "mic": self.mic.label,
            "samplerate": self.mic.samplerate,
            "channels": self.mic.channels,
            "audio_s": round(mic.samples_out / SAMPLE_RATE, 3),
            "overflows": mic.overflows,
            "silence_inserted_s": round(mic.silence_s, 3),
        }
        if self.camera is not None:
            cam = self.camera.stats
            out.update(
                camera=self.camera.label,
                frames_captured=cam.captured,
                frames_delivered=cam.delivered,
                frames_dropped=cam.dropped,
            )
        if self.recorder is not None:
            out["recording"] = str(self.recorder.path)
        return out


def open_live(
    options: LiveOptions,
    session_id: str,
    record_dir: Path | None = None,
    source_note: str = "live capture",
) -> LiveSource:
    """Validate and open the devices (and the recording) named by ``options``.

    Raises :class:`MicrophoneError` / :class:`CameraError` / :class:`RecordingError` with the
    fix, before anything starts capturing.
    """
    clock = SessionClock()
    mic = Microphone(options.mic, clock)
    camera = None
    if parse_camera_spec(options.camera.device) is not None:
        camera = Camera(options.camera, clock)
    recorder = None
    try:
        if record_dir is not None:
            note = f"{source_note}: microphone {mic.label} at {mic.samplerate} Hz x {mic.channels}"
            if camera is not None:
                note += f", {camera.label} at {camera.fps:g} fps {camera.width}x{camera.height}"
            writer = RecordingWriter(
                record_dir,
                session_id,
                sample_rate=mic.samplerate,
                channels=mic.channels,
                fps=camera.fps if camera is not None else None,
                source=note,
            )
            recorder = RecordingTee(writer)
            mic.on_raw = recorder.audio
            if camera is not None:
                camera.on_captured = recorder.frame
    except BaseException:
        if camera is not None:
            camera.stop()
        raise
    return LiveSource(mic, camera, recorder, options.duration_s)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C / SIGTERM call ``stop`` (the capture ends cleanly) instead of interrupting, while
    in the block (on the running loop)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def record_live(source: LiveSource) -> None:
    """Capture without processing (the ``record`` command): until Ctrl-C / SIGTERM, the
    duration, or a lost device. The recording is complete when this returns."""
    try:
        with stop_on_signals(source.request_stop):
            async for _event in source:
                pass
    finally:
        source.close()
