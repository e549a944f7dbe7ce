"""End to end: replay recordings through the real pipeline (Silero + webrtcvad, faster-whisper
tiny.en) and read the stream back over real ZeroMQ and from the JSONL file."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import zmq
from cli_support import DEMO, popen_cli, short_recording

from realtime_erc.outputs.schema import validate_document
from realtime_erc.sources.recording import read_recording
from realtime_erc.speech.wer import word_error_rate

pytestmark = pytest.mark.slow


def overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def subscribe(endpoint: str, prefix: str = "erc/") -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    return ctx, sub


def receive_until_offline(sub: zmq.Socket, timeout_s: float) -> list[tuple[str, dict]]:
    received: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(500):
            continue
        frames = sub.recv_multipart()
        assert len(frames) == 2, "every message is exactly [topic, json]"
        doc = json.loads(frames[1])
        received.append((frames[0].decode(), doc))
        if doc["schema"] == "erc.status/1" and doc["state"] == "offline":
            break
    return received


@pytest.fixture(scope="module")
def demo_stream(tmp_path_factory):
    """Replay the demo once at max speed; collect the stream from ZeroMQ and from JSONL."""
    out = tmp_path_factory.mktemp("demo") / "stream.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    ctx, sub = subscribe(endpoint)
    proc = popen_cli(
        "replay", str(DEMO), "--speed", "max", "--quiet", "--zmq", endpoint,
        "--jsonl", str(out), "--set", "output.zmq.wait_for_subscriber_s=60",
    )  # fmt: skip
    try:
        received = receive_until_offline(sub, timeout_s=240)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close(0)
        ctx.term()
    assert proc.returncode == 0, stderr
    return received, read_jsonl(out)


def test_zmq_subscriber_receives_every_document_in_order(demo_stream):
    received, from_file = demo_stream
    docs = [doc for _, doc in received]
    assert docs == from_file, "ZeroMQ and JSONL carry the same documents in the same order"
    for doc in docs:
        validate_document(doc)
    assert docs[0]["schema"] == "erc.status/1" and docs[0]["state"] == "online"
    assert docs[-1]["schema"] == "erc.status/1" and docs[-1]["state"] == "offline"
    emotions = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    assert [d["utterance_id"] for d in emotions] == list(range(len(emotions)))
    for topic, doc in received:
        if doc["schema"] == "erc.emotion/1":
            assert topic == f"erc/{doc['session_id']}/{doc['speaker']}/emotion"
            assert doc["latency_ms"]["total"] >= doc["latency_ms"]["segment"] >= 0
        else:
            assert topic == f"erc/{doc['session_id']}/status"


def test_every_utterance_is_labelled_by_the_live_model(demo_stream):
    _, docs = demo_stream
    online = docs[0]
    assert online["model"] and online["label_set"] == "meld7"
    finals = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    assert len(finals) == 17
    for doc in finals:
        assert doc["model"] == online["model"] and "errors" not in doc
        assert list(doc["scores"]) == ["neutral", "surprise", "fear", "sadness", "joy", "disgust",
                                       "anger"]  # fmt: skip
        assert abs(sum(doc["scores"].values()) - 1) < 1e-4
        assert doc["label"] == max(doc["scores"], key=doc["scores"].get)
        assert doc["modalities"]["text"] and doc["modalities"]["audio"]
        assert "audio" in doc["heads"]  # the default fuses the speech head's opinion late
    assert len({d["speaker"] for d in finals}) == 2, "the demo's two voices"


def test_a_provisional_event_precedes_each_final_one(demo_stream):
    _, docs = demo_stream
    emotions = [d for d in docs if d["schema"] == "erc.emotion/1"]
    provisional = [d for d in emotions if d["provisional"]]
    assert provisional, "the speech head gives an audio-only opinion before the transcript"
    for p in provisional:
        final = next(d for d in emotions if d["utterance_id"] == p["utterance_id"]
                     and not d["provisional"])  # fmt: skip
        assert emotions.index(p) < emotions.index(final)
        assert p["text"] == "" and not p["modalities"]["text"] and p["modalities"]["audio"]
        assert p["speaker"] == final["speaker"] and p["start"] == final["start"]
        assert abs(sum(p["scores"].values()) - 1) < 1e-4


def test_utterance_boundaries_match_the_annotations(demo_stream, demo_dir):
    _, docs = demo_stream
    emotions = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    annotations = read_recording(demo_dir).annotations
    for ann in annotations:
        hits = [e for e in emotions if overlap(ann.start, ann.end, e["start"], e["end"]) > 0]
        assert len(hits) == 1, f"annotated utterance {ann.utterance_id} overlapped by {len(hits)}"
    for e in emotions:
        assert any(overlap(a.start, a.end, e["start"], e["end"]) > 0 for a in annotations), e


def test_transcripts_have_low_word_error_rate(demo_stream, demo_dir):
    _, docs = demo_stream
    emotions = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    annotations = read_recording(demo_dir).annotations
    reference = " ".join(a.text for a in annotations)
    hypothesis = " ".join(e["text"] for e in emotions)
    wer = word_error_rate(reference, hypothesis)
    assert wer <= 0.15, f"WER {wer:.1%}\nref: {reference}\nhyp: {hypothesis}"


def test_ctrl_c_mid_replay_leaves_a_valid_jsonl(tmp_path: Path, start_cli, demo_dir: Path):
    out = tmp_path / "stream.jsonl"
    proc = start_cli("replay", str(demo_dir), "--speed", "realtime", "--no-zmq", "--quiet",
                     "--jsonl", str(out))  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and '"provisional": false' in out.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    docs = read_jsonl(out)  # every line parses
    assert docs[0]["state"] == "online" and docs[-1]["state"] == "offline"
    emotions = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    assert 1 <= len(emotions) < len(read_recording(demo_dir).annotations)
    for doc in docs:
        validate_document(doc)


def test_8khz_stereo_audio_only_session_replays(tmp_path: Path, run_cli, demo_dir: Path):
    demo = read_recording(demo_dir)
    mono = demo.read_audio()
    audio_8k = soxr.resample(mono, 16_000, 8_000)
    stereo = np.stack([audio_8k, 0.8 * audio_8k], axis=1)
    sf.write(tmp_path / "audio.wav", stereo, 8_000, subtype="PCM_16")
    (tmp_path / "session.json").write_text(
        json.dumps(
            {"format": "realtime-erc.recording/1", "session_id": "narrow-band",
             "audio": {"file": "audio.wav"}}
        )
    )  # fmt: skip
    out = tmp_path / "stream.jsonl"
    result = run_cli("replay", str(tmp_path), "--speed", "max", "--no-zmq", "--quiet",
                     "--jsonl", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    emotions = [
        d for d in read_jsonl(out) if d["schema"] == "erc.emotion/1" and not d["provisional"]
    ]
    assert len(emotions) == len(demo.annotations)
    assert all(e["session_id"] == "narrow-band" and e["text"] for e in emotions)


def test_watch_shows_and_saves_what_replay_publishes(tmp_path: Path, start_cli, free_port: int):
    recording = short_recording(tmp_path, utterances=2)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    watched, published = tmp_path / "watched.jsonl", tmp_path / "published.jsonl"
    watcher = start_cli("watch", "--zmq", endpoint, "--jsonl", str(watched), "--until-offline")
    replay = start_cli("replay", str(recording), "--speed", "max", "--quiet", "--zmq", endpoint,
                       "--jsonl", str(published),
                       "--set", "output.zmq.wait_for_subscriber_s=60")  # fmt: skip
    assert replay.wait(timeout=120) == 0, replay.stderr.read()
    stdout, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert read_jsonl(watched) == read_jsonl(published)
    emotions = [
        d for d in read_jsonl(watched) if d["schema"] == "erc.emotion/1" and not d["provisional"]
    ]
    assert len(emotions) == 2
    for doc in emotions:
        assert doc["text"][:20] in stdout  # the terminal view shows each transcript
    assert "offline" in stdout


def test_sigterm_ends_the_session_cleanly(tmp_path: Path, start_cli):
    recording = short_recording(tmp_path, utterances=2)
    out = tmp_path / "stream.jsonl"
    proc = start_cli("replay", str(recording), "--speed", "realtime", "--no-zmq", "--quiet",
                     "--jsonl", str(out))  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.read_text()):
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    docs = read_jsonl(out)
    assert docs[0]["state"] == "online" and docs[-1]["state"] == "offline"
