"""Hostile input (issue 8, part 4): whatever arrives, the project refuses it with its own one-line
error or shrugs it off, never with an unexpected exception.

Property-based (hypothesis) for the parsers: the recording reader, the config loader, the event
schema. Real components for the rest: Silero VAD + segmenter on the demo speech with NaN/inf,
clipping and DC offset; the packaged Whisper model on a zero-length segment; ZeroMQ, JSONL and
mosquitto carrying a 100 000-character transcript; subscribers and ``report`` fed malformed JSON.
(20 faces in a frame: tests/features/test_visual.py covers it.)
"""

from __future__ import annotations

import asyncio
import json
import math
import string
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
import soundfile as sf
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "outputs"))
import contextlib

from mqtt_fixtures import mosquitto_fixture  # noqa: E402, F401
from test_zmq import emotion_doc  # noqa: E402

from realtime_erc.assemble import UtteranceAssembler  # noqa: E402
from realtime_erc.config import Config, ConfigError, VadConfig, load_config  # noqa: E402
from realtime_erc.emit import EventStage  # noqa: E402
from realtime_erc.events import SAMPLE_RATE, AudioChunk, SpeechSegment, Utterance, now  # noqa: E402
from realtime_erc.inference import InferenceStage  # noqa: E402
from realtime_erc.outputs.jsonl import JsonlWriter  # noqa: E402
from realtime_erc.outputs.mqtt import MqttPublisher, MqttSubscriber  # noqa: E402
from realtime_erc.outputs.report import ReportError, read_session  # noqa: E402
from realtime_erc.outputs.schema import (  # noqa: E402
    SchemaError,
    decode_json,
    encode_document,
    validate_document,
)
from realtime_erc.outputs.topics import emotion_topic  # noqa: E402
from realtime_erc.outputs.zmq import ZmqPublisher, ZmqSubscriber  # noqa: E402
from realtime_erc.sources.recording import RecordingError, read_recording  # noqa: E402
from realtime_erc.speech.segmenter import Segmenter, SpeechTracker  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "recordings" / "demo"
TIMEOUT = 10.0
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=12,
)


# ---------------------------------------------------------------------------------------------
# Recording reader


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory) -> Path:
    """A valid one-second audio-only recording whose session.json/annotations the tests replace."""
    root = tmp_path_factory.mktemp("rec")
    sf.write(root / "audio.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    return root


def _session(**changes: Any) -> dict[str, Any]:
    meta = {
        "format": "realtime-erc.recording/1",
        "session_id": "fuzz",
        "audio": {"file": "audio.wav"},
        "video": None,
        "speakers": [{"id": "A", "name": "Ana"}],
        "label_set": "meld7",
    }
    meta.update(changes)
    return meta


def _read_or_refuse(root: Path) -> None:
    try:
        read_recording(root)
    except RecordingError as e:
        assert "\n" not in str(e).strip() or str(root) in str(e)


@FUZZ
@given(st.binary(max_size=300))
def test_session_json_random_bytes_only_raise_recording_error(rec_dir: Path, data: bytes) -> None:
    (rec_dir / "annotations.jsonl").unlink(missing_ok=True)
    (rec_dir / "session.json").write_bytes(data)
    with pytest.raises(RecordingError):
        read_recording(rec_dir)


@FUZZ
@given(st.dictionaries(st.sampled_from(list(_session()) + ["created", "source"]), json_values))
def test_session_json_random_values_only_raise_recording_error(rec_dir: Path, changes) -> None:
    (rec_dir / "annotations.jsonl").unlink(missing_ok=True)
    (rec_dir / "session.json").write_text(json.dumps(_session(**changes)), encoding="utf-8")
    _read_or_refuse(rec_dir)


def test_deeply_nested_json_is_refused_not_a_recursion_error(rec_dir: Path) -> None:
    (rec_dir / "session.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecordingError, match="nested too deeply"):
        read_recording(rec_dir)
    (rec_dir / "session.json").write_text(json.dumps(_session()))
    (rec_dir / "annotations.jsonl").write_text("{" * 50_000 + "\n")
    with pytest.raises(RecordingError, match="line 1"):
        read_recording(rec_dir)


annotation_lines = st.one_of(
    st.binary(max_size=80).map(lambda b: b.decode("utf-8", "replace")),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {
            "utterance_id": st.integers(-3, 3) | json_values,
            "speaker": st.sampled_from(["A", "B", ""]) | json_values,
            "start": st.floats() | json_values,
            "end": st.floats() | json_values,
            "text": st.text(max_size=10) | json_values,
            "emotion": st.sampled_from(["joy", "neutral", "happy", None]) | json_values,
        }
    ).map(json.dumps),
)


@FUZZ
@given(st.lists(annotation_lines, max_size=5))
def test_annotations_fuzz_only_raise_recording_error(rec_dir: Path, lines: list[str]) -> None:
    (rec_dir / "session.json").write_text(json.dumps(_session()), encoding="utf-8")
    (rec_dir / "annotations.jsonl").write_text("\n".join(lines), encoding="utf-8")
    _read_or_refuse(rec_dir)


# ---------------------------------------------------------------------------------------------
# Config loader

SECTIONS = [name for name in Config.model_fields]
toml_keys = st.lists(
    st.sampled_from([*SECTIONS, "asr", "model", "endpoint", "zmq", "output", "x", ""]),
    min_size=1,
    max_size=3,
).map(".".join)


@FUZZ
@given(st.binary(max_size=200))
def test_config_file_random_bytes_only_raise_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        assert isinstance(load_config(path), Config)


@FUZZ
@given(st.lists(st.text(max_size=40) | st.tuples(toml_keys, st.text(max_size=20)).map("=".join)))
def test_set_strings_only_raise_config_error(overrides: list[str]) -> None:
    with contextlib.suppress(ConfigError):
        assert isinstance(load_config(None, overrides), Config)


@FUZZ
@given(st.dictionaries(toml_keys, json_values, max_size=4))
def test_dotted_options_only_raise_config_error(options: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        assert isinstance(load_config(None, None, **options), Config)


def test_unreadable_or_hostile_config_files_are_config_errors(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b"\xff\xfe[asr]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory
    deep = tmp_path / "deep.toml"
    deep.write_text("v = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(None, ["asr.model=" + "{a=" * 5000])


# ---------------------------------------------------------------------------------------------
# Schema

valid_emotion = st.builds(
    lambda i, text, speaker, start, length, total: emotion_doc(
        i, speaker=speaker, text=text, start=start, end=start + length, latency_ms={"total": total}
    ),
    st.integers(0, 2**40),
    st.text(),
    st.text(min_size=1),
    st.floats(0, 1e6),
    st.floats(0, 1e3),
    st.floats(0, 1e6),
)


@FUZZ
@given(valid_emotion)
def test_valid_documents_round_trip_through_the_wire_form(doc: dict[str, Any]) -> None:
    validate_document(doc)
    wire = encode_document(doc)
    assert "\n" not in wire
    assert decode_json(wire) == doc


@FUZZ
@given(valid_emotion, st.sampled_from(list(emotion_doc(0))), json_values)
def test_mutated_documents_validate_or_raise_schema_error(doc, key: str, value: Any) -> None:
    doc[key] = value
    try:
        validate_document(doc)
    except SchemaError:
        return
    assert decode_json(encode_document(doc)) == doc


@FUZZ
@given(json_values)
def test_arbitrary_json_values_validate_or_raise_schema_error(value: Any) -> None:
    with pytest.raises(SchemaError):
        validate_document(value)


# ---------------------------------------------------------------------------------------------
# Audio: NaN/inf, clipping, DC offset (real Silero VAD + segmenter on the demo speech)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The demo recording's first 30 s: ``[n]`` float32 at 16 kHz, several utterances."""
    return read_recording(DEMO).read_audio()[: 30 * SAMPLE_RATE]


async def _segment(audio: np.ndarray, config: VadConfig | None = None) -> tuple[list, Segmenter]:
    seg = Segmenter(config)
    await seg.start()
    out: list[SpeechSegment] = []
    for i in range(0, len(audio), 8000):
        chunk = AudioChunk(samples=audio[i : i + 8000].astype(np.float32), start=i / SAMPLE_RATE)
        out += await seg.feed(chunk)
    out += [s async for s in seg.flush()]
    return out, seg


@pytest.mark.slow
@pytest.mark.parametrize("gate", [True, False])
async def test_non_finite_clipped_and_offset_audio_segments_like_clean_audio(speech, gate) -> None:
    config = VadConfig(webrtc_gate=gate)
    clean, _ = await _segment(speech, config)
    assert len(clean) >= 4
    sprinkled = speech.copy()
    sprinkled[::997] = np.nan
    sprinkled[500::1999] = np.inf
    burst = np.concatenate([np.full(SAMPLE_RATE, np.nan, np.float32), speech])
    variants = {
        "sprinkled": (sprinkled, 0.0),
        "burst": (burst, 1.0),
        "clipped": (np.clip(speech * 8, -1.0, 1.0), 0.0),
        "over_range": (speech * 8, 0.0),
        "dc": (speech + 0.3, 0.0),
    }
    for name, (audio, shift) in variants.items():
        segments, seg = await _segment(audio.astype(np.float32), config)
        assert abs(len(segments) - len(clean)) <= 2, name
        for s in segments:
            assert np.isfinite(s.samples).all() and np.abs(s.samples).max() <= 1.0, name
        starts = [s.start - shift for s in segments]
        # every clean utterance is still found (within 0.3 s)
        assert all(min(abs(c.start - t) for t in starts) < 0.3 for c in clean), name
        expected_bad = int((~np.isfinite(audio)).sum())
        assert seg.nonfinite_samples == expected_bad, name


def test_an_hour_of_unbroken_speech_is_cut_at_max_utterance_s() -> None:
    """Nobody pauses for an hour: every segment the ASR receives is still at most
    ``max_utterance_s`` (+ one window) long, and together they cover the whole hour."""
    config = VadConfig(max_utterance_s=15.0)
    tracker = SpeechTracker(config)
    window = np.full(512, 0.1, np.float32)
    segments: list[SpeechSegment] = []
    n = 3600 * SAMPLE_RATE // 512
    for _ in range(n):
        segments += tracker.push(window, 0.99, 0.0)
    segments += tracker.flush()
    limit = config.max_utterance_s * SAMPLE_RATE + 512
    assert max(len(s.samples) for s in segments) <= limit
    assert all(s.end - s.start <= config.max_utterance_s + 0.05 for s in segments)
    assert sum(s.end - s.start for s in segments) == pytest.approx(n * 512 / SAMPLE_RATE, abs=0.1)


@pytest.mark.slow
async def test_zero_length_and_one_sample_segments_transcribe_to_nothing() -> None:
    from realtime_erc.speech.asr import AsrStage

    asr = AsrStage()
    await asr.start()
    try:
        for n in (0, 1, 100):
            segment = SpeechSegment(0, 1.0, 1.0, np.zeros(n, np.float32), now(), now())
            assert await asr.transcribe(segment) is None
    finally:
        await asr.close()


# ---------------------------------------------------------------------------------------------
# A very long transcript through the events stage → schema → ZeroMQ, JSONL and MQTT

LONG_TEXT = ('ünïcode words [and] "quotes" \n' * 4000)[:100_000]


async def _long_event_document() -> dict[str, Any]:
    segment = SpeechSegment(0, 0.0, 3600.0, np.zeros(16, np.float32), now(), now())
    utterance = Utterance(utterance_id=0, segment=segment, text=LONG_TEXT, speaker="A")
    features = await UtteranceAssembler(expects_analysis=False).assemble(utterance, None)
    inference = await InferenceStage("long").infer(features)
    [event] = [e async for e in EventStage("long", "meld7").process(inference)]
    doc = event.to_document()
    validate_document(doc)
    return doc


async def test_a_100k_character_transcript_crosses_zmq_and_jsonl(tmp_path: Path) -> None:
    doc = await _long_event_document()
    topic = emotion_topic("erc", "long", "A")
    pub = ZmqPublisher("tcp://127.0.0.1:*", wait_for_subscriber_s=5.0)
    jsonl = JsonlWriter(tmp_path / "long.jsonl")
    await jsonl.start()
    sub: ZmqSubscriber | None = None
    try:
        pub.bind()
        sub = ZmqSubscriber(pub.bound_endpoint, "erc/")
        sub.connect()
        await pub.start()  # waits for the subscription
        await pub.publish(topic, doc)
        await jsonl.publish(topic, doc)
        got_topic, got = await asyncio.wait_for(sub.receive(), TIMEOUT)
    finally:
        if sub is not None:
            sub.close()
        await pub.close()
        await jsonl.close()
    assert got_topic == topic and got["text"] == LONG_TEXT
    assert read_session(tmp_path / "long.jsonl").utterances[0]["text"] == LONG_TEXT


@pytest.mark.slow
async def test_a_100k_character_transcript_crosses_mosquitto(mosquitto) -> None:
    doc = await _long_event_document()
    sub = MqttSubscriber(mosquitto.url, session_id="long")
    pub = MqttPublisher(mosquitto.url, "long", "meld7")
    async with sub:
        await pub.start()
        await pub.publish(emotion_topic("erc", "long", "A"), doc)
        await pub.close()
        _, got = await asyncio.wait_for(sub.receive(), TIMEOUT)
    assert got["text"] == LONG_TEXT and pub.delivered >= 1


# ---------------------------------------------------------------------------------------------
# Malformed JSON sent to everything that parses it

HOSTILE_PAYLOADS = [
    b"not json",
    b"\xff\xfe\x00",
    b"[1, 2]",
    b'"a string"',
    b"[" * 100_000,
    b'{"schema": "erc.emotion/1", "start": NaN}',
    b'{"x": Infinity}',
    b"{" + b'"a":' * 10 + b"}",
]


async def test_zmq_watch_survives_hostile_payloads(tmp_path: Path) -> None:
    from rich.console import Console

    from realtime_erc.outputs.console import watch

    context = zmq.asyncio.Context()
    raw = context.socket(zmq.XPUB)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.bind("tcp://127.0.0.1:*")
    sub = ZmqSubscriber(raw.getsockopt_string(zmq.LAST_ENDPOINT), prefix="erc/")
    jsonl = JsonlWriter(tmp_path / "w.jsonl")
    try:
        sub.connect()
        await asyncio.wait_for(raw.recv(), TIMEOUT)  # the subscription has arrived
        for payload in HOSTILE_PAYLOADS:
            await raw.send_multipart([b"erc/s/A/emotion", payload])
        await raw.send_multipart([b"erc/s/A/emotion", json.dumps(emotion_doc(3)).encode()])
        console = Console(file=open(tmp_path / "out.txt", "w"), width=200)  # noqa: SIM115
        count = await asyncio.wait_for(watch(sub, console, jsonl, max_events=1), TIMEOUT)
        console.file.close()
    finally:
        sub.close()
        raw.close()
        context.term()
        await jsonl.close()
    assert count == 1 and sub.skipped == len(HOSTILE_PAYLOADS)
    [line] = (tmp_path / "w.jsonl").read_text().splitlines()
    assert json.loads(line)["utterance_id"] == 3


@pytest.mark.slow
async def test_mqtt_subscriber_skips_and_counts_hostile_payloads(mosquitto) -> None:
    sub = MqttSubscriber(mosquitto.url, session_id="s")
    async with sub:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as raw:
            for payload in HOSTILE_PAYLOADS:
                await raw.publish("erc/s/A/emotion", payload, qos=1)
            await raw.publish("erc/s/A/emotion", json.dumps(emotion_doc(5, "s")), qos=1)
        _, doc = await asyncio.wait_for(sub.receive(), TIMEOUT)
    assert doc["utterance_id"] == 5 and sub.skipped == len(HOSTILE_PAYLOADS)


def _stream(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_report_refuses_a_malformed_line_naming_it(tmp_path: Path, run_cli) -> None:
    good = json.dumps(emotion_doc(0))
    for bad, why in [
        ('{"schema": "erc.emotion/1", "utterance_i', "not a JSON document"),
        ("[" * 100_000, "nested too deeply"),
        ('{"a": NaN}', "NaN"),
        (json.dumps(emotion_doc(1, start="soon")), "start"),
        (json.dumps({k: v for k, v in emotion_doc(1).items() if k != "utterance_id"}), "utter"),
    ]:
        path = _stream(tmp_path, good, bad, good)
        with pytest.raises(ReportError, match=f"line 2: .*{why}"):
            read_session(path)
    result = run_cli("report", str(path), "-o", str(tmp_path / "r.png"))
    assert result.returncode == 2 and "line 2" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b"\xff\xfe")
    with pytest.raises(ReportError, match="not UTF-8"):
        read_session(latin)


@FUZZ
@given(st.lists(st.text(alphabet=string.printable, max_size=60), max_size=4))
def test_report_fuzz_only_raises_report_error(tmp_path: Path, lines: list[str]) -> None:
    path = _stream(tmp_path, json.dumps(emotion_doc(0)), *lines)
    try:
        data = read_session(path)
    except ReportError:
        return
    assert data.utterances and all(math.isfinite(float(u["start"])) for u in data.utterances)
