"""``realtime-erc bench overload``: latency when compute is slower than real time, with and
without the overload policy (``realtime_erc/load.py``).

A recording is replayed faster than real time (``--speed``, default 4×) with a transcription
profile slower than that pace (default: Whisper ``base`` on one thread with the padded 30 s
window), once with ``load.shedding = true`` and once with ``false``. Per run: end-of-speech →
final-event latency (p50, p95, max), how many utterances were transcribed, the highest load level
and what was shed. The report gives medians over runs. Any ``--set`` override applies on top of
the profile.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from realtime_erc.bench.replay import replay_once, without_outputs
from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.config import Config

SLOW_ASR = {"model": "base", "cpu_threads": 1, "fit_window": False}
"""The default transcription profile: slower than a 4× replay on a 2-core CPU."""


@dataclass
class OverloadRun:
    finals: list[dict]  # the final emotion documents
    loads: list[dict]  # the status documents' load reports

    @property
    def latencies(self) -> list[float]:
        return [d["latency_ms"]["total"] for d in self.finals]

    @property
    def transcribed(self) -> int:
        return sum(1 for d in self.finals if d["text"])

    @property
    def max_level(self) -> int:
        return max((r["level"] for r in self.loads), default=0)

    @property
    def shed_counts(self) -> dict[str, int]:
        return self.loads[-1]["shed_counts"] if self.loads else {}


def _run_once(recording: Path, config: Config) -> OverloadRun:
    collector, _ = asyncio.run(replay_once(recording, config))
    finals = [d for d in collector.documents if not d["provisional"]]
    return OverloadRun(finals, collector.loads)


def overload_config(config: Config, speed: float, shedding: bool) -> Config:
    return without_outputs(config).with_values(
        {"replay.speed": str(speed), "load.shedding": shedding}
    )


def run_overload_benchmark(
    recording: Path, config: Config, speed: float = 4.0, runs: int = 3
) -> BenchReport:
    """``config`` should already carry the slow profile (see :data:`SLOW_ASR`)."""
    report = BenchReport(
        name="overload",
        title=f"Overload benchmark: {recording} at {speed:g}× real time",
        columns=[
            ("policy", "policy"),
            ("runs", "runs"),
            ("utterances", "final events"),
            ("transcribed", "transcribed"),
            ("eos_to_final_p50_ms", "end-of-speech→final p50 (ms)"),
            ("eos_to_final_p95_ms", "p95 (ms)"),
            ("eos_to_final_max_ms", "max (ms)"),
            ("max_level", "highest level"),
            ("shed", "shed (total over runs)"),
        ],
        meta={
            "speed": speed,
            "asr_model": config.asr.model,
            "asr_cpu_threads": config.asr.cpu_threads,
            "asr_fit_window": config.asr.fit_window,
            "thresholds_s": list(config.load.shed_thresholds_s),
        },
    )
    for shedding in (True, False):
        cfg = overload_config(config, speed, shedding)
        done = [_run_once(recording, cfg) for _ in range(runs)]
        shed: Counter[str] = Counter()
        for run in done:
            shed.update(run.shed_counts)
        report.rows.append(
            {
                "policy": "shedding" if shedding else "no shedding",
                "runs": runs,
                "utterances": statistics.median(len(r.finals) for r in done),
                "transcribed": statistics.median(r.transcribed for r in done),
                "eos_to_final_p50_ms": _median(percentile(r.latencies, 50) for r in done),
                "eos_to_final_p95_ms": _median(percentile(r.latencies, 95) for r in done),
                "eos_to_final_max_ms": _median(max(r.latencies, default=None) for r in done),
                "max_level": max(r.max_level for r in done),
                "shed": ", ".join(f"{k} {v}" for k, v in sorted(shed.items())) or "nothing",
                "per_run": [
                    {
                        "p50_ms": percentile(r.latencies, 50),
                        "p95_ms": percentile(r.latencies, 95),
                        "transcribed": r.transcribed,
                        "finals": len(r.finals),
                        "max_level": r.max_level,
                        "shed_counts": r.shed_counts,
                    }
                    for r in done
                ],
            }
        )
    return report


def _median(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
