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

from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.config import Config

SLOW_ASR = {"model": "base", "cpu_threads": 1, "fit_window": False}
"""The default transcription profile: slower than a 4× replay on a 2-core CPU."""


class _Collector:
    """Keeps the emotion documents and the load reports of the status documents."""

    name = "collect"

    def __init__(self) -> None:
        self.finals: list[dict] = []
        self.loads: list[dict] = []

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, document: dict) -> None:
        if document.get("schema") == "erc.emotion/1" and not document["provisional"]:
            self.finals.append(document)
        elif document.get("schema") == "erc.status/1" and "load" in document:
            self.loads.append(document["load"])

    async def close(self) -> None:
        pass


@dataclass
class OverloadRun:
    finals: list[dict]
    loads: list[dict]

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


async def _replay_once(recording: Path, config: Config) -> OverloadRun:
    from realtime_erc.session import plan_replay, run_session

    collector = _Collector()
    await run_session(plan_replay(recording, config, [collector]), config)
    return OverloadRun(collector.finals, collector.loads)


def overload_config(config: Config, speed: float, shedding: bool) -> Config:
    cfg = config.model_copy(deep=True)
    cfg.output.zmq.enabled = False
    cfg.output.jsonl.path = ""
    cfg.replay.speed = speed
    cfg.load.shedding = shedding
    return cfg


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
        done = [asyncio.run(_replay_once(recording, cfg)) for _ in range(runs)]
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
