"""Development sessions: the mappings, the disjointness check, and a tiny generated set.

The generated set needs the data directory (MELD, IEMOCAP, RAVDESS, FER2013) and espeak-ng: those
tests skip with the reason when either is absent. Sessions are written to a temporary directory,
never into the repository.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from realtime_erc.config import DataConfig
from realtime_erc.sources.recording import read_recording
from realtime_erc.training.dev_sessions import (
    ACTORS,
    CONDITIONS,
    FER_CLASSES,
    FER_OF_LABEL,
    HALVES,
    MELD7,
    MELD_OF_RAVDESS,
    RAVDESS_EMOTIONS,
    RECIPE_FILE,
    DevOptions,
    check_disjoint,
    generate,
    load_dev_data,
    missing_inputs,
    plan_sessions,
    provenance,
)
from realtime_erc.training.emotion_data import DataError

DATA = DataConfig().resolve()
MISSING = missing_inputs(DATA)
needs_inputs = pytest.mark.skipif(
    bool(MISSING), reason=f"dev sessions need {', '.join(MISSING)} (data: {DATA})"
)
TINY = DevOptions(max_utterances=3).limited(1)


def test_ravdess_emotions_map_onto_meld7_by_name():
    mapped = {RAVDESS_EMOTIONS[r]: MELD7[m] for r, m in MELD_OF_RAVDESS.items()}
    assert mapped == {
        "neutral": "neutral", "calm": "neutral", "happy": "joy", "sad": "sadness",
        "angry": "anger", "fearful": "fear", "disgust": "disgust", "surprised": "surprise",
    }  # fmt: skip


def test_every_label_has_a_matching_face():
    assert set(FER_OF_LABEL["meld7"]) == set(MELD7)
    assert FER_CLASSES[FER_OF_LABEL["meld7"]["joy"]] == "happy"
    assert set(FER_OF_LABEL["iemocap6"]) == {
        "happy", "sad", "neutral", "angry", "excited", "frustrated",
    }  # fmt: skip


def test_limit_caps_every_count():
    options = DevOptions().limited(2)
    assert (options.voice_sessions, options.meld_dialogues) == (2, 2)
    assert (options.iemocap_dialogues, options.mixed_dialogues) == (2, 2)
    assert DevOptions().limited(None) == DevOptions()


def _recipe(half: str, actor=None, face=None, dialogue=None) -> dict:
    turn = {"actor": actor, "face": face}
    extra = {"corpus": "meld", "dialogue": dialogue} if dialogue else {}
    return {"half": half, "turns": [turn], **extra}


def test_halves_sharing_an_actor_a_dialogue_or_a_face_are_refused():
    check_disjoint([_recipe("valid", 17, 5, "1"), _recipe("test", 19, 6, "2")])
    for shared in ({"actor": 17}, {"face": 5}, {"dialogue": "1"}):
        test = _recipe("test", **{"actor": 19, "face": 6, "dialogue": "2", **shared})
        with pytest.raises(DataError, match="share"):
            check_disjoint([_recipe("valid", 17, 5, "1"), test])


@pytest.fixture(scope="module")
def dev_data():
    if MISSING:
        pytest.skip(f"dev sessions need {', '.join(MISSING)} (data: {DATA})")
    return load_dev_data(DATA)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, list[Path]]:
    if MISSING:
        pytest.skip(f"dev sessions need {', '.join(MISSING)} (data: {DATA})")
    out = tmp_path_factory.mktemp("dev-sessions")
    return out, generate(DATA, out, TINY)


@needs_inputs
def test_plans_are_reproducible_and_a_limit_keeps_a_prefix(dev_data):
    small = plan_sessions(dev_data, TINY)
    assert [p.to_dict() for p in small] == [p.to_dict() for p in plan_sessions(dev_data, TINY)]
    larger = plan_sessions(dev_data, replace(TINY, voice_sessions=2, meld_dialogues=2))
    ids = [p.session_id for p in larger]
    assert {p.session_id for p in small} <= set(ids)
    other_seed = plan_sessions(dev_data, replace(TINY, seed=1))
    assert [p.to_dict() for p in other_seed] != [p.to_dict() for p in small]


@needs_inputs
def test_tiny_set_has_every_half_and_condition_and_reads_back(generated):
    out, written = generated
    # per half: voice 1, words 2 (MELD + IEMOCAP), words_face 2, mixed 1
    assert len(written) == 2 * (1 + 2 + 2 + 1)
    assert json.loads((out / "manifest.json").read_text())["sessions"]
    for path in written:
        half, condition = path.parent.parent.name, path.parent.name
        assert half in HALVES and condition in CONDITIONS
        recording = read_recording(path)
        assert recording.session_id == path.name
        assert f"condition {condition}, half {half}" in recording.source
        assert recording.annotations and all(a.emotion for a in recording.annotations)
        assert recording.has_video == (condition == "words_face")
        ends = [a.end for a in recording.annotations]
        assert ends == sorted(ends) and ends[-1] < recording.duration
        recipe = json.loads((path / RECIPE_FILE).read_text())
        assert (recipe["half"], recipe["condition"]) == (half, condition)
        assert recording.label_set == ("iemocap6" if "iemocap" in path.name else "meld7")
        if condition == "voice":
            speakers = {t["actor"] for t in recipe["turns"]}
            assert speakers == set(ACTORS[half])
            assert all(a.text.endswith("by the door") for a in recording.annotations)
        if condition == "words_face":
            assert "matches the utterance's with probability 0.5" in recording.source


@needs_inputs
def test_valid_and_test_are_disjoint_by_actor_dialogue_and_face(generated):
    out, written = generated
    recipes = [json.loads((p / RECIPE_FILE).read_text()) for p in written]
    check_disjoint(recipes)
    used = provenance(recipes)
    assert used["valid"]["actors"] == set(ACTORS["valid"])
    assert used["test"]["actors"] == set(ACTORS["test"])
    assert used["valid"]["dialogues"] and used["test"]["dialogues"]
    assert not used["valid"]["dialogues"] & used["test"]["dialogues"]
    assert not used["valid"]["faces"] & used["test"]["faces"]


@needs_inputs
def test_face_pools_of_the_halves_share_no_image(dev_data):
    valid = {int(r) for rows in dev_data.faces["valid"].values() for r in rows}
    test = {int(r) for rows in dev_data.faces["test"].values() for r in rows}
    assert valid and test and not valid & test
    pixels = {dev_data.fer_images[r].tobytes() for r in valid}
    assert not pixels & {dev_data.fer_images[r].tobytes() for r in test}
