"""Faults with real components (issue 8): the disk filling up while recording, subscribers that
disappear mid-session, and SIGTERM at any stage of a replay.

Covered elsewhere (not repeated here): the MQTT broker going down and coming back
(``tests/outputs/test_mqtt.py::test_broker_outage_loses_nothing_and_keeps_order``, and the
bounded buffer while it is down), and the microphone lost mid-session
(``tests/sources/test_live_run.py::test_run_ends_cleanly_when_the_microphone_is_lost``, plus
``test_record_stopped_or_killed_leaves_a_replayable_recording`` for a killed recorder).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sources"))
from pulse_server import PulseServer, pulse_fixture, write_wav  # noqa: E402, F401

from cli_support import ROOT  # noqa: E402
from realtime_erc.events import SAMPLE_RATE  # noqa: E402
from realtime_erc.sources.recording import read_recording  # noqa: E402

CAPTURING = "capturing from microphone"


# ---------------------------------------------------------------------------------------------
# Helpers


def _noise_wav(path: Path, seconds: float = 90.0) -> Path:
    """White noise at 48 kHz stereo: FLAC cannot compress it, so a small disk fills fast."""
    rng = np.random.default_rng(0)
    return write_wav(path, rng.uniform(-0.5, 0.5, (int(seconds * 48000), 2)), 48000)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs) mounted under ``tmp_path``; skipped where mounting is
    not permitted (not root, or no CAP_SYS_ADMIN in a container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs ({result.stderr.strip() or result.returncode}); "
            "the RLIMIT_FSIZE variant still runs"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _start(*args: str, env: dict[str, str] | None = None, preexec=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "realtime_erc", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        preexec_fn=preexec,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"timed out; stderr:\n{err}")
    return proc.returncode, out, err


def _assert_replayable(recording: Path, tmp_path: Path, min_s: float) -> None:
    rec = read_recording(recording)
    assert rec.duration >= min_s
    audio = rec.read_audio()
    assert len(audio) == pytest.approx(rec.duration * SAMPLE_RATE, abs=SAMPLE_RATE * 0.05)
    assert float(np.abs(audio).max()) > 0.1  # the noise, not silence
    out = tmp_path / "replayed.jsonl"
    result = subprocess.run(
        [
            sys.executable, "-m", "realtime_erc", "replay", str(recording), "--speed", "max",
            "--no-zmq", "--jsonl", str(out), "-q",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    states = [json.loads(x).get("state") for x in out.read_text().splitlines()]
    assert states[0] == "online" and states[-1] == "offline"


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------
# Disk full while recording


@pytest.mark.slow
@pytest.mark.parametrize("command", ["record", "run"])
def test_disk_full_while_recording_is_one_error_and_the_recording_replays(
    pulse: PulseServer, small_fs: Path, tmp_path: Path, command: str
):
    player = pulse.play(_noise_wav(tmp_path / "noise.wav"))
    target = small_fs / "rec"
    try:
        if command == "record":
            proc = _start("record", str(target), "--mic", "pulse", "--camera", "none")
        else:
            proc = _start(
                "run", "--mic", "pulse", "--camera", "none", "--record", str(target),
                "--no-zmq", "--jsonl", str(tmp_path / "live.jsonl"), "-q",
            )  # fmt: skip
        code, _, err = _finish(proc)
    finally:
        player.kill()
        player.wait()
    line = _one_error_line(err)
    assert code == 2, err
    assert str(target) in line and "No space left on device" in line, line
    assert "free disk space" in line and "record to another disk" in line, line
    _assert_replayable(target, tmp_path, min_s=1.0)


@pytest.mark.slow
def test_file_size_limit_while_recording_is_one_error_and_the_recording_replays(
    pulse: PulseServer, tmp_path: Path
):
    """The second real variant: RLIMIT_FSIZE in the recorder process (EFBIG, not ENOSPC)."""
    limit = 1 << 20

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    player = pulse.play(_noise_wav(tmp_path / "noise.wav"))
    target = tmp_path / "rec"
    try:
        proc = _start(
            "record", str(target), "--mic", "pulse", "--camera", "none", preexec=limit_file_size
        )
        code, _, err = _finish(proc)
    finally:
        player.kill()
        player.wait()
    line = _one_error_line(err)
    assert code == 2, err
    assert str(target) in line and "File too large" in line, line
    assert (target / "audio.flac").stat().st_size <= limit
    _assert_replayable(target, tmp_path, min_s=1.0)
