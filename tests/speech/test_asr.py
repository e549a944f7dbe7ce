"""Speech recognition: word error rate, real tiny.en / base transcription, the ASR stage."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from realtime_erc.config import AsrConfig, VadConfig
from realtime_erc.events import SAMPLE_RATE, AudioChunk, SpeechSegment, Utterance, VideoFrame, now
from realtime_erc.features.assets import AssetError
from realtime_erc.pipeline import Pipeline, Stage
from realtime_erc.speech import asr
from realtime_erc.speech.asr import AsrStage, Transcriber, resolve_device
from realtime_erc.speech.segmenter import Segmenter
from realtime_erc.speech.wer import normalize_words, word_error_rate

SENTENCE = "Please remember to close the window before you leave the house in the morning."
SECOND = "I am really happy that you could join us for dinner tonight."

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) makes the test speech"
)


def speak(text: str, tmp: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 mono at 16 kHz."""
    import soundfile as sf
    import soxr

    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def segment(samples: np.ndarray, start: float = 0.0, segment_id: int = 0) -> SpeechSegment:
    end = start + len(samples) / SAMPLE_RATE
    return SpeechSegment(segment_id, start, end, samples, last_audio_at=now(), closed_at=now())


# --- word error rate --------------------------------------------------------------------------


def test_normalisation_ignores_case_and_punctuation() -> None:
    assert normalize_words("Hello, World! Don’t stop.") == ["hello", "world", "don't", "stop"]
    assert word_error_rate("Hello, world!", "hello world") == 0.0


def test_word_error_rate_counts_edits() -> None:
    assert word_error_rate("the cat sat down", "the cat sat down") == 0.0
    assert word_error_rate("the cat sat down", "the dog sat down") == 0.25  # substitution
    assert word_error_rate("the cat sat down", "the cat down") == 0.25  # deletion
    assert word_error_rate("the cat sat down", "the cat sat right down") == 0.25  # insertion
    assert word_error_rate("a b", "x y z w") == 2.0  # 2 substitutions + 2 insertions
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "noise") == 1.0
    assert word_error_rate("one two", "") == 1.0


# --- device choice (fakes: no GPU here) -----------------------------------------------------


def test_auto_device_follows_ctranslate2(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    assert resolve_device(AsrConfig()) == ("cuda", "float16")
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert resolve_device(AsrConfig()) == ("cpu", "int8")
    assert resolve_device(AsrConfig(device="cpu", compute_type="float32")) == ("cpu", "float32")


def test_cuda_failure_falls_back_to_cpu_int8(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import faster_whisper

    calls: list[tuple[str, str]] = []

    class FakeWhisperModel:
        def __init__(
            self, path: str, device: str, compute_type: str, cpu_threads: int, num_workers: int
        ) -> None:
            calls.append((device, compute_type))
            if device == "cuda":
                raise RuntimeError("CUDA failed with error no CUDA-capable device is detected")

    monkeypatch.setattr(faster_whisper, "WhisperModel", FakeWhisperModel)
    with caplog.at_level(logging.WARNING, logger=asr.__name__):
        transcriber = Transcriber(AsrConfig(device="cuda"))
    assert calls == [("cuda", "float16"), ("cpu", "int8")]
    assert (transcriber.device, transcriber.compute_type) == ("cpu", "int8")
    assert isinstance(transcriber.model, FakeWhisperModel)
    assert "falling back to CPU" in caplog.text


def test_model_dir_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="model.bin"):
        Transcriber(AsrConfig(model_dir=str(tmp_path)))


# --- the real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Transcriber:
    return Transcriber(AsrConfig(model="tiny.en", device="cpu"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speak(SENTENCE, tmp_path_factory.mktemp("tts"))


@needs_espeak
def test_tiny_en_transcribes_speech(tiny: Transcriber, speech: np.ndarray) -> None:
    assert (tiny.device, tiny.compute_type) == ("cpu", "int8")
    result = tiny.transcribe(speech)
    assert word_error_rate(SENTENCE, result.text) <= 0.15, result.text
    assert result.text == result.text.strip()
    assert result.language == "en"
    assert result.words == ()
    assert result.audio_s == pytest.approx(len(speech) / SAMPLE_RATE)
    assert 0 < result.real_time_factor < 2.0


@needs_espeak
def test_word_times_are_offset(
    tiny: Transcriber, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny, "word_timestamps", True)
    result = tiny.transcribe(speech, offset=100.0)
    assert word_error_rate(SENTENCE, " ".join(w.text for w in result.words)) <= 0.15
    duration = len(speech) / SAMPLE_RATE
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert all(100.0 <= w.start <= w.end <= 100.0 + duration + 0.1 for w in result.words)
    assert all(isinstance(w.start, float) and 0 <= w.probability <= 1 for w in result.words)


def test_fitted_window_matches_the_full_window(
    tiny: Transcriber, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted = tiny.transcribe(speech).text
    monkeypatch.setattr(tiny, "config", tiny.config.with_values({"fit_window": False}))
    assert word_error_rate(tiny.transcribe(speech).text, fitted) <= 0.1


def test_fitted_window_falls_back_when_it_repeats(
    tiny: Transcriber, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    for loop in ("the window " * 30, "Really, you never told me that... " * 3):
        monkeypatch.setattr(tiny, "_transcribe_fitted", lambda audios, lang, t=loop: [t])
        assert word_error_rate(SENTENCE, tiny.transcribe(speech).text) <= 0.15


def test_a_batch_transcribes_as_one_by_one(tiny: Transcriber, speech: np.ndarray) -> None:
    """Segments of several sessions, padded to the longest and decoded together, read the
    same as each alone (silence stays silent; a segment too long to fit goes alone)."""
    clips = [speech, np.zeros(SAMPLE_RATE, np.float32), speech[: len(speech) // 2], speech]
    alone = [tiny.transcribe(c).text for c in clips]
    together = [r.text for r in tiny.transcribe_batch(clips)]
    assert together == alone
    assert word_error_rate(SENTENCE, together[0]) <= 0.15 and together[1] == ""


def test_long_audio_uses_the_full_window(tiny: Transcriber) -> None:
    assert tiny._fits_short_window(np.zeros(20 * SAMPLE_RATE, np.float32), "en")
    assert not tiny._fits_short_window(np.zeros(29 * SAMPLE_RATE, np.float32), "en")


def test_silence_transcribes_to_nothing(tiny: Transcriber) -> None:
    assert tiny.transcribe(np.zeros(SAMPLE_RATE, np.float32)).text == ""


@needs_espeak
async def test_stage_turns_segments_into_utterances(tiny: Transcriber, speech: np.ndarray) -> None:
    stage = AsrStage(AsrConfig(), transcriber=tiny)
    await stage.start()
    frame = VideoFrame(np.zeros((2, 2, 3), np.uint8), index=0, time=0.0)
    events = [
        segment(speech, start=2.0, segment_id=0),
        frame,
        segment(np.zeros(SAMPLE_RATE, np.float32), start=9.0, segment_id=1),  # dropped
        segment(speech, start=12.0, segment_id=2),
    ]
    out = [e for event in events async for e in stage.process(event)]
    assert out[1] is frame
    utterances = [e for e in out if isinstance(e, Utterance)]
    assert [u.utterance_id for u in utterances] == [0, 1]
    assert [u.segment.segment_id for u in utterances] == [0, 2]
    assert utterances[1].start == 12.0
    for u in utterances:
        assert word_error_rate(SENTENCE, u.text) <= 0.15
        assert u.transcribed_at >= u.segment.closed_at
        assert u.speaker is None
    await stage.close()
    assert stage.transcriber is None


class Collect(Stage):
    name = "collect"

    def __init__(self) -> None:
        self.events: list = []

    async def process(self, event):  # type: ignore[override]
        self.events.append(event)
        return
        yield


@needs_espeak
async def test_segmenter_and_asr_in_a_pipeline(
    tiny: Transcriber, speech: np.ndarray, tmp_path: Path
) -> None:
    second = speak(SECOND, tmp_path)
    gap = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([gap[:8000], speech, gap, second, gap])

    async def source():
        for i in range(0, len(audio), 480):  # 30 ms blocks
            yield AudioChunk(audio[i : i + 480], start=i / SAMPLE_RATE)

    sink = Collect()
    stages = [Segmenter(VadConfig()), AsrStage(transcriber=tiny), sink]
    await Pipeline(source(), stages).run()
    utterances = [e for e in sink.events if isinstance(e, Utterance)]
    assert [u.utterance_id for u in utterances] == [0, 1]
    assert word_error_rate(SENTENCE, utterances[0].text) <= 0.15
    assert word_error_rate(SECOND, utterances[1].text) <= 0.15
    assert utterances[0].start < utterances[0].end < utterances[1].start


@pytest.mark.slow
@needs_espeak
def test_base_loads_from_the_concatenated_parts(
    speech: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALTIME_ERC_CACHE", str(tmp_path))
    base = Transcriber(AsrConfig(model="base", device="cpu"))
    assert base.model_dir == tmp_path / "whisper-base"
    assert word_error_rate(SENTENCE, base.transcribe(speech).text) <= 0.15
