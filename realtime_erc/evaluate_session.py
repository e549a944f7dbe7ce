"""``realtime-erc evaluate-session DIR...``: replay annotated recordings through the live
pipeline and score the stream against their ``annotations.jsonl``.

Each annotated utterance is matched to the final event that overlaps it most in time (an
annotation no event overlaps counts as missed: wrong for accuracy and F1). Reported per session:
weighted F1 and accuracy over the annotations' emotions, the same for the provisional events
(over every annotation too: one the provisional stream said nothing about is wrong, so the two
compare like for like), word error rate of the transcripts, speaker attribution (purity: events
of one annotated speaker carrying one stream id; accuracy: utterances whose stream id maps to
their speaker under the best one-to-one mapping), and latency (end-of-speech → final event,
p50/p95).

Several sessions (:func:`evaluate_sessions`): each directory holding a ``session.json`` is
replayed; its *condition* is its parent folder's name. :func:`aggregate` pools the annotated
utterances of the sessions per condition and over all of them (:func:`pooled_scores` says how
provisional and missed events count); it needs no replay. Sessions whose ``label_set`` is not the
model's are skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.bench.replay import CollectingPublisher
from realtime_erc.bench.speakers import attribution_accuracy
from realtime_erc.config import Config
from realtime_erc.errors import UserError
from realtime_erc.sources.recording import SESSION_FILE, Annotation, RecordingError, read_recording
from realtime_erc.speech.wer import word_error_rate
from realtime_erc.training.erc_metrics import weighted_f1


class SessionEvaluationError(UserError, ValueError):
    """The recording cannot be scored (no annotations with emotions)."""


@dataclass
class SessionScores:
    session_id: str
    model: str | None
    label_set: str
    annotated: int
    matched: int
    weighted_f1: float
    accuracy: float
    provisional_weighted_f1: float | None
    provisional_accuracy: float | None
    wer: float
    speaker_purity: float
    speaker_accuracy: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    per_utterance: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "per_utterance"}


def _overlap(a: Annotation, doc: dict) -> float:
    return max(0.0, min(a.end, doc["end"]) - max(a.start, doc["start"]))


def _heads_label(final: dict | None) -> str | None:
    """The label a provisional event would carry: the mean of the heads' distributions."""
    heads = (final or {}).get("heads") or {}
    if not heads:
        return None
    labels = list(next(iter(heads.values())))
    mean = {k: sum(h.get(k, 0.0) for h in heads.values()) for k in labels}
    return max(mean, key=mean.__getitem__)


def score_stream(annotations: list[Annotation], documents: list[dict]) -> SessionScores:
    """Score emotion documents (provisional and final) against annotations."""
    labelled = [a for a in annotations if a.emotion]
    if not labelled:
        raise SessionEvaluationError(
            'the recording\'s annotations carry no emotions: add an "emotion" to each line of '
            "annotations.jsonl (see RECORDING_FORMAT.md)"
        )
    finals = [d for d in documents if not d["provisional"]]
    provisional = {d["utterance_id"]: d for d in documents if d["provisional"]}
    truth, pred, early_pred, rows = [], [], [], []
    speakers: dict[str, list[str]] = {}
    for a in labelled:
        best = max(finals, key=lambda d: _overlap(a, d), default=None)
        if best is not None and _overlap(a, best) <= 0:
            best = None
        truth.append(a.emotion)
        pred.append(best["label"] if best else None)
        early = provisional.get(best["utterance_id"]) if best is not None else None
        # where the transcript beat the analysis no provisional event went out: the heads'
        # scores on the final event say what it would have said
        early_label = early["label"] if early else _heads_label(best)
        if best is not None:
            speakers.setdefault(a.speaker, []).append(best["speaker"])
        early_pred.append(early_label)
        rows.append(
            {
                "utterance_id": a.utterance_id,
                "emotion": a.emotion,
                "predicted": best["label"] if best else None,
                "provisional": early_label,
                "text": a.text,
                "transcript": best["text"] if best else None,
                "annotated_speaker": a.speaker,
                "speaker": best["speaker"] if best else None,
                "latency_ms": best["latency_ms"]["total"] if best else None,
                "scores": best.get("scores") if best else None,
                "heads": best.get("heads") if best else None,
            }
        )
    purity = sum(max(ids.count(s) for s in set(ids)) for ids in speakers.values())
    latencies = [d["latency_ms"]["total"] for d in finals]
    final_figures, early_figures = _figures(truth, pred), _provisional_figures(truth, early_pred)
    first = finals[0] if finals else {}
    return SessionScores(
        session_id=first.get("session_id", ""),
        model=first.get("model"),
        label_set=first.get("label_set", ""),
        annotated=len(labelled),
        matched=sum(p is not None for p in pred),
        weighted_f1=final_figures["weighted_f1"],
        accuracy=final_figures["accuracy"],
        provisional_weighted_f1=early_figures["weighted_f1"],
        provisional_accuracy=early_figures["accuracy"],
        wer=round(
            word_error_rate(
                " ".join(a.text for a in labelled), " ".join(d["text"] for d in finals)
            ),
            4,
        ),
        speaker_purity=round(purity / max(1, sum(len(v) for v in speakers.values())), 4),
        speaker_accuracy=round(
            attribution_accuracy(
                [r["annotated_speaker"] for r in rows], [r["speaker"] for r in rows]
            ),
            4,
        ),
        latency_p50_ms=round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        latency_p95_ms=round(float(np.percentile(latencies, 95)), 1) if latencies else None,
        per_utterance=rows,
    )


def evaluate_session(recording: Path, config: Config) -> SessionScores:
    """Replay ``recording`` with ``config`` (its ``replay.speed``) and score the stream."""
    from realtime_erc.session import plan_replay, run_session

    annotations = read_recording(recording).annotations
    if not any(a.emotion for a in annotations):
        score_stream(annotations, [])  # raises the clear error before any model loads
    collector = CollectingPublisher()
    asyncio.run(run_session(plan_replay(recording, config, [collector]), config))
    return score_stream(annotations, collector.documents)


# ----------------------------------------------------------------------------- several sessions


def find_sessions(paths: Sequence[Path]) -> list[Path]:
    """Every recording in ``paths``: a directory holding ``session.json`` is one; any other
    directory is searched recursively. In the order given, each folder's sessions sorted."""
    found: list[Path] = []
    for path in paths:
        if (path / SESSION_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob(SESSION_FILE))
        else:
            raise SessionEvaluationError(
                f"{path}: not a recording (no {SESSION_FILE}) nor a folder of recordings"
            )
    if not found:
        raise SessionEvaluationError(
            f"no recording ({SESSION_FILE}) under {', '.join(map(str, paths))}"
        )
    return list(dict.fromkeys(found))


def condition_of(recording: Path) -> str:
    """A session's condition: the name of the folder holding it."""
    return recording.resolve().parent.name


def _figures(truth: list[str], pred: list[str | None]) -> dict[str, float | None]:
    """Weighted F1 and accuracy, a None prediction wrong; both None when there is no truth."""
    if not truth:
        return {"weighted_f1": None, "accuracy": None}
    return {
        "weighted_f1": round(weighted_f1(truth, pred), 4),
        "accuracy": round(float(np.mean([t == p for t, p in zip(truth, pred, strict=True)])), 4),
    }


def _provisional_figures(truth: list[str], pred: list[str | None]) -> dict[str, float | None]:
    """:func:`_figures` of the provisional labels; None where the stream sent none at all."""
    if all(p is None for p in pred):
        return {"weighted_f1": None, "accuracy": None}
    return _figures(truth, pred)


def pooled_scores(sessions: Sequence[SessionScores]) -> dict[str, Any]:
    """The annotated utterances of ``sessions`` pooled (micro-averaged).

    ``final``: weighted F1 and accuracy of the final events over every annotated utterance (one
    no event overlaps counts as wrong). ``provisional``: the same for the provisional labels,
    also over every annotated utterance (``provisional_events`` had one; where the transcript
    beat the analysis none was sent and the heads' scores on the final event stand in), None
    when there was none. ``speaker_accuracy``: each session under its own best
    one-to-one cluster→speaker mapping, weighted by its annotated utterances.
    """
    rows = [r for s in sessions for r in s.per_utterance]
    correct_speakers = sum(s.speaker_accuracy * s.annotated for s in sessions)
    return {
        "sessions": len(sessions),
        "annotated": len(rows),
        "matched": sum(r["predicted"] is not None for r in rows),
        "final": _figures([r["emotion"] for r in rows], [r["predicted"] for r in rows]),
        "provisional_events": sum(r.get("provisional") is not None for r in rows),
        "provisional": _provisional_figures(
            [r["emotion"] for r in rows], [r.get("provisional") for r in rows]
        ),
        "speaker_accuracy": round(correct_speakers / len(rows), 4) if rows else None,
    }


def aggregate(sessions: Sequence[tuple[str, SessionScores]]) -> dict[str, Any]:
    """``(condition, scores)`` pairs → ``{"conditions": {condition: pooled}, "all": pooled}``
    (:func:`pooled_scores`; conditions in order of first appearance)."""
    groups: dict[str, list[SessionScores]] = {}
    for condition, scores in sessions:
        groups.setdefault(condition, []).append(scores)
    return {
        "conditions": {c: pooled_scores(group) for c, group in groups.items()},
        "all": pooled_scores([s for _, s in sessions]),
    }


def model_label_set(config: Config) -> str | None:
    """The configured model's label set (None without a model), loaded as a replay would."""
    from realtime_erc.session import load_engine

    engine = load_engine(config)
    return engine.label_set if engine is not None else None


@dataclass
class SessionOutcome:
    """One recording of a multi-session evaluation: scored, or skipped with the reason."""

    path: Path
    condition: str
    scores: SessionScores | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), "condition": self.condition}
        if self.scores is None:
            return {**out, "skipped": self.skipped}
        pooled = pooled_scores([self.scores])
        return {
            **out,
            **self.scores.summary(),
            "final": pooled["final"],
            "provisional": pooled["provisional"],
            "per_utterance": self.scores.per_utterance,
        }


@dataclass
class MultiSessionReport:
    model: str | None
    label_set: str | None
    outcomes: list[SessionOutcome]

    @property
    def scored(self) -> list[SessionOutcome]:
        return [o for o in self.outcomes if o.scores is not None]

    @property
    def skipped(self) -> list[SessionOutcome]:
        return [o for o in self.outcomes if o.scores is None]

    def aggregate(self) -> dict[str, Any]:
        return aggregate([(o.condition, o.scores) for o in self.scored])  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "label_set": self.label_set,
            **self.aggregate(),
            "sessions": [o.to_dict() for o in self.outcomes],
            "skipped": [{"path": str(o.path), "reason": o.skipped} for o in self.skipped],
        }


def evaluate_sessions(
    paths: Sequence[Path],
    config: Config,
    progress: Callable[[SessionOutcome, int, int], None] | None = None,
) -> MultiSessionReport:
    """Replay and score every recording under ``paths`` (:func:`find_sessions`); a recording
    with another label set than the model's, no emotions or a format error is skipped."""
    recordings = find_sessions(paths)
    label_set = model_label_set(config)
    outcomes: list[SessionOutcome] = []
    model: str | None = None
    for k, path in enumerate(recordings):
        outcome = SessionOutcome(path, condition_of(path))
        try:
            theirs = read_recording(path).label_set
            if label_set is not None and theirs is not None and theirs != label_set:
                outcome.skipped = f"label set {theirs} is not the model's ({label_set})"
            else:
                outcome.scores = evaluate_session(path, config)
                model = model or outcome.scores.model
        except (SessionEvaluationError, RecordingError) as e:
            outcome.skipped = str(e)
        outcomes.append(outcome)
        gc.collect()  # each replay loads its own models: let the last ones go before the next
        if progress is not None:
            progress(outcome, k + 1, len(recordings))
    return MultiSessionReport(model, label_set, outcomes)
