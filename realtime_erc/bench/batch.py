"""``realtime-erc bench batch``: the throughput of ``realtime-erc batch``, one process against
a local process pool and Ray Data, side by side in one run.

The recordings are excerpts of one source recording (``utterances`` consecutive utterances
each, from different starting utterances, video included), written once per run. Each mode
runs the real command in a subprocess, ``repeats`` times, into a fresh output folder:

- ``one``: ``batch --workers 1`` (one process, the libraries' own thread teams);
- ``processes``: ``batch --workers W`` (a pool of W processes of one thread each);
- ``ray``: ``batch --ray --workers W`` (W Ray Data actors on a local Ray the command starts;
  inside a private network namespace when ``private_network``, since Ray's services listen on
  every interface).

Per mode: wall time and throughput (seconds of recording per second, model loading and Ray's
start included: what a user waits for), the speed-up over ``one`` (ratio of medians), CPU and
peak RSS of the command's process tree (Ray's daemons and workers included), and whether every
recording's final events equal those of ``one`` (scores within :data:`SCORE_TOLERANCE`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.bench.report import BenchReport
from realtime_erc.bench.serve import TreeSampler
from realtime_erc.errors import UserError
from realtime_erc.events import SAMPLE_RATE
from realtime_erc.ray_support import in_private_network
from realtime_erc.sources.recording import Recording, RecordingWriter, read_recording

MODES = ("one", "processes", "ray")


@dataclass(frozen=True)
class BatchBenchOptions:
    recordings: int = 20
    source: Path = Path("recordings/demo")
    utterances: int = 5
    workers: int = 2
    modes: tuple[str, ...] = MODES
    repeats: int = 3
    private_network: bool = True
    overrides: tuple[str, ...] = ()
    config_file: Path | None = None
    timeout_s: float = 3600.0


def parse_batch_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes {text!r}: choose from {', '.join(MODES)} (comma-separated)")
    return modes


# ---------------------------------------------------------------------------------------------
# The recordings


def excerpt_recording(rec: Recording, first: int, count: int, out: Path) -> Path:
    """Utterances ``first … first+count-1`` of ``rec``, from the middle of the pause before the
    first to the middle of the pause after the last (the recording's ends where there is none),
    with their video frames and annotations, written to ``out``."""
    notes = rec.annotations
    if first < 0 or count < 1 or first + count > len(notes):
        raise UserError(f"{rec.path}: no {count} utterances from utterance {first}")
    start = (notes[first - 1].end + notes[first].start) / 2 if first > 0 else 0.0
    last = first + count - 1
    end = (notes[last].end + notes[last + 1].start) / 2 if last + 1 < len(notes) else rec.duration
    audio = rec.read_audio()[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
    with RecordingWriter(
        out, f"{rec.session_id}-{first}-{last}", fps=rec.fps, speakers=rec.speakers,
        label_set=rec.label_set, source=f"{rec.source} (utterances {first}–{last})",
    ) as writer:  # fmt: skip
        writer.write_audio(audio)
        if rec.has_video:
            for _, t, image in rec.iter_frames():
                if start <= t < end:
                    writer.write_frame(image, t - start)
        for i, a in enumerate(notes[first : last + 1]):
            writer.write_annotation(replace(a, utterance_id=i, start=a.start - start,
                                            end=a.end - start))  # fmt: skip
    return out


def make_recordings(options: BatchBenchOptions, folder: Path) -> list[Path]:
    """``options.recordings`` excerpts, starting at successive utterances (cycling)."""
    rec = read_recording(options.source)
    starts = len(rec.annotations) - options.utterances + 1
    if starts < 1:
        raise UserError(
            f"{options.source} has {len(rec.annotations)} utterances: pass --utterances "
            f"≤ {len(rec.annotations)}"
        )
    return [
        excerpt_recording(rec, i % starts, options.utterances, folder / f"rec-{i:03d}")
        for i in range(options.recordings)
    ]


# ---------------------------------------------------------------------------------------------
# One run of the command


def _command(options: BatchBenchOptions, mode: str, folder: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "realtime_erc", "batch", str(folder), "--out", str(out)]
    cmd += ["--workers", "1" if mode == "one" else str(options.workers)]
    if mode == "ray":
        cmd.append("--ray")
    if options.config_file is not None:
        cmd += ["--config", str(options.config_file)]
    for item in options.overrides:
        cmd += ["--set", item]
    if mode == "ray" and options.private_network:
        cmd = in_private_network(cmd)
    return cmd


def run_once(options: BatchBenchOptions, mode: str, folder: Path, out: Path) -> dict[str, Any]:
    """The command once; its wall time, CPU, peak RSS and summary."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # the benchmark's Ray is its own
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
        started = time.perf_counter()
        proc = subprocess.Popen(
            _command(options, mode, folder, out), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        with TreeSampler(lambda: [proc.pid], every_s=0.5) as sampler:
            try:
                output, _ = proc.communicate(timeout=options.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
        wall = time.perf_counter() - started
    summary_path = out / "summary.json"
    if proc.returncode != 0 or not summary_path.exists():
        tail = "\n".join(output.splitlines()[-15:])
        raise UserError(f"batch ({mode}) exited with {proc.returncode}:\n{tail}")
    samples = sampler.samples
    return {
        "wall_s": wall,
        "cpu_s": samples[-1][2] - samples[0][2],
        "rss_peak_mb": max(s[1] for s in samples) / 2**20,
        "summary": json.loads(summary_path.read_text()),
    }


SCORE_TOLERANCE = 1e-5
"""Scores may differ by this much between runs with different thread counts: the order of a
sum's terms changes with the threads that share it (seen: 1e-6 at the sixth decimal)."""

VOLATILE = frozenset({"at", "emitted_at", "latency_ms", "load"})
"""Wall-clock fields of the stream's documents."""


def final_events(path: Path) -> list[dict[str, Any]]:
    """A stream's status documents and final events, without their wall-clock fields."""
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {k: v for k, v in d.items() if k not in VOLATILE} for d in docs if not d.get("provisional")
    ]


def same_events(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Two streams' final events and status documents agree: every field equal, the scores
    (``scores`` and each head's) within :data:`SCORE_TOLERANCE`."""

    def close(x: Any, y: Any) -> bool:
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= SCORE_TOLERANCE
        return x == y

    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))


def same_outputs(a: Path, b: Path, names: list[str]) -> bool:
    return all(
        same_events(final_events(a / n / "events.jsonl"), final_events(b / n / "events.jsonl"))
        for n in names
    )


# ---------------------------------------------------------------------------------------------
# The benchmark


COLUMNS = [
    ("mode", "mode"),
    ("workers", "workers"),
    ("recordings", "recordings"),
    ("wall_s", "wall s (median)"),
    ("x_realtime", "× real time (median)"),
    ("speedup", "throughput / one process"),
    ("cpu_s", "CPU s (median)"),
    ("rss_peak_mb", "peak RSS MB (median)"),
    ("identical", "final events = one process's"),
]


def run_batch_benchmark(options: BatchBenchOptions) -> BenchReport:
    if options.private_network and "ray" in options.modes and not shutil.which("unshare"):
        raise UserError("unshare not found (util-linux): install it, or pass --no-private-network")
    report = BenchReport(
        name="batch",
        title=f"realtime-erc batch: {options.recordings} recordings, one process vs "
        f"{options.workers} workers",
        columns=COLUMNS,
        meta={
            "source": str(options.source),
            "utterances_per_recording": options.utterances,
            "repeats": options.repeats,
            "cpus": os.cpu_count(),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "ray_private_network": options.private_network,
            "overrides": " ".join(options.overrides) or "none",
            "throughput": "seconds of recording per wall second of the whole command (model "
            "loading and Ray's start included)",
            "memory": "peak RSS of the command's process tree (Ray's daemons and workers too)",
        },
    )
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp) / "recordings"
        recordings = make_recordings(options, folder)
        names = [p.name for p in recordings]
        audio_s = sum(read_recording(p).duration for p in recordings)
        report.meta["audio_s"] = round(audio_s, 1)
        reference: Path | None = None
        for mode in options.modes:
            runs = []
            for i in range(options.repeats):
                out = Path(tmp) / f"out-{mode}-{i}"
                runs.append(run_once(options, mode, folder, out))
                failed = runs[-1]["summary"]["failed"]
                if failed:
                    raise UserError(f"batch ({mode}) failed on {failed} recordings")
            first = Path(tmp) / f"out-{mode}-0"
            reference = reference or first
            wall = float(np.median([r["wall_s"] for r in runs]))
            report.rows.append({
                "mode": mode,
                "workers": 1 if mode == "one" else options.workers,
                "recordings": len(recordings),
                "wall_s": round(wall, 1),
                "walls_s": [round(r["wall_s"], 1) for r in runs],
                "x_realtime": round(audio_s / wall, 2),
                "cpu_s": round(float(np.median([r["cpu_s"] for r in runs])), 1),
                "rss_peak_mb": round(float(np.median([r["rss_peak_mb"] for r in runs])), 0),
                "identical": "yes" if same_outputs(reference, first, names) else "NO",
            })  # fmt: skip
    base = next((r for r in report.rows if r["mode"] == "one"), None)
    for row in report.rows:
        row["speedup"] = round(base["wall_s"] / row["wall_s"], 2) if base else None
    report.meta["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return report
