"""``realtime-erc evaluate-session DIR``: replay an annotated recording through the live pipeline
and score the stream against its ``annotations.jsonl``.

Each annotated utterance is matched to the final event that overlaps it most in time (an
annotation no event overlaps counts as missed: wrong for accuracy and F1). Reported: weighted F1
and accuracy over the annotations' emotions, the same for the provisional events where they
exist, word error rate of the transcripts, speaker attribution (events of one annotated
speaker carrying one stream id), and latency (end-of-speech → final event, p50/p95).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.bench.replay import CollectingPublisher
from realtime_erc.config import Config
from realtime_erc.sources.recording import Annotation, read_recording
from realtime_erc.speech.wer import word_error_rate


class SessionEvaluationError(ValueError):
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
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    per_utterance: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "per_utterance"}


def weighted_f1(truth: list[str], pred: list[str | None]) -> float:
    """F1 per true class, weighted by its support (``None`` predictions are always wrong)."""
    classes = sorted(set(truth))
    total, n = 0.0, len(truth)
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(truth, pred, strict=True))
        fn = sum(t == c and p != c for t, p in zip(truth, pred, strict=True))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        total += f1 * sum(t == c for t in truth)
    return total / n if n else 0.0


def _overlap(a: Annotation, doc: dict) -> float:
    return max(0.0, min(a.end, doc["end"]) - max(a.start, doc["start"]))


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
    truth, pred, early_truth, early_pred, rows = [], [], [], [], []
    speakers: dict[str, list[str]] = {}
    for a in labelled:
        best = max(finals, key=lambda d: _overlap(a, d), default=None)
        if best is not None and _overlap(a, best) <= 0:
            best = None
        truth.append(a.emotion)
        pred.append(best["label"] if best else None)
        if best is not None:
            speakers.setdefault(a.speaker, []).append(best["speaker"])
            early = provisional.get(best["utterance_id"])
            if early is not None:
                early_truth.append(a.emotion)
                early_pred.append(early["label"])
        rows.append(
            {
                "utterance_id": a.utterance_id,
                "emotion": a.emotion,
                "predicted": best["label"] if best else None,
                "text": a.text,
                "transcript": best["text"] if best else None,
                "speaker": best["speaker"] if best else None,
                "latency_ms": best["latency_ms"]["total"] if best else None,
            }
        )
    purity = sum(max(ids.count(s) for s in set(ids)) for ids in speakers.values())
    latencies = [d["latency_ms"]["total"] for d in finals]
    first = finals[0] if finals else {}
    return SessionScores(
        session_id=first.get("session_id", ""),
        model=first.get("model"),
        label_set=first.get("label_set", ""),
        annotated=len(labelled),
        matched=sum(p is not None for p in pred),
        weighted_f1=round(weighted_f1(truth, pred), 4),
        accuracy=round(float(np.mean([t == p for t, p in zip(truth, pred, strict=True)])), 4),
        provisional_weighted_f1=round(weighted_f1(early_truth, early_pred), 4)
        if early_truth
        else None,
        provisional_accuracy=round(
            float(np.mean([t == p for t, p in zip(early_truth, early_pred, strict=True)])), 4
        )
        if early_truth
        else None,
        wer=round(
            word_error_rate(
                " ".join(a.text for a in labelled), " ".join(d["text"] for d in finals)
            ),
            4,
        ),
        speaker_purity=round(purity / max(1, sum(len(v) for v in speakers.values())), 4),
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
