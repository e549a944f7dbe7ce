"""Live camera capture with OpenCV, read in a thread.

``camera.device`` is a camera index, a video file path or a stream URL (anything
``cv2.VideoCapture`` opens); a file plays at its own frame rate, like a camera. Frames are
timestamped on the session clock when read and handed to the event loop
(``loop.call_soon_threadsafe``) into a one-frame slot: when the consumer is slow, a new frame
replaces the unread one (newest wins) and the drop is counted. Capture starts once the
microphone has fixed the session clock's origin, so no frame has a negative time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from realtime_erc.config import CameraOptions
from realtime_erc.errors import UserError
from realtime_erc.events import VideoFrame, now
from realtime_erc.sources.clock import SessionClock

log = logging.getLogger(__name__)

MAX_READ_FAILURES = 30  # consecutive failed reads before a camera counts as lost


class CameraError(UserError, RuntimeError):
    """A camera problem a user can fix (absent, busy, unreadable file); names the fix."""


@dataclass
class CameraStats:
    captured: int = 0
    """Frames read and timestamped (what a recording holds)."""
    delivered: int = 0
    """Frames the consumer took."""
    dropped: int = 0
    """Frames replaced in the slot before the consumer took them (slow consumer)."""
    skipped: int = 0
    """Frames the device produced faster than ``fps`` (not timestamped)."""
    read_failures: int = 0


def parse_camera_spec(spec: str) -> int | str | None:
    """``none`` → None, ``"0"`` → 0, else a file path or URL (a missing file is an error)."""
    spec = spec.strip()
    if spec.lower() in ("none", ""):
        return None
    if spec.isdigit():
        return int(spec)
    if "://" not in spec and not Path(spec).exists():
        raise CameraError(
            f"camera {spec!r}: no such file (pass a camera index such as 0, an existing video "
            "file, a stream URL, or none)"
        )
    return spec


def open_capture(source: int | str) -> cv2.VideoCapture:
    """Open ``source`` quietly (OpenCV logs a warning per missing index); None on failure."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(source)
    finally:
        cv2.utils.logging.setLogLevel(level)


@dataclass
class Camera:
    """One open camera. Building it opens the device and reads a first frame (so an absent or
    busy camera fails here, before any model loads); :meth:`start` begins the reader thread.

    ``on_captured(image, time)`` sees every timestamped frame, in the reader thread (e.g. a
    recorder's queue); it must not block.
    """

    options: CameraOptions
    clock: SessionClock
    on_captured: Callable[[np.ndarray, float], None] | None = None
    stats: CameraStats = field(default_factory=CameraStats)
    ended: str | None = None
    """Why frames stopped (end of file, camera lost), or None while running."""

    def __post_init__(self) -> None:
        source = parse_camera_spec(self.options.device)
        if source is None:
            raise ValueError("camera.device is none: build no Camera")
        self.source = source
        self.is_file = isinstance(source, str) and "://" not in source
        cap = open_capture(source)
        if not cap.isOpened():
            raise CameraError(self._unavailable("cannot be opened"))
        if isinstance(source, int):
            cap.set(cv2.CAP_PROP_FPS, self.options.fps)
            if self.options.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.options.width)
            if self.options.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.options.height)
        ok, first = cap.read()
        if not ok:
            cap.release()
            raise CameraError(self._unavailable("opened but delivers no frame"))
        self._cap = cap
        self._first: np.ndarray | None = first
        native = cap.get(cv2.CAP_PROP_FPS)
        # A file plays at its own rate; ``fps`` caps it (and a camera) from above.
        self.native_fps = native if native and native > 0 else self.options.fps
        self.fps = min(self.options.fps, self.native_fps)
        self.height, self.width = first.shape[:2]
        self._slot: VideoFrame | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notify: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _unavailable(self, problem: str) -> str:
        if isinstance(self.source, int):
            return (
                f"camera {self.source} {problem}: no such device, or another program is using "
                "it (run `realtime-erc devices` to list cameras, or pass --camera none)"
            )
        return (
            f"camera {self.source!r} {problem}: OpenCV cannot read it (check the file or URL, "
            "or pass --camera none)"
        )

    @property
    def label(self) -> str:
        return f"camera {self.source}" if isinstance(self.source, int) else str(self.source)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, notify: Callable[[], None]) -> None:
        self._loop = loop
        self._notify = notify
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread and release the device (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if self._cap is not None:
            self._cap.release()
            self._cap = None  # type: ignore[assignment]

    def take(self) -> VideoFrame | None:
        """The newest unread frame, or None. Runs on the event loop."""
        frame, self._slot = self._slot, None
        if frame is not None:
            self.stats.delivered += 1
        return frame

    # -- reader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read_frames()
        except Exception as e:  # never die silently in a thread
            log.exception("camera reader failed")
            self._end(f"the camera reader failed: {e}")

    def _read_frames(self) -> None:
        cap = self._cap
        while self.clock.origin is None:  # wait for the first audio sample
            if self._stop.wait(0.005):
                return
            if not self.is_file:
                cap.grab()  # keep a live camera's buffer fresh
                self._first = None
        period = 1.0 / self.fps
        file_period = 1.0 / self.native_fps
        tolerance = period / 4  # camera jitter allowed when decimating to ``fps``
        started = now()
        next_due: float | None = None
        last_post: float | None = None  # when the last frame was handed to the loop
        read = 0  # frames read from a file (for pacing)
        due = started
        failures = 0
        while not self._stop.is_set():
            if self._first is not None:
                ok, image = True, self._first
                self._first = None
            else:
                ok, image = cap.read()
            if not ok:
                if self.is_file:
                    self._end("end of the video file")
                    return
                failures += 1
                self.stats.read_failures += 1
                if failures >= MAX_READ_FAILURES:
                    self._end(f"{failures} reads in a row failed (camera unplugged?)")
                    return
                time.sleep(0.01)
                continue
            failures = 0
            if self.is_file:  # play the file in real time
                due = started + read * file_period
                read += 1
                delay = due - now()
                if delay > 0 and self._stop.wait(delay):
                    return
            at = now()
            # Decimate on the file's own timeline (a late read is not a fast camera).
            pace = due if self.is_file else at
            if next_due is not None and pace < next_due - tolerance:
                self.stats.skipped += 1  # faster than the configured fps
                continue
            next_due = (
                pace + period
                if next_due is None
                else max(next_due + period, pace + period - tolerance)
            )
            if self.is_file and last_post is not None:
                # After a late read the file is behind its timeline: catch up at 4/3 of the
                # rate rather than in a burst, which would stamp frames a fraction of a
                # millisecond apart and overwrite them in the one-frame slot before the
                # consumer could take them. Frames are stamped and handed over ≥ period −
                # tolerance apart.
                gap = last_post + period - tolerance - now()
                if gap > 0:
                    if self._stop.wait(gap):
                        return
                    at = now()
            when = self.clock.session_time(at)
            if when is None or when < 0:
                continue
            self.stats.captured += 1
            index = self.stats.captured - 1
            if self.on_captured is not None:
                self.on_captured(image, when)
            self._post(VideoFrame(image=image, index=index, time=when, received_at=at))
            last_post = now()

    def _post(self, frame: VideoFrame) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._arrive, frame)

    def _end(self, reason: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._set_ended, reason)

    # -- event loop side ---------------------------------------------------------------------

    def _arrive(self, frame: VideoFrame) -> None:
        if self._slot is not None:
            self.stats.dropped += 1  # newest wins
        self._slot = frame
        self._notify()

    def _set_ended(self, reason: str) -> None:
        self.ended = reason
        log.info("%s: %s", self.label, reason)
        self._notify()
