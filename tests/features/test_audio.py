"""Audio descriptors (openSMILE eGeMAPSv02, librosa) on real speech; per-speaker normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from feature_media import espeak, ravdess_clips

from realtime_erc.features.audio import AUDIO_DIMS, AudioFeatures, AudioOptions, SpeakerNormalizer


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


def test_speaker_normalizer_standardises_each_speaker_with_running_stats() -> None:
    rng = np.random.default_rng(1)
    norm = SpeakerNormalizer(dim=3, min_count=3)
    a = rng.normal([10, 0, -5], [1, 2, 3], size=(200, 3))
    b = rng.normal([-10, 5, 5], [3, 1, 1], size=(200, 3))
    for x, y in zip(a, b, strict=True):
        norm.update("A", x)
        norm.update("B", y)
    za = np.array([norm.normalize("A", x) for x in a])
    zb = np.array([norm.normalize("B", y) for y in b])
    for z in (za, zb):
        np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
        np.testing.assert_allclose(z.std(0, ddof=1), 1, atol=1e-5)
    # Welford equals the batch statistics
    np.testing.assert_allclose(norm._speakers["A"].mean, a.mean(0), atol=1e-9)
    assert norm.count("A") == 200 and sorted(norm.speakers) == ["A", "B"]


def test_speaker_normalizer_falls_back_to_global_then_prior() -> None:
    prior_mean, prior_std = np.array([1.0, 1.0]), np.array([2.0, 2.0])
    norm = SpeakerNormalizer(dim=2, min_count=3, prior_mean=prior_mean, prior_std=prior_std)
    x = np.array([3.0, 5.0])
    np.testing.assert_allclose(norm.normalize("new", x), [1.0, 2.0], atol=1e-5)  # prior
    for v in ([0.0, 0.0], [2.0, 2.0], [4.0, 4.0]):
        norm.update("A", np.array(v))
    # "B" is unknown: the statistics of everyone seen so far (mean 2, std 2)
    np.testing.assert_allclose(norm.normalize("B", x), [0.5, 1.5], atol=1e-5)
    with pytest.raises(ValueError, match=r"expected a \[2\] vector"):
        norm.update("A", np.zeros(3))
