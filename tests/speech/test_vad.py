"""Real Silero VAD v6 and webrtcvad on espeak-ng speech, digital silence and white noise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from realtime_erc.config import VadConfig
from realtime_erc.events import SAMPLE_RATE
from realtime_erc.speech.segmenter import SpeechTracker
from realtime_erc.speech.vad import (
    WINDOW,
    LoudVoiceOptions,
    NoiseFloor,
    SileroVad,
    SpeechDetector,
    WebRtcGate,
    speech_detector,
)

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) makes the test speech"
)


def speak(text: str, tmp: Path, *voice: str) -> np.ndarray:
    """``text`` spoken by espeak-ng (``voice``: its options), as float32 mono at 16 kHz."""
    import soundfile as sf
    import soxr

    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), *voice, text], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def windows_of(audio: np.ndarray) -> np.ndarray:
    n = len(audio) // WINDOW
    return audio[: n * WINDOW].reshape(n, WINDOW)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    text = "Please remember to close the window before you leave the house in the morning."
    return speak(text, tmp_path_factory.mktemp("tts"))


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad()


def voiced_windows(windows: np.ndarray) -> np.ndarray:
    """Windows that are clearly speech by energy (RMS above -30 dBFS)."""
    return windows[np.sqrt((windows**2).mean(axis=1)) > 0.03]


def test_silero_scores_speech_high(silero: SileroVad, speech: np.ndarray) -> None:
    silero.reset()
    probs = silero.probabilities(windows_of(speech))
    silero.reset()
    loud = silero.probabilities(voiced_windows(windows_of(speech)))
    assert (loud > 0.5).mean() > 0.9
    assert probs.max() > 0.95


def test_silero_scores_silence_and_noise_low(silero: SileroVad) -> None:
    silero.reset()
    assert silero.probabilities(np.zeros((60, WINDOW), np.float32)).max() < 0.1
    noise = np.random.default_rng(0).normal(0, 0.02, (60, WINDOW)).astype(np.float32)
    silero.reset()
    assert silero.probabilities(noise).max() < 0.5


def test_streaming_equals_one_batch(silero: SileroVad, speech: np.ndarray) -> None:
    windows = windows_of(speech)
    silero.reset()
    batch = silero.probabilities(windows)
    silero.reset()
    one_by_one = np.array([silero(w) for w in windows])
    silero.reset()
    in_pieces = np.concatenate(
        [silero.probabilities(windows[i : i + 7]) for i in range(0, len(windows), 7)]
    )
    np.testing.assert_allclose(one_by_one, batch, atol=1e-5)
    np.testing.assert_allclose(in_pieces, batch, atol=1e-5)


def test_reset_forgets_state(silero: SileroVad, speech: np.ndarray) -> None:
    windows = windows_of(speech)[:20]
    silero.reset()
    first = silero.probabilities(windows)
    silero.probabilities(windows)  # state now differs
    silero.reset()
    np.testing.assert_allclose(silero.probabilities(windows), first, atol=1e-6)


def test_window_shape_is_checked(silero: SileroVad) -> None:
    with pytest.raises(ValueError, match="512"):
        silero.probabilities(np.zeros((2, 480), np.float32))
    assert silero.probabilities(np.zeros((0, WINDOW), np.float32)).shape == (0,)


def test_webrtc_gate_passes_speech_and_stops_silence(speech: np.ndarray) -> None:
    loud = voiced_windows(windows_of(speech))
    speech_gate = WebRtcGate(2)
    assert np.mean([speech_gate.is_speech(w) for w in loud]) > 0.9
    gate = WebRtcGate(2)  # fresh: webrtcvad keeps its own short hangover after speech
    assert not gate.is_speech(np.zeros(WINDOW, np.float32))
    quiet = np.random.default_rng(1).normal(0, 1e-4, WINDOW).astype(np.float32)
    assert not gate.is_speech(quiet)
    with pytest.raises(ValueError, match="0..3"):
        WebRtcGate(4)


def test_gated_detector_skips_silence_but_finds_speech(speech: np.ndarray) -> None:
    silence = np.zeros(SAMPLE_RATE, np.float32)
    windows = windows_of(np.concatenate([silence, speech, silence]))
    detector = SpeechDetector(SileroVad(), WebRtcGate(2))
    probs = np.concatenate(
        [detector.probabilities(windows[i : i + 2]) for i in range(0, len(windows), 2)]
    )
    lead = SAMPLE_RATE // WINDOW  # whole windows of leading silence
    assert (probs[: lead - 1] == 0).all()
    assert detector.windows_gated >= 2 * (lead - 1)
    assert detector.windows_scored + detector.windows_gated == len(windows)
    assert (probs > 0.5).sum() >= 0.9 * len(voiced_windows(windows_of(speech)))


def test_noise_floor_falls_at_once_rises_slowly_and_stops_at_its_lowest() -> None:
    floor = NoiseFloor(rise_db_per_s=3.0, lowest_dbfs=-70.0)
    step = 3.0 * WINDOW / SAMPLE_RATE
    out = floor.update(np.array([-50.0, -60.0, -20.0, -20.0, -120.0]))
    np.testing.assert_allclose(out, [-50.0, -60.0, -60.0 + step, -60.0 + 2 * step, -70.0])
    # state carries across calls: a stream scored chunk by chunk sees one floor
    np.testing.assert_allclose(floor.update(np.array([-10.0])), [-70.0 + step])


class _FixedSilero:
    """Stands in for Silero in a logic test: the same probability for every window."""

    def __init__(self, prob: float) -> None:
        self.prob = prob

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        return np.full(len(windows), self.prob, dtype=np.float32)

    def reset(self) -> None:
        pass


@pytest.mark.parametrize(("prob", "lifted"), [(0.05, False), (0.2, True), (0.7, False)])
def test_loud_rule_lifts_only_loud_windows_silero_is_unsure_of(prob: float, lifted: bool) -> None:
    quiet = np.full((30, WINDOW), 10 ** (-60 / 20), np.float32)  # -60 dBFS: the floor
    loud = np.full((5, WINDOW), 10 ** (-30 / 20), np.float32)  # 30 dB over it
    loud_rule = LoudVoiceOptions(above_floor_db=20.0, min_prob=0.1, lift_to=0.5, min_run=1)
    detector = SpeechDetector(_FixedSilero(prob), None, loud_rule)  # type: ignore[arg-type]
    probs = detector.probabilities(np.concatenate([quiet, loud]))
    assert (probs[:30] == prob).all()  # at the floor: Silero's own score
    assert (probs[30:] == (0.5 if lifted else prob)).all()
    assert detector.windows_lifted == (5 if lifted else 0)
    off = SpeechDetector(_FixedSilero(prob), None, LoudVoiceOptions(above_floor_db=0.0))  # type: ignore[arg-type]
    assert (off.probabilities(loud) == prob).all()


def _segments(config: VadConfig, audio: np.ndarray) -> list:
    detector, tracker = speech_detector(config), SpeechTracker(config)
    windows = windows_of(audio)
    segments = []
    for window, prob in zip(windows, detector.probabilities(windows), strict=True):
        segments += tracker.push(window, float(prob), 0.0)
    return segments + tracker.flush()


def test_a_scream_silero_misses_is_an_utterance_and_noise_is_not(tmp_path: Path) -> None:
    """Silero under-scores screaming (RAVDESS's strong-intensity clips); a shrieked, clipped
    "Aaah!" stands for them. With the loud-voice rule it becomes one segment; without, none.
    Loud white noise stays no speech either way."""
    scream = np.clip(speak("Aaaaaaaaaaaaaah!", tmp_path, "-v", "en+f5", "-p", "99", "-s", "80")
                     * 30, -1, 1) * 0.5  # fmt: skip
    rng = np.random.default_rng(0)
    second = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([second, scream, second])
    audio = (audio + rng.normal(0, 10 ** (-60 / 20), len(audio))).astype(np.float32)
    assert _segments(VadConfig(loud_voice_db=0.0), audio) == []
    [segment] = _segments(VadConfig(), audio)
    assert segment.start >= 1.0 and segment.end <= 1.0 + len(scream) / SAMPLE_RATE + 0.1
    noise = np.concatenate([second, rng.normal(0, 0.1, 3 * SAMPLE_RATE), second])
    assert _segments(VadConfig(), noise.astype(np.float32)) == []


def test_loud_windows_are_lifted_only_from_the_third_in_a_row_across_calls() -> None:
    floor = np.full((30, WINDOW), 10 ** (-60 / 20), np.float32)
    loud = np.full((1, WINDOW), 10 ** (-30 / 20), np.float32)
    detector = SpeechDetector(_FixedSilero(0.2), None, LoudVoiceOptions(min_run=3))  # type: ignore[arg-type]
    detector.probabilities(floor)
    # one loud window, a quiet one, then loud ones fed one call at a time (a live stream)
    probs = [detector.probabilities(w)[0] for w in (loud, floor[:1], loud, loud, loud, loud)]
    assert probs == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.5, 0.5])
