"""Tests for realtime_erc/sources/recording.py: reading, refusing, replaying and writing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile as sf
import soxr

from realtime_erc.events import SAMPLE_RATE, AudioChunk, VideoFrame
from realtime_erc.sources.recording import (
    FORMAT,
    LABEL_SETS,
    Annotation,
    RecordingError,
    RecordingWriter,
    ReplaySource,
    Speaker,
    read_recording,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recordings" / "demo"


# --- helpers ---------------------------------------------------------------------------------


def write_session(root: Path, **overrides: Any) -> Path:
    """Write a session.json (defaults: audio.flac, no video); ``key=None`` removes a key."""
    root.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "session_id": "t-01",
        "created": "2026-11-22T10:00:00Z",
        "audio": {"file": "audio.flac"},
        "speakers": [{"id": "A", "name": "Ana"}, {"id": "B", "name": "Ben"}],
        "label_set": "meld7",
        "source": "unit test",
    }
    for key, value in overrides.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "session.json").write_text(json.dumps(meta))
    return root


def tone(seconds: float, rate: int = SAMPLE_RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_recording(root: Path, seconds: float = 1.0, **overrides: Any) -> Path:
    write_session(root, **overrides)
    sf.write(root / "audio.flac", tone(seconds), SAMPLE_RATE)
    return root


def write_video(path: Path, n: int, fps: float = 10.0, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8))
    writer.release()


def refused(path: Path) -> str:
    with pytest.raises(RecordingError) as info:
        read_recording(path)
    message = str(info.value)
    assert "\n" not in message
    return message


async def collect(source: ReplaySource) -> list[AudioChunk | VideoFrame]:
    return [event async for event in source]


# --- the demo recording ----------------------------------------------------------------------


def test_demo_recording_is_valid_and_complete() -> None:
    rec = read_recording(DEMO)
    assert rec.session_id == "demo-01"
    assert rec.label_set == "meld7"
    assert [s.id for s in rec.speakers] == ["A", "B"]
    assert (rec.audio_sample_rate, rec.audio_channels) == (SAMPLE_RATE, 1)
    assert 14 <= len(rec.annotations) <= 18
    assert {a.emotion for a in rec.annotations} == set(LABEL_SETS["meld7"])
    assert {a.speaker for a in rec.annotations} == {"A", "B"}
    assert rec.fps == 10.0 and rec.frame_times is not None
    assert len(rec.frame_times) == sum(1 for _ in rec.iter_frames())
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 10_000_000

    audio = rec.read_audio()
    assert len(audio) == rec.audio_frames
    previous_end = 0.0
    for a in rec.annotations:
        assert 1.5 <= a.end - a.start <= 5.0
        assert a.start - previous_end >= (0.5 if a.utterance_id == 0 else 0.79)
        assert a.end <= rec.duration
        speech = audio[int(a.start * SAMPLE_RATE) : int(a.end * SAMPLE_RATE)]
        assert np.sqrt(np.mean(speech**2)) > 0.02
        previous_end = a.end
    gap = audio[int((rec.annotations[0].end + 0.2) * SAMPLE_RATE) :][: SAMPLE_RATE // 2]
    gap_rms = float(np.sqrt(np.mean(gap**2)))
    assert 1e-4 < gap_rms < 3e-3  # low-level noise, not digital silence


async def test_demo_replays_at_max_speed() -> None:
    rec = read_recording(DEMO)
    events = await collect(ReplaySource(rec, speed=None))
    audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    np.testing.assert_array_equal(audio, rec.read_audio())
    assert sum(isinstance(e, VideoFrame) for e in events) == len(rec.frame_times)


# --- refusals --------------------------------------------------------------------------------


def test_refuses_missing_directory(tmp_path: Path) -> None:
    message = refused(tmp_path / "nope")
    assert "nope" in message and "does not exist" in message


def test_refuses_missing_session_json(tmp_path: Path) -> None:
    sf.write(tmp_path / "audio.flac", tone(0.5), SAMPLE_RATE)
    message = refused(tmp_path)
    assert "session.json" in message and "not found" in message


def test_refuses_unknown_format(tmp_path: Path) -> None:
    make_recording(tmp_path, format="foo/2")
    message = refused(tmp_path)
    assert "session.json" in message
    assert "unknown format 'foo/2'" in message and FORMAT in message


def test_refuses_invalid_json(tmp_path: Path) -> None:
    make_recording(tmp_path)
    (tmp_path / "session.json").write_text('{"format": "realtime-erc.recording/1",')
    message = refused(tmp_path)
    assert "session.json" in message and "invalid JSON" in message


def test_refuses_corrupt_audio(tmp_path: Path) -> None:
    write_session(tmp_path)
    (tmp_path / "audio.flac").write_bytes(np.random.default_rng(0).bytes(4096))
    message = refused(tmp_path)
    assert "audio.flac" in message and "cannot decode audio" in message


def test_refuses_zero_length_audio(tmp_path: Path) -> None:
    write_session(tmp_path, audio={"file": "audio.wav"})
    sf.write(tmp_path / "audio.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    message = refused(tmp_path)
    assert "audio.wav" in message and "zero-length audio" in message


def test_refuses_video_without_audio(tmp_path: Path) -> None:
    write_session(tmp_path, audio=None, video={"file": "video.mp4", "fps": 10.0})
    write_video(tmp_path / "video.mp4", 5)
    message = refused(tmp_path)
    assert "session.json" in message and "audio is required" in message


def test_refuses_audio_entry_without_file(tmp_path: Path) -> None:
    write_session(tmp_path)
    message = refused(tmp_path)
    assert "audio.flac" in message and "audio is required" in message


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"utterance_id": 1, "speaker": "B", "start": 1.0,', "invalid JSON"),
        (
            '{"utterance_id": 1, "speaker": "B", "start": 0.9, "end": 0.5, "text": "x", '
            '"emotion": "joy"}',
            "end 0.5 < start 0.9",
        ),
        (
            '{"utterance_id": 1, "speaker": "B", "start": 0.5, "end": 0.9, "text": "x", '
            '"emotion": "happy"}',
            "unknown emotion 'happy'",
        ),
        (
            '{"utterance_id": "one", "speaker": "B", "start": 0.5, "end": 0.9, "text": "x", '
            '"emotion": "joy"}',
            "utterance_id must be an integer",
        ),
        (
            '{"utterance_id": 1, "speaker": "C", "start": 0.5, "end": 0.9, "text": "x", '
            '"emotion": "joy"}',
            "speaker 'C' is not in session.json speakers",
        ),
    ],
)
def test_refuses_bad_annotations(tmp_path: Path, line: str, problem: str) -> None:
    make_recording(tmp_path)
    good = Annotation(0, "A", 0.1, 0.4, "hello there", "neutral")
    (tmp_path / "annotations.jsonl").write_text(json.dumps(good.to_dict()) + "\n" + line + "\n")
    message = refused(tmp_path)
    assert "annotations.jsonl" in message and "line 2" in message and problem in message


def test_refuses_decreasing_frame_times(tmp_path: Path) -> None:
    make_recording(tmp_path, video={"file": "video.mp4", "fps": 10.0})
    write_video(tmp_path / "video.mp4", 3)
    (tmp_path / "video_times.csv").write_text("0.0\n0.5\n0.2\n")
    message = refused(tmp_path)
    assert "video_times.csv" in message and "line 3" in message and "must not decrease" in message


def test_refuses_frame_times_count_mismatch(tmp_path: Path) -> None:
    make_recording(tmp_path, video={"file": "video.mp4", "fps": 10.0})
    write_video(tmp_path / "video.mp4", 4)
    (tmp_path / "video_times.csv").write_text("0.0\n0.1\n0.2\n")
    message = refused(tmp_path)
    assert "video_times.csv" in message and "3 frame times" in message and "4 frames" in message


def test_refuses_unreadable_video(tmp_path: Path) -> None:
    make_recording(tmp_path, video={"file": "video.mp4", "fps": 10.0})
    (tmp_path / "video.mp4").write_bytes(b"not a video" * 100)
    message = refused(tmp_path)
    assert "video.mp4" in message and "cannot be opened" in message


# --- what the format allows ------------------------------------------------------------------


def test_reads_8khz_stereo_wav_as_16khz_mono(tmp_path: Path) -> None:
    write_session(tmp_path, audio={"file": "audio.wav"})
    rate, n = 8000, 8000 * 3 // 2
    left, right = tone(1.5, rate, 300.0), tone(1.5, rate, 1000.0) * 0.5
    sf.write(tmp_path / "audio.wav", np.stack([left, right], axis=1), rate, subtype="FLOAT")

    rec = read_recording(tmp_path)
    assert (rec.audio_sample_rate, rec.audio_channels, rec.audio_frames) == (rate, 2, n)
    assert rec.duration == pytest.approx(1.5)
    audio = rec.read_audio()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 2 * n
    expected = soxr.resample((left + right) / 2, rate, SAMPLE_RATE, quality="HQ")
    np.testing.assert_allclose(audio, expected, atol=1e-4)
    # Streaming in small blocks gives the same signal as reading it whole.
    np.testing.assert_allclose(np.concatenate(list(rec.iter_audio(block_s=0.07))), audio, atol=1e-6)


@pytest.mark.parametrize("video", [None, "null"])
async def test_audio_only_replays(tmp_path: Path, video: str | None) -> None:
    make_recording(tmp_path, seconds=0.5)
    if video == "null":  # "video": null rather than no key
        meta = json.loads((tmp_path / "session.json").read_text())
        meta["video"] = None
        (tmp_path / "session.json").write_text(json.dumps(meta))
    rec = read_recording(tmp_path)
    assert not rec.has_video and rec.video_path is None
    assert list(rec.iter_frames()) == []
    events = await collect(ReplaySource(rec, speed=None))
    assert all(isinstance(e, AudioChunk) for e in events)
    assert sum(len(e.samples) for e in events) == SAMPLE_RATE // 2


def test_variable_frame_times(tmp_path: Path) -> None:
    make_recording(tmp_path, video={"file": "video.mp4"})  # no fps: the times file rules
    write_video(tmp_path / "video.mp4", 5)
    times = [0.0, 0.05, 0.3, 0.31, 0.9]
    (tmp_path / "video_times.csv").write_text("".join(f"{t}\n" for t in times))
    rec = read_recording(tmp_path)
    frames = list(rec.iter_frames())
    assert [i for i, _, _ in frames] == [0, 1, 2, 3, 4]
    assert [t for _, t, _ in frames] == times
    assert all(img.shape == (48, 64, 3) and img.dtype == np.uint8 for _, _, img in frames)


def test_frame_times_from_fps(tmp_path: Path) -> None:
    make_recording(tmp_path, video={"file": "video.mp4", "fps": 4.0})
    write_video(tmp_path / "video.mp4", 3, fps=4.0)
    assert [t for _, t, _ in read_recording(tmp_path).iter_frames()] == [0.0, 0.25, 0.5]


# --- writer ----------------------------------------------------------------------------------


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    audio = rng.uniform(-0.8, 0.8, SAMPLE_RATE + 123).astype(np.float32)
    times = [0.0, 0.04, 0.1, 0.5, 0.51, 0.9]
    notes = [
        Annotation(0, "A", 0.1, 0.45, "hello there", "joy"),
        Annotation(1, "B", 0.6, 0.95, "go away", "anger"),
    ]
    speakers = (Speaker("A", "Ana"), Speaker("B", "Ben"))
    with RecordingWriter(
        tmp_path / "rec", "rt-01", fps=10.0, speakers=speakers, label_set="meld7", source="test"
    ) as writer:
        for i in range(0, len(audio), 1000):
            block = audio[i : i + 1000]
            writer.write_audio(block if i % 2000 else block[:, None])
        for i, t in enumerate(times):
            writer.write_frame(np.full((48, 64, 3), 40 * i, np.uint8), t)
        for note in notes:
            writer.write_annotation(note)

    rec = read_recording(tmp_path / "rec")
    assert rec.session_id == "rt-01" and rec.source == "test" and rec.label_set == "meld7"
    assert rec.speakers == speakers and rec.fps == 10.0
    assert rec.created is not None and rec.created.endswith("Z")
    assert rec.annotations == tuple(notes)
    np.testing.assert_allclose(rec.read_audio(), audio, atol=1.0 / 32768 + 1e-7)
    frames = list(rec.iter_frames())
    assert [t for _, t, _ in frames] == times
    assert [int(img.mean()) for _, _, img in frames] == pytest.approx(
        [40 * i for i in range(len(times))], abs=3
    )


def test_writer_refuses_bad_input(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "rec", "w-01", label_set="meld7") as writer:
        writer.write_audio(tone(0.1))
        with pytest.raises(ValueError, match="channel"):
            writer.write_audio(np.zeros((10, 2), np.float32))
        with pytest.raises(RecordingError, match="unknown emotion 'happy'"):
            writer.write_annotation(Annotation(0, "A", 0.0, 0.1, "hi", "happy"))
        writer.write_frame(np.zeros((48, 64, 3), np.uint8), 0.5)
        with pytest.raises(ValueError, match="previous"):
            writer.write_frame(np.zeros((48, 64, 3), np.uint8), 0.2)
    with pytest.raises(RecordingError, match="already holds a recording"):
        RecordingWriter(tmp_path / "rec", "w-02")


def test_writer_crash_leaves_replayable_recording(tmp_path: Path) -> None:
    """A recorder killed mid-session (no close) still leaves an audio-only recording."""
    script = f"""
import os, numpy as np
from realtime_erc.sources.recording import RecordingWriter, Annotation
w = RecordingWriter({str(tmp_path / "rec")!r}, "crash-01", fps=10.0, label_set="meld7")
for i in range(30):
    w.write_audio(np.full(1600, 0.1, np.float32))
    w.write_frame(np.zeros((48, 64, 3), np.uint8), i / 10)
w.write_annotation(Annotation(0, "A", 0.5, 2.0, "hello", "neutral"))
os._exit(1)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], env=env, check=False, timeout=60)
    rec = read_recording(tmp_path / "rec")
    assert not rec.has_video
    assert 2.0 <= rec.duration <= 3.0  # the encoder's last unflushed block may be lost
    assert len(rec.read_audio()) == rec.audio_frames
    assert rec.annotations[0].text == "hello"


# --- replay ----------------------------------------------------------------------------------


def make_av_recording(root: Path, seconds: float = 1.0, fps: float = 10.0) -> Path:
    make_recording(root, seconds=seconds, video={"file": "video.mp4", "fps": fps})
    write_video(root / "video.mp4", int(seconds * fps), fps=fps)
    return root


async def test_replay_max_speed_yields_everything_in_order(tmp_path: Path) -> None:
    rec = read_recording(make_av_recording(tmp_path))
    events = await collect(ReplaySource(rec, speed=None, chunk_ms=32))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    frames = [e for e in events if isinstance(e, VideoFrame)]

    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), rec.read_audio())
    assert all(len(c.samples) == 512 for c in chunks[:-1])
    assert [c.start for c in chunks] == [i * 512 / SAMPLE_RATE for i in range(len(chunks))]
    assert [f.index for f in frames] == list(range(10))
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(10)])
    # Interleaved on the session clock: a chunk counts at its end, a frame at its time.
    due = [e.end if isinstance(e, AudioChunk) else e.time for e in events]
    assert due == sorted(due)
    received = [e.received_at for e in events]
    assert received == sorted(received)


async def test_replay_is_paced_by_speed(tmp_path: Path) -> None:
    rec = read_recording(make_av_recording(tmp_path, seconds=1.0))
    started = time.perf_counter()
    events = await collect(ReplaySource(rec, speed=4.0))
    wall = time.perf_counter() - started
    assert 0.23 <= wall <= 0.8  # loose: the machine may be busy; speed 1.0 would take 1 s
    last = events[-1]
    assert isinstance(last, AudioChunk) and last.end == pytest.approx(1.0)
    # Each event is released when its session time is reached (a chunk at its end).
    first = events[0].received_at
    for event in events[1:]:
        due = event.end if isinstance(event, AudioChunk) else event.time
        assert event.received_at - first >= due / 4.0 - 0.005


async def test_replay_stops_early_cleanly(tmp_path: Path) -> None:
    rec = read_recording(make_av_recording(tmp_path, seconds=1.0))
    source = ReplaySource(rec, speed=None)
    seen = 0
    async with contextlib.aclosing(source.__aiter__()) as events:
        async for _ in events:
            seen += 1
            if seen == 5:
                break
    assert seen == 5
    await asyncio.sleep(0)


async def test_replay_cancelled_midway_releases_cleanly(tmp_path: Path) -> None:
    """Cancelling the consumer while a decode batch is in flight must not break the iterator."""
    rec = read_recording(make_av_recording(tmp_path, seconds=2.0))

    async def consume() -> int:
        return len(await collect(ReplaySource(rec, speed=None)))

    for delay in (0.0, 0.002, 0.005, 0.01, 0.02):
        task = asyncio.create_task(consume())
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # anything but CancelledError (or a full result) fails the test
    await asyncio.sleep(0.05)  # let in-flight batches finish and their iterators close


def test_replay_rejects_bad_arguments(tmp_path: Path) -> None:
    rec = read_recording(make_recording(tmp_path))
    with pytest.raises(ValueError, match="speed"):
        ReplaySource(rec, speed=0.0)
    with pytest.raises(ValueError, match="chunk_ms"):
        ReplaySource(rec, chunk_ms=0)
