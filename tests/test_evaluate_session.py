"""evaluate-session: matching annotations to events, the scores, and the command on real audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_support import DEMO

from realtime_erc.config import Config, DataConfig
from realtime_erc.evaluate_session import (
    SessionEvaluationError,
    aggregate,
    condition_of,
    evaluate_sessions,
    find_sessions,
    pooled_scores,
    score_stream,
    weighted_f1,
)
from realtime_erc.sources.recording import Annotation, read_recording


def doc(uid: int, start: float, end: float, label: str, provisional=False, speaker="S1") -> dict:
    return {"utterance_id": uid, "start": start, "end": end, "label": label, "text": "hi there",
            "speaker": speaker, "provisional": provisional, "session_id": "s", "model": "m",
            "label_set": "meld7", "latency_ms": {"total": 500.0 + uid}}  # fmt: skip


def test_weighted_f1_weights_each_class_by_its_support():
    assert weighted_f1(["joy", "joy", "anger"], ["joy", "joy", "anger"]) == 1.0
    # joy: P=1 R=0.5 F1=2/3 (support 2); anger: P=0.5 R=1 F1=2/3 (support 1)
    assert weighted_f1(["joy", "joy", "anger"], ["joy", "anger", "anger"]) == pytest.approx(2 / 3)
    assert weighted_f1(["joy"], [None]) == 0.0


def test_annotations_are_matched_by_overlap_and_missing_ones_count_as_wrong():
    anns = [Annotation(0, "A", 0.0, 2.0, "hi there", "joy"),
            Annotation(1, "B", 3.0, 5.0, "hi there", "anger"),
            Annotation(2, "A", 8.0, 9.0, "hi there", "neutral")]  # fmt: skip
    docs = [doc(0, 0.1, 1.9, "sadness", provisional=True), doc(0, 0.1, 1.9, "joy"),
            doc(1, 3.2, 4.8, "anger", speaker="S2")]  # fmt: skip
    scores = score_stream(anns, docs)
    assert (scores.annotated, scores.matched) == (3, 2)
    assert scores.accuracy == pytest.approx(2 / 3, abs=1e-4)
    assert scores.provisional_accuracy == 0.0  # the one provisional event said sadness
    assert scores.speaker_purity == 1.0 and scores.latency_p50_ms == pytest.approx(500.5)
    assert scores.speaker_accuracy == pytest.approx(2 / 3, abs=1e-4)  # the missed one is wrong
    assert [r["predicted"] for r in scores.per_utterance] == ["joy", "anger", None]
    assert [r["provisional"] for r in scores.per_utterance] == ["sadness", None, None]


def _two_conditions() -> list[tuple[str, object]]:
    """Two tiny scored sessions (synthetic annotations and events) in two conditions."""
    voice = score_stream(
        [Annotation(0, "A", 0.0, 2.0, "hi", "joy"), Annotation(1, "B", 3.0, 5.0, "hi", "anger"),
         Annotation(2, "A", 6.0, 8.0, "hi", "joy")],
        [doc(0, 0.1, 1.9, "sadness", True), doc(0, 0.1, 1.9, "joy"),
         doc(1, 3.1, 4.9, "anger", True, "S2"), doc(1, 3.1, 4.9, "anger", speaker="S2"),
         doc(2, 6.1, 7.9, "joy", True), doc(2, 6.1, 7.9, "anger")],
    )  # fmt: skip
    words = score_stream(  # b2 is missed; only b1 has a provisional event
        [Annotation(0, "A", 0.0, 2.0, "hi", "neutral"),
         Annotation(1, "B", 3.0, 5.0, "hi", "neutral"),
         Annotation(2, "A", 6.0, 8.0, "hi", "sadness")],
        [doc(0, 0.1, 1.9, "neutral"), doc(1, 3.1, 4.9, "neutral", True),
         doc(1, 3.1, 4.9, "sadness")],
    )  # fmt: skip
    return [("voice", voice), ("words", words)]


def test_sessions_are_pooled_per_condition_and_overall_provisional_and_final_apart():
    result = aggregate(_two_conditions())
    voice, words, both = result["conditions"]["voice"], result["conditions"]["words"], result["all"]
    assert list(result["conditions"]) == ["voice", "words"]
    # voice: final joy/anger/anger for joy/anger/joy: joy F1 2/3 (support 2), anger F1 2/3
    assert voice["final"] == {"weighted_f1": pytest.approx(2 / 3, abs=1e-4),
                              "accuracy": pytest.approx(2 / 3, abs=1e-4)}  # fmt: skip
    # provisional sadness/anger/joy: joy F1 2/3 (x2), anger 1 → 7/9
    assert voice["provisional"]["weighted_f1"] == pytest.approx(7 / 9, abs=1e-4)
    assert voice["provisional_events"] == 3 and voice["speaker_accuracy"] == 1.0
    # words: final neutral/sadness/missed for neutral/neutral/sadness: neutral F1 2/3 (x2) → 4/9
    assert words["final"]["weighted_f1"] == pytest.approx(4 / 9, abs=1e-4)
    assert words["final"]["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert words["matched"] == 2 and words["provisional_events"] == 1
    # provisional -/neutral/- (the missed one and the silent one wrong): neutral F1 2/3 (x2)
    assert words["provisional"] == {"weighted_f1": pytest.approx(4 / 9, abs=1e-4),
                                    "accuracy": pytest.approx(1 / 3, abs=1e-4)}  # fmt: skip
    # one cluster (S1) for A and B, one utterance missed: 1 of 3 attributed right
    assert words["speaker_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    # all 6 pooled: final right 3/6; joy 2/3 (x2), anger 2/3, neutral 2/3 (x2), sadness 0 → 5/9
    assert (both["sessions"], both["annotated"], both["matched"]) == (2, 6, 5)
    assert both["final"]["accuracy"] == 0.5
    assert both["final"]["weighted_f1"] == pytest.approx(5 / 9, abs=1e-4)
    # 4 provisional events over 6 utterances, 3 right; joy 2/3 (x2), anger 1, neutral 2/3 (x2),
    # sadness 0 → 11/18
    assert both["provisional_events"] == 4
    assert both["provisional"]["accuracy"] == 0.5
    assert both["provisional"]["weighted_f1"] == pytest.approx(11 / 18, abs=1e-4)
    assert both["speaker_accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # (3 + 1) / 6


def test_a_missed_utterance_is_wrong_for_the_provisional_figures_as_for_the_final_ones():
    anns = [Annotation(0, "A", 0.0, 2.0, "hi", "joy"), Annotation(1, "A", 3.0, 5.0, "hi", "anger")]
    docs = [doc(0, 0.1, 1.9, "joy", provisional=True), doc(0, 0.1, 1.9, "joy")]
    scores = score_stream(anns, docs)
    assert (scores.accuracy, scores.provisional_accuracy) == (0.5, 0.5)
    assert scores.provisional_weighted_f1 == scores.weighted_f1 == 0.5  # joy 1, anger 0


def test_a_group_without_provisional_events_has_no_provisional_figures():
    scores = score_stream([Annotation(0, "A", 0.0, 2.0, "hi", "joy")], [doc(0, 0.1, 1.9, "joy")])
    pooled = pooled_scores([scores])
    assert pooled["provisional"] == {"weighted_f1": None, "accuracy": None}
    assert pooled["final"] == {"weighted_f1": 1.0, "accuracy": 1.0}
    assert pooled_scores([])["final"] == {"weighted_f1": None, "accuracy": None}


def _tiny_recording(path: Path, label_set: str | None) -> Path:
    path.mkdir(parents=True)
    sf.write(path / "audio.flac", np.zeros(8_000, np.float32), 16_000)
    meta = {"format": "realtime-erc.recording/1", "session_id": path.name,
            "audio": {"file": "audio.flac"}, "label_set": label_set}  # fmt: skip
    (path / "session.json").write_text(json.dumps(meta))
    return path


def test_sessions_are_found_recursively_and_named_by_their_folder(tmp_path: Path):
    a = _tiny_recording(tmp_path / "dev" / "voice" / "s1", "meld7")
    b = _tiny_recording(tmp_path / "dev" / "words" / "s2", "meld7")
    assert find_sessions([tmp_path / "dev"]) == [a, b]
    assert find_sessions([b, tmp_path / "dev"]) == [b, a]  # each once
    assert [condition_of(p) for p in (a, b)] == ["voice", "words"]
    with pytest.raises(SessionEvaluationError, match="not a recording"):
        find_sessions([tmp_path / "dev" / "voice" / "s1" / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SessionEvaluationError, match="no recording"):
        find_sessions([tmp_path / "empty"])


def test_sessions_of_another_label_set_are_skipped_with_the_reason(tmp_path: Path):
    _tiny_recording(tmp_path / "words" / "iemocap-1", "iemocap6")
    report = evaluate_sessions([tmp_path], Config())  # the default model: meld7
    assert report.label_set == "meld7" and not report.scored
    assert report.skipped[0].skipped == "label set iemocap6 is not the model's (meld7)"
    assert report.to_dict()["skipped"][0]["reason"].startswith("label set iemocap6")


def test_annotations_without_emotions_are_refused_clearly():
    with pytest.raises(SessionEvaluationError, match='add an "emotion"'):
        score_stream([Annotation(0, "A", 0.0, 1.0, "hi", None)], [])


@pytest.mark.slow
def test_the_command_scores_a_replayed_recording(tmp_path: Path, run_cli):
    demo = read_recording(DEMO)
    seconds = 8.0
    sf.write(tmp_path / "audio.flac", demo.read_audio()[: int(seconds * 16_000)], 16_000)
    (tmp_path / "session.json").write_text(json.dumps(
        {"format": "realtime-erc.recording/1", "session_id": "short",
         "audio": {"file": "audio.flac"}}))  # fmt: skip
    kept = [a for a in demo.annotations if a.end < seconds]
    (tmp_path / "annotations.jsonl").write_text(
        "".join(json.dumps(a.to_dict()) + "\n" for a in kept)
    )
    out = tmp_path / "scores.json"
    result = run_cli("evaluate-session", str(tmp_path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    assert scores["annotated"] == len(kept) == 2 and scores["matched"] == 2
    assert 0.0 <= scores["weighted_f1"] <= 1.0 and scores["wer"] < 0.35
    assert scores["model"] and scores["latency_p50_ms"] > 0
    assert [r["emotion"] for r in scores["per_utterance"]] == [a.emotion for a in kept]


@pytest.mark.slow
def test_the_command_scores_generated_sessions_per_condition(tmp_path: Path, run_cli):
    from realtime_erc.training.dev_sessions import DevOptions, generate, missing_inputs

    data = DataConfig().resolve()
    if missing := missing_inputs(data):
        pytest.skip(f"dev sessions need {', '.join(missing)} (data: {data})")
    options = DevOptions(
        max_utterances=3, halves=("valid",), conditions=("voice", "words"), iemocap_dialogues=1
    ).limited(1)
    generate(data, tmp_path / "dev", options)  # voice: 1; words: 1 MELD (meld7) + 1 IEMOCAP
    out = tmp_path / "scores.json"
    result = run_cli("evaluate-session", str(tmp_path / "dev" / "valid"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "speaker acc" in result.stdout and "label set iemocap6" in result.stdout
    scores = json.loads(out.read_text())
    assert scores["label_set"] == "meld7" and scores["model"]
    assert list(scores["conditions"]) == ["voice", "words"]
    for figures in (*scores["conditions"].values(), scores["all"]):
        assert figures["annotated"] >= 2 and 0.0 <= figures["final"]["accuracy"] <= 1.0
        assert 0.0 <= figures["speaker_accuracy"] <= 1.0
    assert scores["all"]["annotated"] == sum(c["annotated"] for c in scores["conditions"].values())
    assert [s["reason"] for s in scores["skipped"]] == [
        "label set iemocap6 is not the model's (meld7)"
    ]
    scored = [s for s in scores["sessions"] if "skipped" not in s]
    assert {s["condition"] for s in scored} == {"voice", "words"}
    assert all(s["per_utterance"] and "final" in s for s in scored)
