"""The ``recluster`` speaker method and its projection, on synthetic embeddings (no audio)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from realtime_erc.bench.speakers import attribution_accuracy
from realtime_erc.config import ConfigError, load_config
from realtime_erc.speech.speakers import (
    EMBEDDING_DIM,
    Reclusterer,
    SpeakerOptions,
    SpeakerProjection,
    SpeakerTracker,
)

RNG_SEED = 7


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def voices(n_speakers: int, per: int, noise: float, seed: int = RNG_SEED):
    """``per`` noisy unit vectors around each of ``n_speakers`` random centres, shuffled."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_speakers, EMBEDDING_DIM)))
    truth = np.repeat(np.arange(n_speakers), per)
    rng.shuffle(truth)
    x = unit(centres[truth] + noise * rng.standard_normal((len(truth), EMBEDDING_DIM)))
    return [f"A{t}" for t in truth], x


def test_separated_voices_get_one_stable_name_each() -> None:
    truth, x = voices(3, 12, noise=0.05)
    rc = Reclusterer(threshold=0.5, max_speakers=8)
    got = [rc.step(v).speaker for v in x]
    assert attribution_accuracy(truth, got) == 1.0
    assert sorted(set(got)) == ["S1", "S2", "S3"] and got[0] == "S1"
    assert rc.labels == rc.emitted == got  # nothing needed re-assigning
    assert [s.name for s in rc.speakers()] == ["S1", "S2", "S3"]
    assert sorted(s.count for s in rc.speakers()) == [12, 12, 12]


def test_an_early_mistake_is_reassigned_and_names_stay_put() -> None:
    """B's first utterance sounds like A and is emitted as A's; once B's own cluster exists the
    partition moves it there (its emitted label stays), and A keeps its name throughout."""
    e = np.eye(EMBEDDING_DIM)
    a, b = e[0], unit(e[0] + 2.5 * e[1])  # 1 - cos(a, b) ≈ 0.63
    b_like_a = unit(e[0] + e[1])  # 0.29 from A: within reach while A is the only speaker
    rc = Reclusterer(threshold=0.35, max_speakers=4)
    first = [rc.step(v).speaker for v in (a, a, b_like_a)]
    assert first == ["S1", "S1", "S1"]
    later = [rc.step(v).speaker for v in (b, b, b, a, b)]
    assert later == ["S2", "S2", "S2", "S1", "S2"]
    assert rc.emitted[2] == "S1" and rc.labels[2] == "S2"  # re-assigned, not re-emitted
    assert rc.labels[:2] == ["S1", "S1"]


def test_max_speakers_caps_the_names() -> None:
    truth, x = voices(4, 5, noise=0.02)
    rc = Reclusterer(threshold=0.3, max_speakers=2)
    got = {rc.step(v).speaker for v in x}
    assert got == {"S1", "S2"} and len(rc.speakers()) == 2 and rc.names == ["S1", "S2"]


def test_enrolled_voice_keeps_its_name_and_cluster() -> None:
    e = np.eye(EMBEDDING_DIM)
    rc = Reclusterer(threshold=0.3, max_speakers=4)
    rc.add_anchor("Ben", e[0])
    near_ben, other = unit(e[0] + 0.2 * e[2]), e[1]
    results = [rc.step(v) for v in (near_ben, other, near_ben, other)]
    assert [r.speaker for r in results] == ["Ben", "S1", "Ben", "S1"]
    assert results[0].distance is not None and results[0].distance < 0.05 and not results[0].new
    assert results[1].new and results[1].distance is None
    speakers = rc.speakers()
    assert [(s.name, s.enrolled, s.count) for s in speakers] == [
        ("Ben", True, 3),
        ("S1", False, 2),
    ]


def test_window_bounds_the_state_and_labels_are_deterministic() -> None:
    truth, x = voices(3, 20, noise=0.3)
    runs = []
    for _ in range(2):
        rc = Reclusterer(threshold=0.6, max_speakers=8, window=25)
        runs.append([rc.step(v).speaker for v in x])
        assert len(rc.vectors) == len(rc.labels) == len(rc.emitted) == 25
    assert runs[0] == runs[1]


def test_step_cost_stays_small_at_200_utterances() -> None:
    """Live budget: the clustering of one utterance well under 50 ms with 200 in the session."""
    _, x = voices(4, 50, noise=0.6)
    rc = Reclusterer(threshold=0.3, max_speakers=8)
    times = []
    for v in x:
        t0 = time.perf_counter()
        rc.step(v)
        times.append(time.perf_counter() - t0)
    assert len(rc.vectors) == 200
    assert float(np.median(times[-50:])) < 0.05, times[-50:]


def test_projection_removes_the_shared_emotion_direction() -> None:
    """Speakers = random centres; each utterance moves along one of two directions shared by all
    speakers (its "emotion"). The fitted basis spans them, and after projection one speaker's
    two emotions are closer than two speakers with the same emotion."""
    rng = np.random.default_rng(RNG_SEED)
    centres = unit(rng.standard_normal((6, EMBEDDING_DIM)))
    moves = unit(rng.standard_normal((2, EMBEDDING_DIM)))
    spk = np.repeat(np.arange(6), 20)
    emo = np.tile(np.repeat([0, 1], 10), 6)
    x = unit(
        centres[spk] + 1.5 * moves[emo] + 0.01 * rng.standard_normal((len(spk), EMBEDDING_DIM))
    )
    p = SpeakerProjection.fit(x, spk, emo, rank=2)
    assert p.basis.shape == (EMBEDDING_DIM, 2)
    assert np.allclose(p.basis.T @ p.basis, np.eye(2), atol=1e-6)
    d = moves[1] - moves[0]
    assert np.linalg.norm(p.basis.T @ unit(d)) > 0.95  # the emotion contrast is removed
    y = p.apply(x)
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0)
    same_speaker = 1 - y[spk == 0][emo[spk == 0] == 0][0] @ y[spk == 0][emo[spk == 0] == 1][0]
    same_emotion = 1 - y[(spk == 0) & (emo == 0)][0] @ y[(spk == 1) & (emo == 0)][0]
    assert same_speaker < 0.1 < same_emotion
    raw_same_speaker = 1 - x[(spk == 0) & (emo == 0)][0] @ x[(spk == 0) & (emo == 1)][0]
    assert raw_same_speaker > 0.5  # before: emotion moved the voice more than speakers differ


def test_projection_saves_and_loads(tmp_path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = unit(rng.standard_normal((40, EMBEDDING_DIM)))
    p = SpeakerProjection.fit(x, np.repeat(np.arange(4), 10), None, rank=3, meta={"why": "test"})
    p.save(tmp_path / "p.pt")
    q = SpeakerProjection.load(tmp_path / "p.pt")
    assert q.meta == {"rank": 3, "kind": "pca", "why": "test"}
    assert np.allclose(p.apply(x), q.apply(x), atol=1e-5)
    assert np.allclose(SpeakerProjection.identity().apply(x), x)
    # apply = remove, then subtract the removed mean and normalise
    y = q.remove(x) - q.remove(q.mean)
    assert np.allclose(q.apply(x), y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(q.remove(x) @ q.basis, 0.0, atol=1e-6)


def test_tracker_uses_the_given_projection_and_lists_speakers() -> None:
    truth, x = voices(2, 6, noise=0.05)
    options = SpeakerOptions(threshold=0.5)
    tracker = SpeakerTracker(options, SpeakerProjection.identity())
    assert tracker.speakers == []
    got = [tracker.assign_embedding(v.astype(np.float32)).speaker for v in x]
    assert attribution_accuracy(truth, got) == 1.0
    assert [s.count for s in tracker.speakers] == [6, 6]


def test_packaged_projection_loads() -> None:
    tracker = SpeakerTracker()
    v = unit(np.random.default_rng(RNG_SEED).standard_normal(EMBEDDING_DIM))
    assert tracker.assign_embedding(v).speaker == "S1"
    assert tracker._projection is not None and tracker._projection.basis.shape[1] >= 1


def test_speakers_section_keeps_defaults_for_missing_keys(tmp_path) -> None:
    old = tmp_path / "old.toml"  # a configuration written before the clustering keys existed
    old.write_text("[speakers]\nthreshold = 0.25\nmax_speakers = 4\nmin_speech_s = 0.3\n")
    options = load_config(old).speakers
    assert (options.method, options.projection, options.centre, options.threshold) == (
        "recluster",
        "default",
        False,
        0.25,
    )
    assert (options.window, options.restarts) == (200, 4)
    new = load_config(
        old, ["speakers.method=online", "speakers.projection=none", "speakers.centre=true"]
    ).speakers
    assert (new.method, new.projection, new.centre) == ("online", "none", True)
    assert SpeakerTracker(new).options is new
    with pytest.raises(ConfigError, match=r"speakers\.window"):
        load_config(overrides=["speakers.window=0"])


def test_centring_subtracts_the_given_mean() -> None:
    """Two voices sharing a large common part are one speaker as given, two once it is removed."""
    e = np.eye(EMBEDDING_DIM)
    common = 3 * e[5]
    a, b = common + e[0], common + e[1]  # 1 - cos ≈ 0.1 as given, 1 once centred
    plain = Reclusterer(threshold=0.3, max_speakers=4)
    assert [plain.step(v).speaker for v in (a, b)] == ["S1", "S1"]
    centred = Reclusterer(threshold=0.3, max_speakers=4, centre=common)
    assert [centred.step(v).speaker for v in (a, b, a)] == ["S1", "S2", "S1"]
    assert np.allclose(centred.speakers()[0].centroid, e[0])
