"""Cross-fitted head scores: no head scores a clip or a voice it was fitted on; the assembled
corpus with ``head_scores`` carries them at the live dims. Data tests skip without the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from feature_media import needs_assembled_data

from realtime_erc.config import DataConfig, FeaturesConfig
from realtime_erc.features.dims import feature_dims
from realtime_erc.features.head_scores import HEAD_CLASSES
from realtime_erc.training.corpus import SPLITS
from realtime_erc.training.emotion_data import DataError, ravdess_clips
from realtime_erc.training.head_crossfit import SpeechScores, crossfit_groups

DATA = DataConfig().resolve()


def test_training_actors_fall_into_near_equal_groups():
    assert crossfit_groups((5, 1, 2, 3, 4), 2) == [(1, 2, 3), (4, 5)]
    assert crossfit_groups(tuple(range(1, 13)), 3) == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]
    for folds in (1, 6):
        with pytest.raises(DataError, match="folds over the training actors"):
            crossfit_groups((1, 2, 3, 4, 5), folds)


def test_the_packaged_heads_recipe_names_the_scores_head_the_assembled_model_was_built_with(
    tmp_path: Path,
):
    # the packaged head's extra training voices (plain, speed copies) are not the cross-fitted
    # heads' recipe: adding them to the packaged head must not rename the scores head
    from realtime_erc.features.head_scores import scores_head_path
    from realtime_erc.training.assembled import AssembledOptions

    options = AssembledOptions(head_scores=True)
    scores = SpeechScores(
        tmp_path, options.train_actors, options.valid_actors + options.test_actors,
        options.crossfit_folds,
    )  # fmt: skip
    assert scores.train_options.speed_factors  # the packaged head has them
    assert scores.identity == "speech-head-crossfit3-d3be04f6e7cd"
    assert scores_head_path(scores.identity).is_file()


@needs_assembled_data
@pytest.mark.slow
def test_no_head_scores_an_actor_it_was_fitted_on():
    root = DATA / "ravdess"
    scores = SpeechScores(root, (1, 2, 3), (4,), folds=3)
    assert [scored for scored, _ in scores.plan] == [(1,), (2,), (3,), (4,)]
    for scored, fitted in scores.plan:
        assert not set(scored) & set(fitted) and set(fitted) <= {1, 2, 3}
    probs = scores.compute()
    clips = {c.path.relative_to(root).as_posix(): c for c in ravdess_clips(root)}
    assert set(probs) == {k for k, c in clips.items() if c.actor in (1, 2, 3, 4)}
    p = np.stack(list(probs.values()))
    assert p.shape == (len(probs), 8) and np.allclose(p.sum(1), 1, atol=1e-5)
    held = [k for k in probs if clips[k].actor == 4]
    accuracy = np.mean([probs[k].argmax() == clips[k].emotion for k in held])
    assert accuracy > 0.25  # two training voices, 8 classes: chance is 0.125


@needs_assembled_data
@pytest.mark.slow
def test_assembled_head_scores_are_log_probabilities_at_the_live_dims(tmp_path: Path):
    from realtime_erc.training.assembled import AssembledOptions, assemble

    options = AssembledOptions(
        max_dialogues=2, train_faces_per_class=20, eval_faces_per_class=10, head_scores=True,
        train_actors=(1, 2, 3), valid_actors=(4,), test_actors=(5,),
    )  # fmt: skip
    build = assemble(DATA, tmp_path, options)
    assert build.features.extractor["heads"] == "scores"
    assert "+speech-head-crossfit3-" in build.features.extractor["audio"]
    dims = feature_dims(FeaturesConfig(heads="scores"))
    with np.load(DATA / "fer2013" / "fer2013_train_publictest.npz") as d:
        usage = d["usage"]
    faces = {}
    for split in SPLITS:
        faces[split] = {u.face for d in build.corpus.split(split) for u in build.recipe[d.id]}
        assert {str(usage[r]) for r in faces[split]} == {"PublicTest"}  # unseen by the face head
        for d in build.corpus.split(split):
            for f in build.features.of(d):
                assert f.audio.pooled.shape == (dims.audio,)
                assert f.visual.pooled.shape == (dims.visual,)
                for m in (f.audio, f.visual):
                    n = HEAD_CLASSES["audio" if m is f.audio else "visual"]
                    tail = m.pooled[-n:]
                    if m.present:  # log-probabilities (clipped at 1e-4)
                        assert abs(np.exp(tail).sum() - 1) < 1e-3 and (tail <= 0).all()
                    else:
                        assert not tail.any()
    assert not faces["train"] & faces["valid"] and not faces["valid"] & faces["test"]
    assert not faces["train"] & faces["test"]
