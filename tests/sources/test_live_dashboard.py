"""The live command with the dashboard, as a user runs it: the demo played into a PulseAudio
virtual microphone, ``run --broker embedded``, an MQTT subscriber on the embedded broker and
headless Chromium on the dashboard address the command prints."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time

import pytest
import soundfile as sf
from mqtt_fixtures import Subscriber
from pulse_server import PulseServer, pulse_fixture, write_wav  # noqa: F401
from test_live_run import CAPTURING, StderrWatch

from realtime_erc.sources.recording import read_recording

pytestmark = [pytest.mark.slow, pytest.mark.browser]


class StdoutLines:
    """A process's stdout collected in a thread; :meth:`match` waits for a line pattern."""

    def __init__(self, proc) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def match(self, pattern: str, timeout: float = 150) -> re.Match:
        found: list[re.Match] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines if (m := re.search(pattern, line))]
            return bool(found)

        with self._seen:
            assert self._seen.wait_for(seen, timeout=timeout), "".join(self.lines)
        return found[0]


@pytest.mark.parametrize("camera", ["none", "demo video"])
def test_run_with_embedded_broker_delivers_every_final_event_to_mqtt_and_the_dashboard(
    pulse: PulseServer, start_cli, demo_dir, browser_page, tmp_path, camera
):
    rec = read_recording(demo_dir)
    said = rec.annotations[:3]
    audio, sr = sf.read(rec.audio_path, dtype="float32")
    wav = write_wav(tmp_path / "speech.wav", audio[: int((said[-1].end + 0.5) * sr)], sr)
    # the demo's own video (faces) where a camera index goes
    device = str(demo_dir / "video.mp4") if camera != "none" else "none"
    out = tmp_path / "stream.jsonl"
    proc = start_cli(
        "run", "--mic", "pulse", "--camera", device, "--broker", "embedded", "--no-zmq",
        "--jsonl", str(out), "-q",
    )  # fmt: skip
    stdout, stderr = StdoutLines(proc), StderrWatch(proc)
    broker = stdout.match(r"MQTT broker \(embedded\): (mqtt://\S+)").group(1)
    dashboard = stdout.match(r"dashboard: (http://\S+)").group(1)
    subscriber = Subscriber(broker)
    try:
        page = browser_page
        page.goto(dashboard)
        page.wait_for_selector('#connection[data-state="connected"]', timeout=20_000)
        stderr.wait_for(CAPTURING, timeout=150)  # every model loads first
        assert pulse.play(wav).wait(timeout=60) == 0
        time.sleep(1.5)  # the last utterance's hangover and transcription
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"run did not end on Ctrl-C:\n{stderr.text}")
        assert code == 0, stderr.text
        time.sleep(0.5)  # the broker hands on what it was last sent
    finally:
        subscriber.close()

    written = [json.loads(line) for line in out.read_text().splitlines()]
    finals = [d for d in written if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    assert len(finals) >= 2, stderr.text
    session = finals[0]["session_id"]
    received = {
        d["utterance_id"]: d
        for d in subscriber.documents
        if d["schema"] == "erc.emotion/1" and not d["provisional"]
    }
    assert sorted(received) == [d["utterance_id"] for d in finals]
    for doc in finals:
        assert received[doc["utterance_id"]]["label"] == doc["label"]
        assert received[doc["utterance_id"]]["text"] == doc["text"]
    states = [d["state"] for d in subscriber.documents if d["schema"] == "erc.status/1"]
    assert states[-1] == "offline"
    frames = re.search(r"frames_captured=(\d+)", stderr.text)
    assert (frames is not None and int(frames.group(1)) >= 50) == (camera != "none"), stderr.text

    # the page shows every final event: its row, its label, not provisional
    for doc in finals:
        row = page.locator(f'[data-session="{session}"] li[data-utterance="{doc["utterance_id"]}"]')
        row.wait_for(timeout=10_000)
        assert row.locator(".lbl").inner_text() == doc["label"]
        assert row.locator(".text").inner_text() == (doc["text"] or "…")
        assert "provisional" not in (row.get_attribute("class") or "")
    offline = page.locator(f'[data-session="{session}"] [data-status="offline"]')
    offline.wait_for(timeout=10_000)
