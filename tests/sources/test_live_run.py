"""Live capture end to end, with real components: a PulseAudio virtual microphone fed by
``paplay``, a video file where the camera index goes, the real speech pipeline, the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from pulse_server import PulseServer, pulse_fixture, tone, write_wav  # noqa: F401
from test_camera import make_video

from realtime_erc.events import SAMPLE_RATE, AudioChunk, VideoFrame
from realtime_erc.sources.camera import CameraOptions
from realtime_erc.sources.live import LiveOptions, open_live
from realtime_erc.sources.microphone import MicrophoneOptions
from realtime_erc.sources.recording import read_recording

CAPTURING = "capturing from microphone"


class StderrWatch:
    """Collects a process's stderr in a thread; :meth:`wait_for` blocks until a line matches."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        with self._seen:
            ok = self._seen.wait_for(lambda: needle in "".join(self.lines), timeout=timeout)
        assert ok, f"{needle!r} not seen on stderr:\n{self.text}"

    @property
    def text(self) -> str:
        return "".join(self.lines)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


@pytest.mark.slow
def test_run_transcribes_what_is_played_into_the_microphone(
    pulse: PulseServer, start_cli, demo_dir, tmp_path
):
    rec = read_recording(demo_dir)
    said = rec.annotations[:2]
    audio, sr = sf.read(rec.audio_path, dtype="float32")
    wav = write_wav(tmp_path / "speech.wav", audio[: int((said[-1].end + 0.5) * sr)], sr)
    out = tmp_path / "stream.jsonl"
    proc = start_cli(
        "run", "--mic", "pulse", "--camera", "none", "--no-zmq", "--jsonl", str(out), "-q"
    )
    watch = StderrWatch(proc)
    watch.wait_for(CAPTURING, timeout=150)  # every model loads first (slow on a busy CPU)
    player = pulse.play(wav)
    assert player.wait(timeout=30) == 0
    time.sleep(1.5)  # the last utterance's end-of-speech hangover and its transcription
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, watch.text
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    states = [d["state"] for d in docs if d["schema"] == "erc.status/1"]
    assert states == ["online", "offline"]
    emotions = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    heard = words(" ".join(d["text"] for d in emotions))
    expected = words(" ".join(a.text for a in said))
    assert len(heard & expected) >= 0.7 * len(expected), (heard, expected)
    assert all(d["session_id"].startswith("live-") for d in docs)
    assert "overflows=0" in watch.text


@pytest.mark.slow
async def test_record_then_replay_keeps_audio_samples_and_frame_times(pulse: PulseServer, tmp_path):
    """What the live pipeline saw == what replaying its recording delivers (audio after the
    documented mono + soxr HQ conversion, within 16-bit quantisation; frames within a frame)."""
    fps = 15.0
    video = make_video(tmp_path / "cam.avi", frames=90, fps=fps)
    wav = write_wav(tmp_path / "tone.wav", tone(330.0, 2.0), 48000)
    options = LiveOptions(
        mic=MicrophoneOptions(device="pulse"),
        camera=CameraOptions(device=str(video), fps=fps),
        duration_s=3.0,
    )
    source = open_live(options, "roundtrip-1", tmp_path / "rec")
    chunks: list[AudioChunk] = []
    frames: list[VideoFrame] = []
    player = None
    async for event in source:
        if isinstance(event, AudioChunk):
            chunks.append(event)
            if player is None:
                player = pulse.play(wav)
        else:
            frames.append(event)
    player.wait(timeout=10)

    rec = read_recording(tmp_path / "rec")
    assert rec.session_id == "roundtrip-1"
    assert rec.audio_sample_rate == source.mic.samplerate and rec.audio_channels == 2
    live = np.concatenate([c.samples for c in chunks])
    replayed = rec.read_audio()
    assert len(live) >= 3.0 * SAMPLE_RATE and len(replayed) >= len(live)
    assert np.abs(live).max() > 0.2  # the tone is in there
    np.testing.assert_allclose(replayed[: len(live)], live, atol=2e-4)

    assert rec.has_video and rec.frame_times is not None
    assert len(rec.frame_times) == source.camera.stats.captured  # dropped ones too
    assert len(frames) >= 0.8 * 3.0 * fps
    for frame in frames:
        assert abs(rec.frame_times[frame.index] - frame.time) < 1 / fps
    replayed_frames = {i: img for i, _, img in rec.iter_frames()}
    for frame in frames[:: max(1, len(frames) // 10)]:  # mp4v is lossy: grey within 2 steps
        replayed_mean = float(replayed_frames[frame.index].mean())
        assert abs(float(frame.image.mean()) - replayed_mean) < 4.5


@pytest.mark.slow
def test_run_with_camera_file_records_while_running(pulse: PulseServer, run_cli, tmp_path):
    video = make_video(tmp_path / "cam.avi", frames=60, fps=30.0)
    result = run_cli(
        "run",
        "--mic",
        "pulse",
        "--camera",
        str(video),
        "--record",
        str(tmp_path / "rec"),
        "--duration",
        "2.5",
        "--no-zmq",
        "-q",
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    rec = read_recording(tmp_path / "rec")
    assert rec.duration >= 2.5
    assert rec.has_video and 40 <= len(rec.frame_times) <= 60
    assert rec.source.startswith("realtime-erc run: microphone 'pulse'")
    assert "frames_dropped=" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_record_stopped_or_killed_leaves_a_replayable_recording(
    pulse: PulseServer, start_cli, tmp_path, sig
):
    video = make_video(tmp_path / "cam.avi", frames=150, fps=30.0)
    target = tmp_path / "rec"
    proc = start_cli("record", str(target), "--mic", "pulse", "--camera", str(video))
    watch = StderrWatch(proc)
    watch.wait_for(CAPTURING, timeout=150)  # every model loads first (slow on a busy CPU)
    time.sleep(2.0)
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    rec = read_recording(target)
    assert rec.duration >= 1.5
    if sig == signal.SIGINT:
        assert code == 0, watch.text
        assert rec.has_video and len(rec.frame_times) >= 30
    else:  # a crash: the mp4 is never finalised, the audio still replays
        assert not rec.has_video
    assert len(rec.read_audio()) >= 1.5 * SAMPLE_RATE


@pytest.mark.slow
def test_device_errors_are_one_line(pulse: PulseServer, run_cli, tmp_path):
    result = run_cli("run", "--mic", "no-such-mic", "--camera", "none", timeout=60)
    assert result.returncode == 2
    assert "no audio input matches 'no-such-mic'" in result.stderr
    assert "realtime-erc devices" in result.stderr and "Traceback" not in result.stderr

    result = run_cli("run", "--mic", "pulse", "--camera", "7", timeout=60)
    assert result.returncode == 2
    assert "camera 7 cannot be opened" in result.stderr and "Traceback" not in result.stderr

    result = run_cli("record", str(tmp_path / "r"), "--mic", "nope", timeout=60)
    assert result.returncode == 2 and "no audio input matches 'nope'" in result.stderr

    result = run_cli("devices", timeout=60)
    assert result.returncode == 0
    assert "pulse" in result.stdout and "cameras (--camera)" in result.stdout


@pytest.mark.slow
def test_run_ends_cleanly_when_the_microphone_is_lost(pulse: PulseServer, start_cli, tmp_path):
    out = tmp_path / "stream.jsonl"
    proc = start_cli(
        "run", "--mic", "pulse", "--camera", "none", "--no-zmq", "--jsonl", str(out), "-q"
    )
    watch = StderrWatch(proc)
    watch.wait_for(CAPTURING, timeout=150)  # every model loads first (slow on a busy CPU)
    time.sleep(1.0)
    pulse.stop(signal.SIGKILL)
    assert proc.wait(timeout=60) == 1, watch.text
    assert "microphone 'pulse' (#0) was lost" in watch.text
    assert "Traceback" not in watch.text
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["state"] for d in docs if d["schema"] == "erc.status/1"] == ["online", "offline"]


def test_live_source_is_an_async_source():
    """LiveSource plugs into Pipeline like ReplaySource (async iterable with aclose)."""
    from realtime_erc.sources.live import LiveSource

    assert hasattr(LiveSource, "__aiter__") and asyncio.iscoroutinefunction(LiveSource.aclose)
