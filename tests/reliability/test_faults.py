"""Faults with real components (issue 8): the disk filling up while recording, subscribers that
disappear mid-session, and SIGTERM at any stage of a replay.

Covered elsewhere (not repeated here): the MQTT broker going down and coming back
(``tests/outputs/test_mqtt.py::test_broker_outage_loses_nothing_and_keeps_order``, and the
bounded buffer while it is down), and the microphone lost mid-session
(``tests/sources/test_live_run.py::test_run_ends_cleanly_when_the_microphone_is_lost``, plus
``test_record_stopped_or_killed_leaves_a_replayable_recording`` for a killed recorder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mqtt_fixtures import mosquitto_fixture  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sources"))
from cli_support import ROOT, cli, popen_cli  # noqa: E402
from pulse_server import PulseServer, pulse_fixture, write_wav  # noqa: E402, F401

from realtime_erc.events import SAMPLE_RATE  # noqa: E402
from realtime_erc.outputs.mqtt import MqttSubscriber  # noqa: E402
from realtime_erc.outputs.zmq import ZmqSubscriber  # noqa: E402
from realtime_erc.sources.recording import read_recording  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Helpers


def _noise_wav(path: Path, seconds: float = 90.0) -> Path:
    """White noise at 48 kHz stereo: FLAC cannot compress it, so a small disk fills fast."""
    rng = np.random.default_rng(0)
    return write_wav(path, rng.uniform(-0.5, 0.5, (int(seconds * 48000), 2)), 48000)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB filesystem (tmpfs) mounted under ``tmp_path``; skipped where mounting is
    not permitted (not root, or no CAP_SYS_ADMIN in a container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
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
    result = cli("replay", str(recording), "--speed", "max", "--no-zmq", "--jsonl", str(out), "-q")
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
            proc = popen_cli("record", str(target), "--mic", "pulse", "--camera", "none")
        else:
            proc = popen_cli(
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
    limit = 1 << 19

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    player = pulse.play(_noise_wav(tmp_path / "noise.wav"))
    target = tmp_path / "rec"
    try:
        proc = popen_cli(
            "record", str(target), "--mic", "pulse", "--camera", "none", preexec_fn=limit_file_size
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


# ---------------------------------------------------------------------------------------------
# SIGTERM at any stage of a replay


def _documents(path: Path) -> list[dict]:
    """The complete lines of a JSONL file being written (a partial last line is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def _finals(docs: list[dict]) -> list[int]:
    return [
        d["utterance_id"]
        for d in docs
        if d.get("schema") == "erc.emotion/1" and not d.get("provisional")
    ]


def _wait_for(path: Path, ready, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(_documents(path)):
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting on {path}: {_documents(path)[-3:]}")


def _online(docs: list[dict]) -> bool:
    return any(d.get("state") == "online" for d in docs)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "speed"),
    [
        ("start-up", "max"),  # publishers up, models still loading
        ("mid-utterance", "1"),  # real-time pace, inside the 4th utterance
        ("final drain", "max"),  # the last utterance's audio is in; it is still being processed
    ],
)
def test_sigterm_at_any_stage_exits_0_with_everything_closed_published(
    demo_dir: Path, tmp_path: Path, moment: str, speed: str
):
    n_annotated = len(read_recording(demo_dir).annotations)
    out = tmp_path / "stream.jsonl"
    proc = popen_cli(
        "replay", str(demo_dir), "--speed", speed, "--no-zmq", "--jsonl", str(out), "-q"
    )
    try:
        if moment == "start-up":
            _wait_for(out, _online)
        elif moment == "mid-utterance":
            _wait_for(out, lambda docs: len(_finals(docs)) >= 3)
            time.sleep(1.5)  # the next utterance starts ≤ 1 s after the last one's event
        else:
            _wait_for(out, lambda docs: len(_finals(docs)) >= n_annotated - 1)
        sent_after = len(_finals(_documents(out)))
        proc.send_signal(signal.SIGTERM)
        code, _, err = _finish(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert code == 0, err
    assert "Traceback" not in err
    text = out.read_text()
    assert text.endswith("\n")  # complete: no partial line
    docs = [json.loads(line) for line in text.splitlines()]  # every line valid JSON
    statuses = [d["state"] for d in docs if d.get("schema") == "erc.status/1"]
    assert statuses == ["online", "offline"] and docs[-1]["state"] == "offline"
    finals = _finals(docs)
    assert finals == list(range(len(finals)))  # in order, none lost
    if moment == "start-up":
        assert finals == []
    elif moment == "mid-utterance":
        # The utterance in progress is closed by the drain and published too.
        assert sent_after + 1 <= len(finals) < n_annotated
        assert "stopped early" in err
    else:
        assert len(finals) == n_annotated


# ---------------------------------------------------------------------------------------------
# Subscribers that disappear mid-session


async def _zmq_until_offline(endpoint: str) -> list[dict]:
    sub = ZmqSubscriber(endpoint)
    sub.connect()
    got = []
    try:
        while True:
            _, doc = await sub.receive()
            got.append(doc)
            if doc.get("state") == "offline":
                return got
    finally:
        sub.close()


async def _mqtt_until_offline(sub: MqttSubscriber) -> list[dict]:
    got = []
    async for _, doc in sub:
        got.append(doc)
        if doc.get("state") == "offline":
            return got
    return got


async def _wait_lines(path: Path, finals: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(_finals(_documents(path))) < finals:
        assert time.monotonic() < deadline, f"{path}: fewer than {finals} events"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_subscribers_that_vanish_do_not_disturb_the_session(
    demo_dir: Path, tmp_path: Path, mosquitto, free_port: int
):
    """Two ``realtime-erc watch`` processes (ZeroMQ and MQTT) are SIGKILLed mid-session; the
    replay carries on, and the JSONL file and the subscribers that stay get every event."""
    n_annotated = len(read_recording(demo_dir).annotations)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    stay_mqtt = MqttSubscriber(mosquitto.url, client_id="stays", persistent=True)
    await stay_mqtt.open()
    stay_zmq = asyncio.create_task(_zmq_until_offline(endpoint))
    stay_mqtt_task = asyncio.create_task(_mqtt_until_offline(stay_mqtt))
    gone = {
        "zmq": popen_cli("watch", "--zmq", endpoint, "--jsonl", str(tmp_path / "gone-zmq.jsonl")),
        "mqtt": popen_cli(
            "watch", "--mqtt", mosquitto.url, "--jsonl", str(tmp_path / "gone-mqtt.jsonl")
        ),
    }
    out = tmp_path / "stream.jsonl"
    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime_erc", "replay", str(demo_dir), "--speed", "5",
        "--zmq", endpoint, "--mqtt", mosquitto.url, "--jsonl", str(out), "-q",
        "--set", "output.zmq.wait_for_subscriber_s=20",
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for name, proc in gone.items():
            await _wait_lines(tmp_path / f"gone-{name}.jsonl", 2)
            proc.kill()  # gone without unsubscribing or closing its connection
            proc.wait()
        assert len(_finals(_documents(out))) < n_annotated  # killed mid-session
        _, err = await asyncio.wait_for(replay.communicate(), 300)
        zmq_docs = await asyncio.wait_for(stay_zmq, 30)
        mqtt_docs = await asyncio.wait_for(stay_mqtt_task, 30)
    finally:
        for proc in gone.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            replay.kill()
        stay_zmq.cancel()
        stay_mqtt_task.cancel()
        await stay_mqtt.close()
    assert replay.returncode == 0, err.decode()
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    expected = list(range(n_annotated))
    assert _finals(docs) == expected
    assert [d["state"] for d in docs if d.get("schema") == "erc.status/1"] == [
        "online",
        "offline",
    ]
    assert _finals(zmq_docs) == expected and zmq_docs[-1]["state"] == "offline"
    # QoS 1 is at-least-once: keep first copies.
    assert list(dict.fromkeys(_finals(mqtt_docs))) == expected
    assert mqtt_docs[-1]["state"] == "offline"
    # The vanished watchers really got part of the session before they went.
    for name in gone:
        assert 2 <= len(_finals(_documents(tmp_path / f"gone-{name}.jsonl"))) < n_annotated
