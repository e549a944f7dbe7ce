"""Audio descriptors (openSMILE eGeMAPSv02, librosa) on real speech; per-speaker normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from feature_media import espeak, ravdess_clips

from realtime_erc.features.audio import AUDIO_DIMS, AudioFeatures, AudioOptions, read_htk


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak("The meeting was moved to Friday afternoon, I am so relieved.")


@pytest.mark.parametrize("backend", ["egemaps", "librosa"])
def test_espeak_utterance_gives_finite_vectors_of_the_documented_shape(speech, backend) -> None:
    extractor = AudioFeatures(AudioOptions(backend=backend))
    feats = extractor.extract(speech)
    dim, seq_dim = AUDIO_DIMS[backend]
    assert (extractor.dim, extractor.seq_dim) == (dim, seq_dim)
    assert feats.present and feats.pooled.shape == (dim,)
    assert np.isfinite(feats.pooled).all() and np.abs(feats.pooled).sum() > 0
    frames = len(speech) / 16000 / 0.010  # one step per 10 ms
    assert feats.sequence is not None and feats.sequence.shape[1] == seq_dim
    assert abs(feats.sequence.shape[0] - frames) <= 10
    assert np.isfinite(feats.sequence).all() and feats.mask is not None and feats.mask.all()


@pytest.mark.parametrize("backend", ["egemaps", "librosa"])
def test_ravdess_clip_gives_finite_vectors(backend) -> None:
    clip = ravdess_clips(actor=3, n=1)[0]
    feats = AudioFeatures(AudioOptions(backend=backend)).extract(clip)
    assert feats.present and feats.pooled.shape == (AUDIO_DIMS[backend][0],)
    assert np.isfinite(feats.pooled).all() and np.isfinite(feats.sequence).all()


def test_egemaps_matches_opensmiles_own_functionals(speech) -> None:
    """One run with both sinks gives what opensmile.Smile computes for the functionals."""
    import opensmile

    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.Functionals,
    )
    ours = AudioFeatures(AudioOptions(backend="egemaps")).extract(speech).pooled
    reference = smile.process_signal(speech, 16000).to_numpy()[0]
    np.testing.assert_allclose(ours, np.nan_to_num(reference), rtol=1e-4, atol=1e-4)


def test_egemaps_descriptors_match_opensmiles_own_low_level_descriptors(speech) -> None:
    """The descriptors read back from the HTK sink are openSMILE's LLDs, frame for frame."""
    import opensmile

    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02,
        feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
    )
    ours = AudioFeatures(AudioOptions(backend="egemaps")).extract(speech).sequence
    reference = smile.process_signal(speech, 16000).to_numpy()
    assert ours is not None and ours.shape == reference.shape
    np.testing.assert_allclose(ours, np.nan_to_num(reference), rtol=1e-5, atol=1e-5)


def test_read_htk_reads_frames_back() -> None:
    frames = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = np.array([(3, 100000, 16, 9)], ">i4,>i4,>i2,>i2").tobytes()
    np.testing.assert_array_equal(read_htk(header + frames.astype(">f4").tobytes()), frames)
    assert read_htk(b"").shape[0] == 0


@pytest.mark.parametrize("backend", ["egemaps", "librosa"])
def test_silence_and_too_short_audio_are_absent(backend) -> None:
    extractor = AudioFeatures(AudioOptions(backend=backend))
    rng = np.random.default_rng(0)
    for samples in (
        np.zeros(32000, np.float32),
        (rng.standard_normal(32000) * 1e-5).astype(np.float32),  # -100 dBFS hiss
        (rng.standard_normal(800) * 0.1).astype(np.float32),  # 50 ms
    ):
        feats = extractor.extract(samples)
        assert not feats.present and not feats.pooled.any()
        assert feats.pooled.shape == (AUDIO_DIMS[backend][0],)
