"""Assembled multimodal conversations, built for real on a few MELD dialogues per split.

Needs the data directory (MELD text, RAVDESS, FER2013): skipped with the reason when absent.
Two builds into two fresh caches check determinism of both the recipe and the extractors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from feature_media import ASSEMBLED_INPUTS, ASSEMBLED_MISSING, needs_assembled_data

from realtime_erc.config import Config, DataConfig
from realtime_erc.features.dims import feature_dims
from realtime_erc.models.base import DialogueBatch
from realtime_erc.training.assembled import (
    FER_OF_MELD,
    MELD7,
    RAVDESS_OF_MELD,
    AssembledBuild,
    AssembledOptions,
    assemble,
    face_pools,
    load_assembled,
    voiced_segment,
)
from realtime_erc.training.corpus import SPLITS
from realtime_erc.training.emotion_data import DataError

DATA = DataConfig().resolve()

TINY = AssembledOptions(max_dialogues=3, train_faces_per_class=40, eval_faces_per_class=20)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[AssembledBuild, AssembledBuild, Path]:
    if not all((DATA / p).exists() for p in ASSEMBLED_INPUTS):
        pytest.skip(ASSEMBLED_MISSING)
    first_cache = tmp_path_factory.mktemp("assembled-a")
    first = assemble(DATA, first_cache, TINY)
    second = assemble(DATA, tmp_path_factory.mktemp("assembled-b"), TINY)
    return first, second, first_cache


@pytest.fixture(scope="module")
def fer() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(DATA / "fer2013" / "fer2013_train_publictest.npz") as d:
        return d["images"], d["labels"], d["usage"]


@needs_assembled_data
@pytest.mark.slow
def test_splits_are_meld_dialogues_with_their_texts_and_labels(builds) -> None:
    from realtime_erc.training.datasets import load_text_corpus

    build = builds[0]
    meld = load_text_corpus("meld", DATA)
    assert build.corpus.name == "assembled" and build.corpus.label_set == "meld7"
    assert build.corpus.labels == MELD7 == meld.labels
    for split in SPLITS:
        got, want = build.corpus.split(split), meld.split(split)[:3]
        assert [d.id for d in got] == [d.id for d in want]
        assert [(d.texts, d.labels, d.speakers) for d in got] == [
            (d.texts, d.labels, d.speakers) for d in want
        ]
    assert len(build.features.features) == 9


@needs_assembled_data
@pytest.mark.slow
def test_actors_are_disjoint_between_splits_and_one_per_speaker(builds) -> None:
    build = builds[0]
    used = {}
    for split in SPLITS:
        used[split] = set()
        for d in build.corpus.split(split):
            sources = build.recipe[d.id]
            by_speaker: dict[str, set[int]] = {}
            for speaker, src in zip(d.speakers, sources, strict=True):
                by_speaker.setdefault(speaker, set()).add(src.actor)
            assert all(len(a) == 1 for a in by_speaker.values()), by_speaker
            actors = [next(iter(a)) for a in by_speaker.values()]
            n_actors = len(TINY.actors(split))
            # distinct voices while the split has enough actors
            assert len(set(actors)) == min(len(actors), n_actors)
            assert build.actors[d.id] == {s: a.pop() for s, a in by_speaker.items()}
            used[split] |= set(actors)
        assert used[split] <= set(TINY.actors(split))
    assert not (used["train"] & used["valid"] or used["train"] & used["test"])
    assert not used["valid"] & used["test"]


@needs_assembled_data
@pytest.mark.slow
def test_each_clip_is_the_actor_speaking_the_utterance_emotion(builds) -> None:
    build = builds[0]
    for d in build.corpus.dialogues():
        for label, src in zip(d.labels, build.recipe[d.id], strict=True):
            code = Path(src.clip).stem.split("-")  # 03-01-EE-II-SS-RR-AA
            assert int(code[6]) == src.actor
            assert int(code[2]) - 1 in RAVDESS_OF_MELD[label], (src.clip, MELD7[label])
            assert (DATA / "ravdess" / src.clip).is_file()


@needs_assembled_data
@pytest.mark.slow
def test_faces_match_the_emotion_and_are_disjoint_between_splits(builds, fer) -> None:
    images, labels, usage = fer
    build = builds[0]
    rows: dict[str, set[int]] = {}
    for split in SPLITS:
        rows[split] = set()
        for d in build.corpus.split(split):
            for label, src in zip(d.labels, build.recipe[d.id], strict=True):
                assert labels[src.face] == FER_OF_MELD[label]
                rows[split].add(src.face)
    assert all(usage[r] == "Training" for r in rows["train"])
    assert all(usage[r] == "PublicTest" for r in rows["valid"] | rows["test"])
    pixels = {s: {images[r].tobytes() for r in rs} for s, rs in rows.items()}
    assert not pixels["train"] & pixels["valid"] and not pixels["train"] & pixels["test"]
    assert not pixels["valid"] & pixels["test"]


@needs_assembled_data
def test_face_pools_are_disjoint_by_pixels_and_capped(fer) -> None:
    images, labels, usage = fer
    options = AssembledOptions(train_faces_per_class=300, eval_faces_per_class=150)
    pools = face_pools(labels, usage, images, options)
    keys = {
        split: {images[r].tobytes() for rows in by_class.values() for r in rows}
        for split, by_class in pools.items()
    }
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]
    for split, by_class in pools.items():
        cap = 300 if split == "train" else 150
        for fer_class, rows in by_class.items():
            assert 0 < len(rows) <= cap and (labels[rows] == fer_class).all()
            assert images[rows].reshape(len(rows), -1).max(1).min() > 0  # no all-black image
    assert len(pools["valid"][1]) < 150  # PublicTest has 56 disgust images: halves are smaller
    again = face_pools(labels, usage, images, options)
    assert all(np.array_equal(again[s][c], pools[s][c]) for s in SPLITS for c in range(7))  # seeded


@needs_assembled_data
@pytest.mark.slow
def test_features_are_finite_pooled_vectors_of_the_live_dims(builds) -> None:
    build = builds[0]
    dims = feature_dims(Config().features)
    feats = [f for d in build.corpus.dialogues() for f in build.features.of(d)]
    assert len(feats) == sum(len(d) for d in build.corpus.dialogues())
    for f in feats:
        for name in ("text", "audio", "visual"):
            m = f.modality(name)
            assert m.pooled.shape == (dims.pooled(name),) and m.pooled.dtype == np.float32
            assert m.sequence is None and np.isfinite(m.pooled).all()
            assert m.present or not m.pooled.any()
        assert f.text.present and f.audio.present and f.end > f.start
    visual = np.mean([f.visual.present for f in feats])
    assert 0.7 < visual <= 1.0  # MediaPipe misses a few upscaled 48 px faces: absent, as live
    for split in SPLITS:
        present = [
            f.visual.present for d in build.corpus.split(split) for f in build.features.of(d)
        ]
        assert build.stats["splits"][split]["visual_present"] == round(np.mean(present), 4)
    # different emotions give different audio and faces (the cues are really there)
    a = np.stack([f.audio.pooled for f in feats])
    assert np.linalg.matrix_rank(a) > 10
    # they collate for a live-dims model, timeline ordered within each dialogue
    d = build.corpus.split("train")[0]
    batch = DialogueBatch.from_dialogues([build.features.of(d)], dims, labels=[d.labels])
    assert batch.present.shape == (len(d), 3) and batch.labels.tolist() == list(d.labels)
    starts = [f.start for f in build.features.of(d)]
    assert starts == sorted(starts)


@needs_assembled_data
@pytest.mark.slow
def test_two_builds_from_fresh_caches_are_identical(builds) -> None:
    first, second, _ = builds
    assert first.recipe == second.recipe and first.actors == second.actors
    assert first.features.extractor == second.features.extractor
    for d in first.corpus.dialogues():
        for a, b in zip(first.features.of(d), second.features.of(d), strict=True):
            np.testing.assert_array_equal(a.audio.pooled, b.audio.pooled)
            np.testing.assert_array_equal(a.visual.pooled, b.visual.pooled)
            np.testing.assert_allclose(a.text.pooled, b.text.pooled, atol=1e-5)
            assert a.present == b.present and (a.start, a.end) == (b.start, b.end)


@needs_assembled_data
@pytest.mark.slow
def test_a_rerun_reads_the_cache_and_the_recipe_is_recorded(builds) -> None:
    first, _, cache = builds
    phases: list[str] = []
    corpus, features = load_assembled(
        DATA, cache, TINY, progress=lambda phase, *_: phases.append(phase)
    )
    assert phases == []  # nothing extracted again
    d = corpus.split("test")[0]
    np.testing.assert_array_equal(
        features.of(d)[0].audio.pooled, first.features.of(d)[0].audio.pooled
    )
    recipe = json.loads(Path(first.stats["recipe"]).read_text())
    entry = recipe["dialogues"][d.id]
    assert entry["split"] == "test" and entry["actors"] == first.actors[d.id]
    assert entry["utterances"] == [[u.actor, u.clip, u.face] for u in first.recipe[d.id]]
    stats = first.stats["splits"]
    assert [stats[s]["dialogues"] for s in SPLITS] == [3, 3, 3]
    assert stats["test"]["actors"] and set(stats["test"]["actors"]) <= {17, 18, 19, 20}


def test_overlapping_actor_splits_are_refused() -> None:
    options = AssembledOptions(train_actors=(1, 2, 13), valid_actors=(13, 14))
    with pytest.raises(DataError, match="disjoint"):
        assemble(Path("/nonexistent"), Path("/nonexistent"), options)


def test_voiced_segment_keeps_the_speech_plus_pre_roll_and_tail() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [1e-4 * rng.standard_normal(sr), 0.3 * rng.standard_normal(2 * sr), np.zeros(sr)]
    ).astype(np.float32)
    seg = voiced_segment(x, 35.0, 0.2, 0.1)
    assert len(seg) == pytest.approx(2.3 * sr, abs=0.02 * sr)
    assert np.abs(seg[int(0.2 * sr) + 400 :][:sr]).max() > 0.1  # the loud part is inside
