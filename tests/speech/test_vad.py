"""Real Silero VAD v6 and webrtcvad on espeak-ng speech, digital silence and white noise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from realtime_erc.events import SAMPLE_RATE
from realtime_erc.speech.vad import WINDOW, SileroVad, SpeechDetector, WebRtcGate

pytestmark = pytest.mark.skipif(
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
