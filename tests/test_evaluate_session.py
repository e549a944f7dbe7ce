"""evaluate-session: matching annotations to events, the scores, and the command on real audio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from cli_support import DEMO

from realtime_erc.evaluate_session import SessionEvaluationError, score_stream, weighted_f1
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
    assert [r["predicted"] for r in scores.per_utterance] == ["joy", "anger", None]


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
