"""``realtime-erc bench speakers``: speaker-attributed utterance accuracy on an assembled session.

A multi-speaker "session" is assembled at run time from RAVDESS (the data directory, never
committed): ``actors`` actors, ``utterances`` clips in random order (balanced over actors, mixed
emotions). The tracker attributes them one by one, as live; accuracy counts utterances whose
cluster maps to their true actor under the best one-to-one mapping of clusters to actors
(Hungarian), so extra clusters count as errors.
"""

from __future__ import annotations

import csv
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_erc.bench.report import BenchReport
from realtime_erc.speech.speakers import SpeakerOptions, SpeakerTracker, read_audio


class DataMissingError(FileNotFoundError):
    """The dataset directory lacks what a benchmark needs; the message says how to point to it."""


@dataclass(frozen=True)
class AssembledUtterance:
    actor: str
    path: Path
    samples: np.ndarray


def ravdess_rows(data_dir: Path) -> list[dict[str, str]]:
    index = data_dir / "ravdess" / "index.csv"
    if not index.is_file():
        raise DataMissingError(
            f"{index} not found: pass --data PATH (or set REALTIME_ERC_DATA / data.dir) to the "
            "directory holding ravdess/"
        )
    with index.open() as f:
        return list(csv.DictReader(f))


def assemble_session(
    data_dir: Path, actors: int = 4, utterances: int = 40, seed: int = 0
) -> list[AssembledUtterance]:
    """``utterances`` RAVDESS clips of ``actors`` random actors, shuffled (read at run time)."""
    rows = ravdess_rows(data_dir)
    rng = random.Random(seed)
    by_actor: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_actor.setdefault(row["actor"], []).append(row)
    chosen = rng.sample(sorted(by_actor), actors)
    picks = []
    for k, actor in enumerate(chosen):
        n = utterances // actors + (1 if k < utterances % actors else 0)
        picks += [(actor, r) for r in rng.sample(by_actor[actor], n)]
    rng.shuffle(picks)
    return [
        AssembledUtterance(
            a, data_dir / "ravdess" / r["path"], read_audio(data_dir / "ravdess" / r["path"])
        )
        for a, r in picks
    ]


def attribution_accuracy(truth: list[str], predicted: list[str | None]) -> float:
    """Fraction of utterances whose predicted cluster maps to the true speaker under the best
    one-to-one cluster→speaker mapping (unattributed = wrong)."""
    from scipy.optimize import linear_sum_assignment

    speakers = sorted(set(truth))
    clusters = sorted({p for p in predicted if p is not None})
    if not clusters:
        return 0.0
    counts = np.zeros((len(clusters), len(speakers)))
    for t, p in zip(truth, predicted, strict=True):
        if p is not None:
            counts[clusters.index(p), speakers.index(t)] += 1
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(truth))


def embed_session(session: list[AssembledUtterance]) -> list[np.ndarray | None]:
    """Each utterance's voice embedding (computed once, clustered under every setting)."""
    tracker = SpeakerTracker()
    tracker.load()
    return [tracker.embed(u.samples) for u in session]


def cluster_session(
    session: list[AssembledUtterance], embeddings: list[np.ndarray | None], options: SpeakerOptions
) -> dict:
    """Online clustering in session order; accuracy under the best cluster→actor mapping."""
    tracker = SpeakerTracker(options)
    predicted = [None if e is None else tracker.assign_embedding(e).speaker for e in embeddings]
    truth = [u.actor for u in session]
    return {
        "accuracy": attribution_accuracy(truth, predicted),
        "clusters": len({p for p in predicted if p}),
        "speakers": len(set(truth)),
    }


def run_speakers_benchmark(
    data_dir: Path,
    actors: int = 4,
    utterances: int = 40,
    seeds: int = 5,
    thresholds: tuple[float, ...] = (0.2, 0.25, 0.3, 0.35, 0.4),
    max_speakers: int = 8,
) -> BenchReport:
    """Median accuracy over ``seeds`` assembled sessions, per threshold; plus the same with
    ``max_speakers = actors`` (the number of speakers known in advance)."""
    sessions = [assemble_session(data_dir, actors, utterances, seed) for seed in range(seeds)]
    embedded = [embed_session(s) for s in sessions]
    report = BenchReport(
        name="speakers",
        title=f"Speaker attribution: {actors} RAVDESS actors, {utterances} utterances, "
        f"{seeds} random sessions",
        columns=[
            ("threshold", "threshold (cos dist)"),
            ("max_speakers", "max speakers"),
            ("accuracy_median", "accuracy median"),
            ("accuracy_min", "accuracy min"),
            ("accuracy_max", "accuracy max"),
            ("clusters_median", "clusters (median)"),
        ],
        meta={"data": "RAVDESS actors (assembled at run time)", "actors": actors},
    )
    for max_spk in (max_speakers, actors):
        for threshold in thresholds:
            options = SpeakerOptions(threshold=threshold, max_speakers=max_spk)
            results = [
                cluster_session(s, e, options) for s, e in zip(sessions, embedded, strict=True)
            ]
            acc = [r["accuracy"] for r in results]
            report.rows.append(
                {
                    "threshold": threshold,
                    "max_speakers": max_spk,
                    "accuracy_median": statistics.median(acc),
                    "accuracy_min": min(acc),
                    "accuracy_max": max(acc),
                    "clusters_median": statistics.median(r["clusters"] for r in results),
                }
            )
    return report
