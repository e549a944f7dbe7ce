"""``realtime-erc stream --mic``: a PulseAudio virtual microphone streamed to a real server;
what was said comes back as final events, and Ctrl-C ends the session cleanly."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from serve_fixtures import start_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sources"))
from pulse_server import PulseServer, pulse_fixture, write_wav  # noqa: E402, F401
from test_live_run import CAPTURING, StderrWatch, words  # noqa: E402

from realtime_erc.sources.recording import read_recording  # noqa: E402

pytestmark = pytest.mark.slow


def test_stream_sends_the_microphone_to_the_server(
    pulse: PulseServer, start_cli, demo_dir, tmp_path
) -> None:
    rec = read_recording(demo_dir)
    said = rec.annotations[:2]
    audio, sr = sf.read(rec.audio_path, dtype="float32")
    wav = write_wav(tmp_path / "speech.wav", audio[: int((said[-1].end + 0.5) * sr)], sr)
    server = start_server()
    try:
        out = tmp_path / "stream.jsonl"
        proc = start_cli("stream", server.url, "--mic", "pulse", "--jsonl", str(out), "-q")
        watch = StderrWatch(proc)
        watch.wait_for(CAPTURING, timeout=60)
        player = pulse.play(wav)
        assert player.wait(timeout=30) == 0
        time.sleep(2.0)  # the last utterance's hangover, transcription and model
        proc.send_signal(signal.SIGINT)  # stops the capture; the server finishes the session
        assert proc.wait(timeout=60) == 0, watch.text
    finally:
        server.stop()
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["state"] for d in docs if d["schema"] == "erc.status/1"] == ["online", "offline"]
    finals = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    heard = words(" ".join(d["text"] for d in finals))
    expected = words(" ".join(a.text for a in said))
    assert len(heard & expected) >= 0.7 * len(expected), (heard, expected)
    assert [d["utterance_id"] for d in finals] == list(range(len(finals)))
    assert re.fullmatch(r"live-\S+", docs[0]["session_id"]) or docs[0]["session_id"]
