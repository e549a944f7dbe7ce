"""Camera capture with a video file where the camera index goes (no virtual camera exists here):
timestamps on the session clock, fps cap, newest-wins drops for a slow consumer, and the errors
for an absent camera or file."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime_erc.events import VideoFrame, now
from realtime_erc.sources.camera import Camera, CameraError, CameraOptions, parse_camera_spec
from realtime_erc.sources.clock import SessionClock
from realtime_erc.sources.devices import list_cameras

FPS = 30.0


def make_video(path: Path, frames: int = 45, fps: float = FPS, size=(64, 48)) -> Path:
    """Frame *i* is a flat grey ``2 * i % 256`` (lossless FFV1): a frame tells its index."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 2 * i % 256, np.uint8))
    writer.release()
    return path


def frame_number(frame: VideoFrame) -> int:
    return frame_number_of(frame.image)


def frame_number_of(image: np.ndarray) -> int:
    return round(float(image.mean()) / 2)


async def run_camera(
    camera: Camera, consume_every_s: float = 0.0, eager: bool = False
) -> list[VideoFrame]:
    """Start the camera and take frames (every ``consume_every_s``, or as they come) until the
    file ends. ``eager``: take each frame in the camera's notify callback, the moment it lands
    in the slot — a consumer that always keeps up, however busy the machine (an awaiting task
    can be descheduled long enough for the next frame to replace the unread one)."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    frames = []

    def notify() -> None:
        if eager and (frame := camera.take()) is not None:
            frames.append(frame)
        wake.set()

    camera.start(loop, notify)
    try:
        while True:
            if consume_every_s:
                await asyncio.sleep(consume_every_s)
            wake.clear()
            frame = camera.take()
            if frame is not None:
                frames.append(frame)
                continue
            if camera.ended:
                return frames
            if not consume_every_s:
                await asyncio.wait_for(wake.wait(), timeout=5)
    finally:
        camera.stop()


def started_clock() -> SessionClock:
    clock = SessionClock()
    clock.start_at(now())
    return clock


def test_spec_parsing(tmp_path):
    assert parse_camera_spec("none") is None
    assert parse_camera_spec("0") == 0
    assert parse_camera_spec("rtsp://127.0.0.1:8554/cam") == "rtsp://127.0.0.1:8554/cam"
    video = make_video(tmp_path / "v.avi", frames=2)
    assert parse_camera_spec(str(video)) == str(video)


async def test_file_frames_are_timestamped_on_the_session_clock(tmp_path):
    video = make_video(tmp_path / "v.avi")
    camera = Camera(CameraOptions(device=str(video), fps=FPS), started_clock())
    assert (camera.width, camera.height, camera.fps) == (64, 48, FPS)
    frames = await run_camera(camera, eager=True)
    assert camera.ended == "end of the video file"
    assert [frame_number(f) for f in frames] == list(range(45))  # nothing lost or reordered
    assert [f.index for f in frames] == list(range(45))
    times = np.array([f.time for f in frames])
    # Played in real time: frame i at about i / fps (timestamps are read times, so a busy
    # machine adds jitter; the median error stays well under a frame).
    error = np.abs(times - times[0] - np.arange(45) / FPS)
    assert np.median(error) < 0.5 / FPS and error.max() < 0.3
    # Never closer than the period less its jitter tolerance, also after a late read.
    assert np.all(np.diff(times) >= 0.75 / FPS - 1e-6)
    assert times[0] >= 0
    assert camera.stats.dropped == 0 and camera.stats.captured == 45


async def test_a_late_file_read_catches_up_without_a_burst(tmp_path):
    """The reader stalls 0.3 s (9 frames) at frame 5: it catches up at 4/3 of the rate, so no
    two frames are stamped closer than ¾ period and the consumer loses none of them."""
    video = make_video(tmp_path / "v.avi")

    def stall(image, time) -> None:  # runs in the reader thread
        if frame_number_of(image) == 5:
            threading.Event().wait(0.3)

    camera = Camera(CameraOptions(device=str(video), fps=FPS), started_clock(), on_captured=stall)
    frames = await run_camera(camera, eager=True)
    assert [frame_number(f) for f in frames] == list(range(45))
    assert camera.stats.dropped == 0
    gaps = np.diff([f.time for f in frames])
    assert gaps[5] >= 0.3  # the stall
    assert np.all(gaps >= 0.75 / FPS - 1e-6)
    assert np.sum(gaps[6:] < 0.9 / FPS) >= 5  # it did catch up, faster than the frame rate


async def test_fps_caps_the_frame_rate(tmp_path):
    video = make_video(tmp_path / "v.avi")
    camera = Camera(CameraOptions(device=str(video), fps=10.0), started_clock())
    frames = await run_camera(camera)
    assert 13 <= len(frames) <= 17  # 1.5 s at 10 fps
    assert camera.stats.skipped == 45 - len(frames)
    assert np.all(np.diff([f.time for f in frames]) > 0.07)


@pytest.mark.slow
async def test_slow_consumer_drops_frames_newest_wins(tmp_path):
    video = make_video(tmp_path / "v.avi", frames=90)
    camera = Camera(CameraOptions(device=str(video), fps=FPS), started_clock())
    frames = await run_camera(camera, consume_every_s=0.1)  # takes 10 of 30 frames a second
    stats = camera.stats
    assert stats.captured == 90
    assert stats.delivered == len(frames)
    assert stats.delivered + stats.dropped == stats.captured
    assert 18 <= stats.dropped <= 75
    numbers = [frame_number(f) for f in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[-1] == 89  # the newest frame always wins
    assert numbers == [f.index for f in frames]  # index = capture index, gaps show drops


async def test_camera_waits_for_the_session_clock(tmp_path):
    """Until the microphone starts the clock no frame is taken, so none has a negative time."""
    video = make_video(tmp_path / "v.avi", frames=30)
    clock = SessionClock()
    camera = Camera(CameraOptions(device=str(video)), clock)
    camera.start(asyncio.get_running_loop(), lambda: None)
    try:
        await asyncio.sleep(0.3)
        assert camera.take() is None and camera.stats.captured == 0
        clock.start_at(now())
        await asyncio.sleep(0.3)
        frame = camera.take()
        assert frame is not None and frame.time >= 0
        assert frame_number(frame) >= 1  # the file plays from its first frame on
    finally:
        camera.stop()


def test_unknown_camera_index_is_a_clear_error():
    with pytest.raises(CameraError) as e:
        Camera(CameraOptions(device="7"), SessionClock())
    message = str(e.value)
    assert "camera 7 cannot be opened" in message
    assert "realtime-erc devices" in message and "--camera none" in message


def test_missing_video_file_is_a_clear_error(tmp_path):
    with pytest.raises(CameraError, match="no such file"):
        Camera(CameraOptions(device=str(tmp_path / "missing.mp4")), SessionClock())


def test_unreadable_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video")
    with pytest.raises(CameraError, match="OpenCV cannot read it"):
        Camera(CameraOptions(device=str(bogus)), SessionClock())


def test_list_cameras_reports_what_is_there():
    cameras = list_cameras()
    for c in cameras:
        assert c.index >= 0
        if c.usable:
            assert c.width > 0 and c.height > 0
    if not Path("/dev/video0").exists():
        assert cameras == []
