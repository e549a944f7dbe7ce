"""Speech-emotion head: the committed checkpoint reproduces its stored RAVDESS held-out scores,
predictions are probabilities over the RAVDESS labels, per-speaker normalisation is Welford-exact,
and a few training steps lower the loss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from realtime_erc.config import AudioOptions, DataConfig
from realtime_erc.errors import UserError
from realtime_erc.features.speech_emotion import (
    DEFAULT_CHECKPOINT,
    PERMISSIVE_CHECKPOINT,
    RAVDESS_LABELS,
    SpeakerNormalizer,
    SpeechEmotionError,
    SpeechEmotionHead,
    speech_head_path,
    trim_and_level,
)
from realtime_erc.training.emotion_data import DataError, SpeechClip, ravdess_clips
from realtime_erc.training.extractors import speech_feature_options
from realtime_erc.training.speech_trainer import (
    SpeechTrainOptions,
    clip_features,
    evaluate_speech,
    fit_net,
    read_clip,
)

DATA = DataConfig().resolve()
RAVDESS = DATA / "ravdess"

needs_ravdess = pytest.mark.skipif(
    not (RAVDESS / "index.csv").is_file(),
    reason=f"RAVDESS not found under {DATA} (set REALTIME_ERC_DATA to the data directory)",
)


@pytest.fixture(scope="module")
def head() -> SpeechEmotionHead:
    return SpeechEmotionHead.load()


@pytest.mark.slow
@needs_ravdess
@pytest.mark.parametrize(
    "path", [DEFAULT_CHECKPOINT, PERMISSIVE_CHECKPOINT], ids=["default", "permissive"]
)
def test_committed_checkpoint_reproduces_its_held_out_subset_score(
    path: Path, tmp_path: Path
) -> None:
    head = SpeechEmotionHead.load(path)
    subset = head.info["subset"]
    clips = [c for c in ravdess_clips(RAVDESS) if _rel(c) in set(subset["paths"])]
    assert len(clips) == len(subset["paths"]) == 40
    assert {c.actor for c in clips} <= set(head.info["held_out"]["actors"])
    scores = evaluate_speech(head, clips, cache_dir=tmp_path)  # fresh features, no cache
    stored = subset["scores"]
    assert scores["accuracy"] == stored["accuracy"]
    assert scores["unweighted_accuracy"] == stored["unweighted_accuracy"]
    assert scores["nll"] == pytest.approx(stored["nll"], abs=2e-3)


def _rel(clip: SpeechClip) -> str:
    return str(clip.path.relative_to(clip.path.parent.parent))


@pytest.mark.slow
@needs_ravdess
def test_predictions_are_probabilities_over_ravdess_labels(head: SpeechEmotionHead) -> None:
    assert head.labels == RAVDESS_LABELS
    clip = ravdess_clips(RAVDESS)[0]
    samples = read_clip(clip.path)
    p = head.predict(samples, speaker="a", update=False)
    assert p.shape == (8,) and np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-5)
    e = head.embed(samples, speaker="a")
    assert e.shape == (head.embed_dim,) and np.isfinite(e).all()
    assert head.normalizer.speakers() == ["a"]  # update=False left no trace
    silence = head.predict(np.zeros(16000, dtype=np.float32), speaker="b", update=False)
    assert np.isfinite(silence).all() and silence.sum() == pytest.approx(1.0, abs=1e-5)


def test_speaker_normalizer_is_welford_exact_and_shrinks_to_the_prior() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (50, 4))
    exact = SpeakerNormalizer(np.zeros(4), np.ones(4), prior_count=0)
    for row in x:
        exact.update("s", row)
    mean, std = exact.stats("s")
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-10)
    shrunk = SpeakerNormalizer(np.zeros(4), np.ones(4), prior_count=8)
    first = shrunk.normalize("new", x[0])  # one utterance: mostly the prior
    np.testing.assert_allclose(first, (x[0] - x[0] / 9) / np.sqrt(1 * 0 + 8 / 9), rtol=1e-5)
    unseen_mean, unseen_std = shrunk.stats("nobody")
    assert np.all(unseen_mean == 0) and np.all(unseen_std == 1)


def test_trim_and_level_keeps_the_voiced_span_at_the_target_level() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    tone = 0.01 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    x = np.concatenate([np.zeros(sr, np.float32), tone, np.zeros(sr, np.float32)])
    y = trim_and_level(x, trim_db=35, target_rms_db=-23)
    assert 1.0 <= len(y) / sr <= 1.25
    assert 20 * np.log10(np.sqrt(np.mean(y**2))) == pytest.approx(-23, abs=0.1)
    assert not trim_and_level(np.zeros(100, np.float32), 35, -23).any()


@pytest.mark.slow
@needs_ravdess
def test_a_few_training_steps_lower_the_loss(tmp_path: Path, head: SpeechEmotionHead) -> None:
    clips = [c for c in ravdess_clips(RAVDESS) if c.actor in (1, 2)][::5]  # 24 clips
    x = clip_features(clips, head.feature_options, cache_dir=tmp_path)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.array([c.emotion for c in clips])
    _, losses = fit_net(x, y, SpeechTrainOptions(steps=30, dropout=0.0))
    assert losses[-1] < losses[0] * 0.8


def test_the_feature_cache_recomputes_a_file_cut_short(
    tmp_path: Path, head: SpeechEmotionHead
) -> None:
    sr = 16000
    tone = (0.1 * np.sin(2 * np.pi * 180 * np.arange(2 * sr) / sr)).astype(np.float32)
    sf.write(tmp_path / "tone.wav", tone, sr)
    clips = [SpeechClip(tmp_path / "tone.wav", 1, 0)]
    cache = tmp_path / "cache"
    first = clip_features(clips, head.feature_options, cache_dir=cache)
    (cached,) = cache.glob("*/*")
    assert cached.suffix == ".npy"  # written aside and renamed: no temp file left behind
    cached.write_bytes(b"")  # what a reader saw while another worker was still writing
    again = clip_features(clips, head.feature_options, cache_dir=cache)
    np.testing.assert_allclose(again, first, rtol=1e-5)
    assert np.load(cached).shape == first[0].shape


def test_ravdess_layouts_and_bad_names(tmp_path: Path) -> None:
    actor = tmp_path / "Actor_03"
    actor.mkdir()
    tone = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    sf.write(actor / "03-01-05-01-02-01-03.wav", tone, 16000)
    sf.write(actor / "03-01-02-01-01-02-03.wav", tone, 16000)
    clips = ravdess_clips(tmp_path)
    assert [(c.actor, c.emotion) for c in clips] == [(3, 1), (3, 4)]
    assert ravdess_clips(actor / "03-01-05-01-02-01-03.wav")[0].emotion == 4
    sf.write(actor / "hello.wav", tone, 16000)
    with pytest.raises(DataError, match="RAVDESS code"):
        ravdess_clips(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ravdess_clips(tmp_path / "missing")


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpeechEmotionError, match="does not exist"):
        SpeechEmotionHead.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(SpeechEmotionError, match="not a speech-emotion checkpoint"):
        SpeechEmotionHead.load(bad)


def test_the_default_head_reads_egemaps_and_the_permissive_one_does_not(
    head: SpeechEmotionHead,
) -> None:
    assert head.feature_options.egemaps and head.feature_options.layers == (1, 2)
    assert head.net.options.input_dim == 2 * 768 + 160 + 88
    permissive = SpeechEmotionHead.load(speech_head_path(AudioOptions(backend="librosa")))
    assert PERMISSIVE_CHECKPOINT.is_file()
    # written before the options existed: the last encoder layer, no eGeMAPS
    assert not permissive.feature_options.egemaps and permissive.feature_options.layers == ()
    assert permissive.net.options.input_dim == 768 + 160
    assert speech_head_path(AudioOptions()) == DEFAULT_CHECKPOINT
    samples = np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32)
    features = head.extractor.features(samples)
    assert features.shape == (1784,)
    assert np.allclose(  # the same log-mel part
        features[1536:1696], permissive.extractor.features(samples)[768:], atol=1e-5
    )


def test_speech_training_options_are_checked() -> None:
    assert not speech_feature_options(["egemaps=false"]).egemaps
    assert speech_feature_options([]).egemaps
    assert speech_feature_options(["layers=1,2"]).layers == (1, 2)
    assert speech_feature_options(["layers=1", "layers="]).layers == ()
    for bad in ("hidden=32", "layers=one", "layers=-1", "egemaps=maybe"):
        with pytest.raises(UserError, match="egemaps=true|false and layers=I,J"):
            speech_feature_options([bad])


def test_default_checkpoint_is_packaged_with_its_scores(head: SpeechEmotionHead) -> None:
    assert DEFAULT_CHECKPOINT.stat().st_size < 5_000_000
    info = head.info
    assert info["labels"] == list(RAVDESS_LABELS)
    assert "RAVDESS" in info["training_data"]
    assert info["cross_validation"]["ua_mean"] > 0.5
    assert len(info["cross_validation"]["folds"]) == 5


@pytest.mark.slow
@needs_ravdess
def test_cli_evaluates_a_directory_of_clips(run_cli, tmp_path: Path) -> None:
    clips = [c for c in ravdess_clips(RAVDESS) if c.actor == 20][:4]
    for c in clips:  # a private copy in the RAVDESS layout (tmp only, never the repository)
        (tmp_path / c.path.parent.name).mkdir(exist_ok=True)
        shutil.copy(c.path, tmp_path / c.path.parent.name / c.path.name)
    result = run_cli("evaluate-extractor", "speech", "--data", str(tmp_path))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout[result.stdout.index("{") :])
    assert scores["n"] == 4 and 0.0 <= scores["accuracy"] <= 1.0
    bad = run_cli("evaluate-extractor", "speech", "--data", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
