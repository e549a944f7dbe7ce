"""``realtime-erc batch``: many recordings through the live pipeline at full speed.

Each recording is replayed as ``replay --speed max`` replays it, with the models loaded once
per worker, not once per recording: the same final events and status documents (provisional
events, as in a replay, only for utterances whose analysis beats their transcript). Per
recording, ``OUT/<name>/events.jsonl`` is the stream (what ``replay --jsonl`` writes) and
``OUT/<name>/report.json`` what it held (utterances, the labels per speaker, processing × real
time); ``OUT/summary.json`` and ``OUT/summary.md`` list every recording, the ones that failed
with their error.

- Resumable: a recording whose ``report.json`` exists is not redone (the stream is written to
  ``events.jsonl.part`` and the report last, so an interrupted one is redone).
- A bad recording is reported in the summary and does not stop the others.
- Workers: a pool of processes here (``workers``), or Ray Data actors (``ray``) on a local or
  existing Ray cluster (:mod:`realtime_erc.batch_ray`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from realtime_erc.config import Config
from realtime_erc.errors import UserError

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.json"
SUMMARY_MD = "summary.md"


class BatchError(UserError, ValueError):
    """Nothing to analyse, or an output folder that cannot be used."""


@dataclass(frozen=True)
class BatchOptions:
    """``out``: the output folder; ``workers``: processes (or Ray actors) at once (0 = one per
    CPU); ``ray``: run on Ray Data; ``ray_address``: an existing cluster (None: ``RAY_ADDRESS``
    if set, else a local Ray)."""

    out: Path
    workers: int = 0
    ray: bool = False
    ray_address: str | None = None


@dataclass(frozen=True)
class RecordingReport:
    """What one recording gave (``error`` set: it failed and holds no figures)."""

    recording: str
    name: str
    duration_s: float = 0.0
    processing_s: float = 0.0
    utterances: int = 0
    labels_per_speaker: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    skipped: bool = False  # finished by an earlier run

    @property
    def x_realtime(self) -> float | None:
        """Seconds of recording per second of processing."""
        return self.duration_s / self.processing_s if self.processing_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("skipped")
        out["x_realtime"] = round(self.x_realtime, 2) if self.x_realtime else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordingReport:
        data = {k: v for k, v in data.items() if k != "x_realtime"}
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# What to analyse, and where it goes


def find_recordings(paths: Iterable[str | Path]) -> list[Path]:
    """Recording folders named by ``paths``: a recording itself (it holds ``session.json``), a
    folder of recordings, or a glob of either. Nothing found is a :class:`BatchError`."""
    from glob import glob

    from realtime_erc.sources.recording import SESSION_FILE

    found: list[Path] = []
    for given in paths:
        matches = sorted(glob(str(given))) or [str(given)]
        for match in map(Path, matches):
            if (match / SESSION_FILE).exists() or not match.is_dir():
                found.append(match)  # a file or broken folder fails as a recording, reported
            else:
                found.extend(sorted(p.parent for p in match.glob(f"*/{SESSION_FILE}")))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise BatchError(
            f"no recordings in {' '.join(map(str, paths))}: pass recording folders (each with "
            "session.json), a folder of them, or a glob"
        )
    return unique


def output_names(recordings: Sequence[Path]) -> list[str]:
    """One output folder name per recording: its folder's name, with a short hash of its path
    where two recordings share a name."""
    counts = Counter(p.name for p in recordings)

    def name(p: Path) -> str:
        if counts[p.name] == 1:
            return p.name
        return f"{p.name}-{hashlib.sha1(bytes(p)).hexdigest()[:8]}"

    return [name(p) for p in recordings]


def finished_report(out: Path) -> RecordingReport | None:
    """The report of a recording an earlier run finished (None: not finished)."""
    path = out / REPORT_FILE
    if not (path.exists() and (out / EVENTS_FILE).exists()):
        return None
    try:
        report = RecordingReport.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # a damaged report: redo the recording
    return RecordingReport(**{**asdict(report), "skipped": True})


# ---------------------------------------------------------------------------------------------
# One recording


def batch_config(config: Config) -> Config:
    """The configuration a batch replays with: full speed, the JSONL stream only (no sockets
    or brokers: workers would fight over them), the recordings' own session ids."""
    return config.with_values(
        {
            "replay.speed": "max",
            "session.id": "",
            "output.zmq.enabled": False,
            "output.mqtt.enabled": False,
            "broker.embedded": False,
            "output.jsonl.path": "",
        }
    )


class RecordingAnalyser:
    """Replays recordings one after another over models it loads once (a worker's state)."""

    def __init__(self, config: Config) -> None:
        from realtime_erc.session import load_models
        from realtime_erc.speech.asr import Transcriber

        self.config = batch_config(config)
        self.models = load_models(self.config)
        self.models.transcriber = Transcriber(self.config.asr)

    def analyse(self, recording: Path, out: Path) -> RecordingReport:
        """Replay ``recording`` into ``out`` (a failure is reported, not raised)."""
        started = time.perf_counter()
        try:
            return self._analyse(recording, out)
        except Exception as e:  # noqa: BLE001 - one bad recording must not stop the batch
            log.debug("%s failed: %s", recording, e)
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            return RecordingReport(
                str(recording), out.name, processing_s=time.perf_counter() - started,
                error=message,
            )  # fmt: skip

    def _analyse(self, recording: Path, out: Path) -> RecordingReport:
        from realtime_erc.session import plan_replay, run_session
        from realtime_erc.sources.recording import read_recording

        duration = read_recording(recording).duration
        out.mkdir(parents=True, exist_ok=True)
        part = out / f"{EVENTS_FILE}.part"
        part.unlink(missing_ok=True)
        config = self.config.with_values({"output.jsonl.path": str(part)})
        started = time.perf_counter()
        plan = plan_replay(recording, config, models=self.models)
        try:
            asyncio.run(run_session(plan, config))
        finally:
            if self.models.engine is not None:  # the next recording is a new conversation
                self.models.engine.end_session(plan.session_id)
        processing = time.perf_counter() - started
        part.replace(out / EVENTS_FILE)
        report = RecordingReport(
            str(recording), out.name, round(duration, 3), round(processing, 3),
            **stream_figures(out / EVENTS_FILE),
        )  # fmt: skip
        tmp = out / f"{REPORT_FILE}.part"
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        tmp.replace(out / REPORT_FILE)
        return report


def stream_figures(events: Path) -> dict[str, Any]:
    """Utterances (final events) and their labels per speaker, from a JSONL stream."""
    labels: dict[str, Counter[str]] = {}
    utterances = 0
    for line in events.read_text().splitlines():
        doc = json.loads(line)
        if doc.get("schema") != "erc.emotion/1" or doc.get("provisional"):
            continue
        utterances += 1
        speaker = str(doc.get("speaker") or "unknown")
        labels.setdefault(speaker, Counter())[str(doc.get("label"))] += 1
    return {
        "utterances": utterances,
        "labels_per_speaker": {s: dict(sorted(c.items())) for s, c in sorted(labels.items())},
    }


# ---------------------------------------------------------------------------------------------
# Local workers: a process pool


_worker: RecordingAnalyser | None = None


def _start_worker(config: Config, threads: int) -> None:
    global _worker
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # workers side by side: one thread each, no spinning teams
        torch.set_num_threads(threads)
    _worker = RecordingAnalyser(config)


def _run_in_worker(recording: str, out: str) -> RecordingReport:
    assert _worker is not None, "the pool's initializer loads the models"
    return _worker.analyse(Path(recording), Path(out))


def run_local(
    config: Config,
    todo: Sequence[tuple[Path, Path]],
    workers: int,
    on_done: Callable[[RecordingReport], None],
) -> None:
    """Analyse ``(recording, out)`` pairs on ``workers`` processes (1: in this process)."""
    if workers == 1:
        analyser = RecordingAnalyser(config)
        for recording, out in todo:
            on_done(analyser.analyse(recording, out))
        return
    # spawn: the workers load torch and the models themselves, nothing forked mid-thread
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(config, 1)
    ) as pool:
        futures = [pool.submit(_run_in_worker, str(r), str(o)) for r, o in todo]
        for future in as_completed(futures):
            on_done(future.result())


# ---------------------------------------------------------------------------------------------
# The batch


@dataclass(frozen=True)
class BatchSummary:
    """Every recording's report, in the order given, and the batch's wall time."""

    reports: list[RecordingReport]
    wall_s: float
    workers: int
    engine: str  # "processes" | "ray"

    @property
    def failed(self) -> list[RecordingReport]:
        return [r for r in self.reports if r.error]

    def to_json(self) -> dict[str, Any]:
        done = [r for r in self.reports if not r.error and not r.skipped]
        audio = sum(r.duration_s for r in done)
        return {
            "recordings": len(self.reports),
            "analysed": len(done),
            "skipped": sum(r.skipped for r in self.reports),
            "failed": len(self.failed),
            "engine": self.engine,
            "workers": self.workers,
            "wall_s": round(self.wall_s, 2),
            "audio_s": round(audio, 2),
            "x_realtime": round(audio / self.wall_s, 2) if self.wall_s > 0 and audio else None,
            "reports": [{**r.to_json(), "skipped": r.skipped} for r in self.reports],
        }

    def markdown(self) -> str:
        s = self.to_json()
        lines = [
            "# Batch analysis",
            "",
            f"{s['recordings']} recordings: {s['analysed']} analysed, {s['skipped']} finished "
            f"earlier, {s['failed']} failed; {s['workers']} workers ({self.engine}), "
            f"{s['wall_s']} s wall, {s['x_realtime'] or '–'}× real time over the batch.",
            "",
            "| recording | utterances | labels per speaker | × real time | status |",
            "|---|---|---|---|---|",
        ]
        for r in self.reports:
            speakers = "; ".join(
                f"{spk}: " + ", ".join(f"{k} {v}" for k, v in labels.items())
                for spk, labels in r.labels_per_speaker.items()
            )
            status = f"failed: {r.error}" if r.error else ("earlier run" if r.skipped else "ok")
            status = status.replace("|", "\\|").replace("\n", " ")
            xrt = f"{r.x_realtime:.1f}" if r.x_realtime and not r.error else "–"
            lines.append(
                f"| {r.name} | {r.utterances if not r.error else '–'} | {speakers or '–'} | "
                f"{xrt} | {status} |"
            )
        return "\n".join(lines) + "\n"


def run_batch(
    recordings: Sequence[str | Path],
    config: Config,
    options: BatchOptions,
    on_done: Callable[[RecordingReport], None] | None = None,
) -> BatchSummary:
    """Analyse ``recordings`` (see :func:`find_recordings`) into ``options.out``; write the
    summary there and return it. ``on_done`` sees each report as it comes in."""
    found = find_recordings(recordings)
    options.out.mkdir(parents=True, exist_ok=True)
    outs = [options.out / name for name in output_names(found)]
    reports: dict[Path, RecordingReport] = {}
    todo: list[tuple[Path, Path]] = []
    for recording, out in zip(found, outs, strict=True):
        earlier = finished_report(out)
        if earlier is not None:
            reports[out] = earlier
        else:
            todo.append((recording, out))
    workers = options.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))

    def done(report: RecordingReport) -> None:
        reports[options.out / report.name] = report
        if on_done is not None:
            on_done(report)

    for out in outs:
        if out in reports and on_done is not None:
            on_done(reports[out])
    started = time.perf_counter()
    if todo:
        if options.ray:
            from realtime_erc.batch_ray import run_on_ray

            run_on_ray(config, todo, workers, options.ray_address, done)
        else:
            run_local(config, todo, workers, done)
    summary = BatchSummary(
        [reports[o] for o in outs], time.perf_counter() - started, workers,
        "ray" if options.ray else "processes",
    )  # fmt: skip
    (options.out / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    (options.out / SUMMARY_MD).write_text(summary.markdown())
    return summary
