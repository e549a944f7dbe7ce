"""What ``realtime-erc devices`` lists: audio inputs (PortAudio) and cameras (OpenCV)."""

from __future__ import annotations

import glob
import re
import sys
from dataclasses import dataclass

import cv2

from realtime_erc.sources.camera import open_capture
from realtime_erc.sources.microphone import InputDevice, MicrophoneError, list_inputs

PROBE_INDICES = range(10)  # where /dev/video* cannot be listed (not Linux)


@dataclass(frozen=True, slots=True)
class CameraInfo:
    """A camera index and what it reports; ``usable`` is False when it is busy or unreadable."""

    index: int
    usable: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    path: str = ""


def list_audio_inputs() -> tuple[list[InputDevice], str | None]:
    """Audio inputs, and a reason when none can be listed (e.g. PortAudio missing)."""
    try:
        return list_inputs(), None
    except MicrophoneError as e:
        return [], str(e)


def camera_indices() -> list[tuple[int, str]]:
    """Candidate camera indices: ``/dev/videoN`` on Linux, else 0..9 (probed)."""
    if sys.platform.startswith("linux"):
        found = []
        for path in glob.glob("/dev/video*"):
            m = re.fullmatch(r"/dev/video(\d+)", path)
            if m:
                found.append((int(m.group(1)), path))
        return sorted(found)
    return [(i, "") for i in PROBE_INDICES]


def probe_camera(index: int, path: str = "") -> CameraInfo | None:
    """Open a camera briefly and read one frame; None when nothing is there (probing only)."""
    cap = open_capture(index)
    try:
        if not cap.isOpened():
            return CameraInfo(index, usable=False, path=path) if path else None
        ok, frame = cap.read()
        if not ok:
            return CameraInfo(index, usable=False, path=path)
        return CameraInfo(
            index,
            usable=True,
            width=frame.shape[1],
            height=frame.shape[0],
            fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            path=path,
        )
    finally:
        cap.release()


def list_cameras() -> list[CameraInfo]:
    """Every camera found; on Linux, V4L2 nodes that are busy (or metadata-only) are listed as
    not usable."""
    cameras = []
    for index, path in camera_indices():
        info = probe_camera(index, path)
        if info is not None:
            cameras.append(info)
    return cameras
