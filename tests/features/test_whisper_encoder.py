"""The PyTorch Whisper encoder read from the packaged CTranslate2 model gives CTranslate2's own
encoder output on real speech, and the speech head's features pool the layers asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from realtime_erc.features.assets import whisper_model_dir
from realtime_erc.features.speech_emotion import (
    SpeechEmotionError,
    SpeechFeatureExtractor,
    SpeechFeatureOptions,
)
from realtime_erc.features.whisper_encoder import (
    EncoderWeightsError,
    WhisperEncoder,
    read_ctranslate2,
)

DEMO = Path(__file__).resolve().parents[2] / "recordings" / "demo"


def _speech(seconds: float = 3.0) -> np.ndarray:
    audio, rate = sf.read(str(DEMO / "audio.flac"), dtype="float32")
    assert rate == 16000
    voiced = np.flatnonzero(np.abs(audio) > 0.05)  # the first words of the demo
    return audio[voiced[0] : voiced[0] + int(seconds * rate)]


@pytest.fixture(scope="module")
def encoder() -> WhisperEncoder:
    return WhisperEncoder.from_ctranslate2(whisper_model_dir("tiny.en"))


def test_the_encoder_gives_ctranslate2s_output_on_speech(encoder: WhisperEncoder) -> None:
    import ctranslate2
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_model_dir("tiny.en")), device="cpu", compute_type="float32")
    mel = model.feature_extractor(_speech(), chunk_length=None)[:, :300]
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
    reference = np.asarray(model.model.encode(view, to_cpu=True))[0]
    with torch.inference_mode():
        states = encoder(torch.from_numpy(np.ascontiguousarray(mel[None])))
    assert len(states) == len(encoder.blocks) + 2 == 6  # tiny: 4 blocks
    assert all(s.shape == (1, 150, 384) for s in states)
    np.testing.assert_allclose(states[-1][0].numpy(), reference, atol=1e-3)
    # the middle states are not the output (the test would pass on a copy of it otherwise)
    assert not np.allclose(states[1][0].numpy(), reference, atol=0.1)
    with torch.inference_mode():  # only what is asked for is run, to the same values
        first = encoder(torch.from_numpy(np.ascontiguousarray(mel[None])), depth=1)
    assert len(first) == 2 and torch.equal(first[1], states[1])


def test_the_speech_features_pool_the_layers_asked_for() -> None:
    samples = _speech()
    last = SpeechFeatureExtractor(SpeechFeatureOptions(egemaps=False, layers=()))
    two = SpeechFeatureExtractor(SpeechFeatureOptions(egemaps=False, layers=(1, 5)))
    a, b = last.features(samples), two.features(samples)
    assert a.shape == (928,) and b.shape == (2 * 768 + 160,)
    # layer 5 is CTranslate2's output (int8 there, float32 here); the log-mel part is shared
    assert np.corrcoef(a[:768], b[768:1536])[0, 1] > 0.99
    np.testing.assert_allclose(a[768:], b[1536:], atol=1e-5)
    with pytest.raises(SpeechEmotionError, match="encoder states 0–5, not 6"):
        SpeechFeatureExtractor(SpeechFeatureOptions(egemaps=False, layers=(6,)))


def test_a_file_that_is_not_a_ctranslate2_model_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"\x05\x00\x00\x00junk")
    with pytest.raises(EncoderWeightsError, match="binary version 6"):
        read_ctranslate2(tmp_path / "model.bin")
