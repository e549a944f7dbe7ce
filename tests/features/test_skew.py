"""No training/serving skew: a session made of clips and faces whose corpus features are known is
replayed through the real pipeline, and what the model receives live is compared with what the
assembled corpus computes for the same clips and images (``realtime_erc/training/skew.py``).

Tolerances (per group; ``rel`` = ‖live − corpus‖ / ‖corpus‖ per utterance):

- ``visual`` and ``face`` (MediaPipe vector, face-head scores): exact up to float rounding
  (rel ≤ 1e-5). The session's video is lossless; the live path (video running mode, several
  frames pooled, the crop of the middle one) gives the corpus's image-mode result on one
  rendered frame. An ``mp4v`` recording (``run --record``, ``dev_sessions``) instead differs by
  rel ≈ 0.09 (the codec, not the pipeline).
- ``audio`` (eGeMAPS functionals): rel median ≤ 0.08, max ≤ 0.25. Not exact: the live cut is
  the VAD's (Silero onset − pre-roll … last speech window + tail), the corpus's the energy span
  of the clip, and openSMILE's formant functionals depend on where the 10 ms frames fall: the
  *same* clip cut a few samples later already differs by rel 0.03 median, 0.34 at worst
  (measured on 24 clips), and the live cut's phase is arbitrary.
- ``speech`` (the speech head's log-probabilities): rel median ≤ 0.3, arg-max agreeing on ≥ 55 %
  of the turns. Not exact: live, each speaker is standardised with *running* statistics of the
  utterances heard so far (causal), the corpus over all of the actor's clips; the head reads
  the VAD's cut, not the whole clip; attribution may split an actor. Exact where it can be:
  the live head is the corpus's (same network: rel ≤ 1e-5 on the corpus's standardisation of
  the whole clip), and recomputing the live scores offline from the run's own segments and
  speakers reproduces them (no hidden difference).
- ``final`` (the model's probabilities, live against the same model on the corpus features with
  the live transcripts): the same label on ≥ 90 % of the utterances, rel median ≤ 0.05.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from realtime_erc.config import DataConfig, FeaturesConfig
from realtime_erc.events import SegmentAnalysis, SpeechSegment
from realtime_erc.features.head_scores import (
    HEAD_CLASSES,
    scores_head_path,
    scores_speech_head,
    speech_head_identity,
)
from realtime_erc.features.speech_emotion import RAVDESS_LABELS, SpeechFeatureOptions
from realtime_erc.models.presets import get_preset

DATA = DataConfig().resolve()
INPUTS = ("ravdess/index.csv", "fer2013/fer2013_train_publictest.npz")
needs_data = pytest.mark.skipif(
    not all((DATA / p).exists() for p in INPUTS),
    reason=f"the skew session is made of RAVDESS clips and FER2013 faces: {', '.join(INPUTS)} "
    f"not found under {DATA} (set REALTIME_ERC_DATA to the data directory)",
)

AUDIO_REL_MEDIAN, AUDIO_REL_MAX = 0.08, 0.25
SPEECH_REL_MEDIAN, SPEECH_AGREE = 0.3, 0.55
EXACT = 1e-5
FINAL_AGREE, FINAL_REL_MEDIAN = 0.9, 0.05


def _assembled_audio_provenance() -> str:
    import torch

    state = torch.load(get_preset("assembled").path, map_location="cpu", weights_only=False)
    return state["provenance"]["features"]["audio"]


def test_the_head_that_scored_a_corpus_is_named_by_the_checkpoint():
    audio = "egemaps-pooled-min-60dB-voiced35dB-pre0.2-tail0.1+speech-head-crossfit3-d3be04f6e7cd"
    assert speech_head_identity(audio) == "speech-head-crossfit3-d3be04f6e7cd"
    assert speech_head_identity("egemaps-pooled-min-60dB") is None
    assert speech_head_identity(None) is None
    path = scores_head_path("speech-head-crossfit3-d3be04f6e7cd")
    assert path.name == "speech_emotion_crossfit3_d3be04f6e7cd.pt"
    assert scores_speech_head("egemaps+speech-head-crossfit3-000000000000") is None  # not packaged


def test_the_assembled_model_gets_the_scores_of_its_corpus_head():
    from realtime_erc.config import load_config
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.pipeline import find_stage
    from realtime_erc.session import build_stages

    audio = _assembled_audio_provenance()
    head = scores_speech_head(audio)
    assert head is not None and head.info["identity"] == speech_head_identity(audio)
    assert head.labels == RAVDESS_LABELS and head.info["fitted_on"] == list(range(1, 13))
    off = ["output.zmq.enabled=false", "output.mqtt.enabled=false", "speakers.enabled=false",
           "model.checkpoint=assembled"]  # fmt: skip
    analysis = find_stage(build_stages(load_config(overrides=off), "t"), AnalysisStage)
    assert analysis.config.heads == "scores"
    assert analysis.scores_speech_head is not None and analysis.speech_head is not None
    assert analysis.scores_speech_head.info["identity"] == head.info["identity"]
    assert "identity" not in analysis.speech_head.info  # events keep the packaged head


class _FakeHead:
    """A speech head answering a fixed distribution; counts feature extractions."""

    def __init__(self, probs: list[float], options: SpeechFeatureOptions, calls: list) -> None:
        self.probs = np.array(probs, np.float32)
        self.labels = RAVDESS_LABELS
        self.feature_options = options
        self.seen: list[tuple[np.ndarray, str]] = []
        self.extractor = SimpleNamespace(features=lambda x: calls.append(len(x)) or np.ones(3))

    def predict_raw(self, raw: np.ndarray, speaker: str = "", update: bool = True) -> np.ndarray:
        self.seen.append((raw, speaker))
        return self.probs


@pytest.mark.parametrize("same_features", [True, False])
def test_the_model_gets_the_scores_head_and_events_the_speech_head(same_features: bool):
    from realtime_erc.features.analysis import AnalysisStage

    calls: list[int] = []
    events = _FakeHead([1 / 8] * 8, SpeechFeatureOptions(), calls)
    other = SpeechFeatureOptions(
        threads=4 if same_features else 1, trim_db=35 + (not same_features)
    )
    model = _FakeHead([0.9] + [0.1 / 7] * 7, other, calls)
    config = FeaturesConfig(heads="scores").with_values({"visual.enabled": False})
    stage = AnalysisStage(config, speech_head=events, scores_speech_head=model)
    samples = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    seg = SpeechSegment(0, 0.0, 1.0, samples, 0.0, 0.0, audio_start=0.0)
    analysis = asyncio.run(stage.analyze(seg))
    assert isinstance(analysis, SegmentAnalysis)
    assert np.allclose(list(analysis.head_scores["audio"].values()), events.probs)  # events
    n = HEAD_CLASSES["audio"]
    assert np.allclose(analysis.audio.pooled[-n:], np.log(model.probs), atol=1e-6)  # the model
    assert len(calls) == (1 if same_features else 2)  # one extraction when the features agree


# ----------------------------------------------------------------------------- with the data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from realtime_erc.training.skew import SkewOptions, measure_skew

    return measure_skew(DATA, tmp_path_factory.mktemp("skew"), SkewOptions(turns=12))


@needs_data
@pytest.mark.slow
def test_every_turn_is_one_live_utterance(report):
    assert (report.matched, report.split, report.missed) == (len(report.turns), 0, 0)
    assert all(row["present"]["audio"] == [True, True] for row in report.per_utterance)


@needs_data
@pytest.mark.slow
def test_faces_match_the_corpus_exactly(report):
    for name in ("visual", "face"):
        stats = report.groups[name]
        assert stats.n == len(report.turns) - sum(not c.visual_present for c in report.corpus), (
            f"{name}: a face found on one side only"
        )
        assert stats.rel_max <= EXACT, (name, stats)
    assert report.groups["face"].argmax_agree == 1.0


@needs_data
@pytest.mark.slow
def test_audio_functionals_match_within_the_phase_tolerance(report):
    stats = report.groups["audio"]
    assert stats.rel_median <= AUDIO_REL_MEDIAN and stats.rel_max <= AUDIO_REL_MAX, stats


@needs_data
@pytest.mark.slow
def test_speech_scores_come_from_the_corpus_head_and_differ_only_causally(report):
    from realtime_erc.training.skew import speech_breakdown

    stats = report.groups["speech"]
    assert stats.rel_median <= SPEECH_REL_MEDIAN and stats.argmax_agree >= SPEECH_AGREE, stats
    parts = speech_breakdown(DATA, report)
    assert parts["live head, actor stats, clip"].rel_max <= EXACT  # the corpus's network
    live, replica = parts["live"], parts["replica"]
    assert abs(replica.rel_max - live.rel_max) <= EXACT  # nothing but stats, cut, speakers
    assert abs(replica.rel_median - live.rel_median) <= EXACT


@needs_data
@pytest.mark.slow
def test_a_causal_corpus_is_closer_to_live(report):
    """Training on running standardisation (``speech_norm = "running"``) removes most of the
    remaining speech skew: what retraining would buy."""
    from realtime_erc.training.skew import (
        compare,
        corpus_steps,
        engine_of,
        running_speech_scores,
    )

    causal = running_speech_scores(DATA, report.turns)
    n = HEAD_CLASSES["audio"]
    corpus = [
        replace(c, audio=np.concatenate([c.audio[:-n], np.log(np.clip(p, 1e-4, 1))]))
        for c, p in zip(report.corpus, causal, strict=True)
    ]
    scores = corpus_steps(engine_of(report.stages), report.live, report.turns, corpus)
    closer = compare(report.turns, report.live, corpus, scores).groups["speech"]
    assert closer.rel_median < report.groups["speech"].rel_median
    assert closer.argmax_agree >= report.groups["speech"].argmax_agree


@needs_data
@pytest.mark.slow
def test_the_model_answers_live_as_on_the_corpus_features(report):
    stats = report.groups["final"]
    assert stats.argmax_agree >= FINAL_AGREE and stats.rel_median <= FINAL_REL_MEDIAN, stats


# ----------------------------------------------------------------------------- training to match


def test_a_causal_assembled_corpus_is_its_own_dataset_variant():
    from realtime_erc.training.assembled import AssembledOptions
    from realtime_erc.training.emotion_data import DataError
    from realtime_erc.training.erc_trainer import resolve_data

    request = resolve_data("assembled+heads+causal")
    assert request.causal and request.heads and request.name == "assembled+heads+causal"
    assert not resolve_data("assembled+heads").causal
    with pytest.raises(DataError, match="needs \\+heads"):
        resolve_data("assembled+causal")
    # the default recipe (and every cache key and checkpoint made from it) is unchanged
    assert "speech_norm" not in AssembledOptions(head_scores=True).recipe_dict()
    assert AssembledOptions(head_scores=True, speech_norm="running").recipe_dict()["speech_norm"]


@needs_data
@pytest.mark.slow
def test_causal_corpus_scores_are_what_the_live_head_gives():
    """A corpus built with ``speech_norm = "running"`` scores a dialogue exactly as the live
    pipeline's head does, given the same audio and speakers: the packaged corpus head, its
    running normaliser fresh, fed the dialogue's clips in order."""
    from realtime_erc.training.emotion_data import ravdess_clips
    from realtime_erc.training.skew import SkewTurn, running_speech_scores
    from realtime_erc.training.speech_trainer import clip_features

    root = DATA / "ravdess"
    clips = [c for c in ravdess_clips(root) if c.actor in (19, 20)][::7][:8]
    turns = [
        SkewTurn("AB"[c.actor - 19], c.actor, c.path.relative_to(root).as_posix(), c.emotion, 0)
        for c in clips
    ]
    corpus = running_speech_scores(DATA, turns)
    head = scores_speech_head(_assembled_audio_provenance())
    raw = clip_features(clips, head.feature_options)
    live = [head.predict_raw(x, t.speaker) for x, t in zip(raw, turns, strict=True)]
    assert np.allclose(np.stack(corpus), np.stack(live), atol=1e-5)


@needs_data
@pytest.mark.slow
@pytest.mark.skipif(
    not (DATA / "erc_text" / "meld.pkl").exists(), reason=f"MELD not found under {DATA}"
)
def test_a_causal_assembled_corpus_appends_each_utterances_running_scores(tmp_path):
    from realtime_erc.features.dims import feature_dims
    from realtime_erc.training.assembled import AssembledOptions, assemble
    from realtime_erc.training.head_crossfit import SpeechScores

    options = AssembledOptions(
        max_dialogues=2, train_faces_per_class=20, eval_faces_per_class=10, head_scores=True,
        train_actors=(1, 2, 3), valid_actors=(4,), test_actors=(5,), speech_norm="running",
    )  # fmt: skip
    build = assemble(DATA, tmp_path, options)
    assert build.features.extractor["speech_norm"] == "running"
    scores = SpeechScores(DATA / "ravdess", (1, 2, 3), (4, 5), folds=3)
    sources = build.recipe
    dialogues = [
        (d.id, d.speakers, [u.actor for u in sources[d.id]], [u.clip for u in sources[d.id]])
        for d in build.corpus.dialogues()
    ]
    expected = scores.running_scores(dialogues)
    n, dims = HEAD_CLASSES["audio"], feature_dims(FeaturesConfig(heads="scores"))
    for d in build.corpus.dialogues():
        for j, f in enumerate(build.features.of(d)):
            assert f.audio.pooled.shape == (dims.audio,)
            if f.audio.present:
                want = np.log(np.clip(expected[d.id][j], 1e-4, 1))
                assert np.allclose(f.audio.pooled[-n:], want, atol=1e-5)
