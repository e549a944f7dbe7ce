"""``realtime-erc bench replay``: latency at real-time pace and throughput at full speed.

At ``--speed realtime`` the replay delivers audio as a microphone would, so each event's
``latency_ms.total`` is end-of-speech → publish and ``total - segment`` is segment-close → publish.
Latencies are those of the final events; the provisional ones (audio/visual only, before the
transcript) get their own column. At ``--speed max`` the figure of merit is the ×real-time
factor: audio seconds per wall second.
Each mode runs ``runs`` times; the report gives medians over runs of the per-run figures.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.config import Config
from realtime_erc.sources.recording import read_recording


class CollectingPublisher:
    """Keeps every emotion document published and the status documents' load reports (in
    memory), for measurement."""

    name = "collect"

    def __init__(self) -> None:
        self.documents: list[dict] = []
        self.loads: list[dict] = []

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, document: dict) -> None:
        if document.get("schema") == "erc.emotion/1":
            self.documents.append(document)
        elif document.get("schema") == "erc.status/1" and "load" in document:
            self.loads.append(document["load"])

    async def close(self) -> None:
        pass


async def replay_once(recording: Path, config: Config) -> tuple[CollectingPublisher, float]:
    """One replay; returns what was published and the running time (model loading excluded)."""
    from realtime_erc.session import plan_replay, run_session

    collector = CollectingPublisher()
    stats = await run_session(plan_replay(recording, config, [collector]), config)
    return collector, stats.running_s


def without_outputs(config: Config) -> Config:
    """A copy of ``config`` that publishes to no ZeroMQ socket and no JSONL file."""
    return config.with_values({"output.zmq.enabled": False, "output.jsonl.path": ""})


def run_replay_benchmark(
    recording: Path, config: Config, runs: int = 3, include_realtime: bool = True
) -> BenchReport:
    duration = read_recording(recording).duration
    base = without_outputs(config)
    report = BenchReport(
        name="replay",
        title=f"Replay benchmark: {recording}",
        columns=[
            ("speed", "speed"),
            ("runs", "runs"),
            ("utterances", "utterances"),
            ("close_to_publish_p50_ms", "segment-close→publish p50 (ms)"),
            ("close_to_publish_p95_ms", "segment-close→publish p95 (ms)"),
            ("eos_to_publish_p50_ms", "end-of-speech→publish p50 (ms)"),
            ("eos_to_publish_p95_ms", "end-of-speech→publish p95 (ms)"),
            ("provisional_p50_ms", "segment-close→provisional p50 (ms)"),
            ("x_realtime", "× real time"),
        ],
        meta={
            "recording_duration_s": round(duration, 2),
            "asr_model": config.asr.model,
            "asr_device": config.asr.device,
            "hangover_ms": config.vad.hangover_ms,
        },
    )
    modes = (["realtime"] if include_realtime else []) + ["max"]
    for speed in modes:
        cfg = base.with_values({"replay.speed": speed})
        per_run = [
            (collector.documents, wall)
            for collector, wall in (asyncio.run(replay_once(recording, cfg)) for _ in range(runs))
        ]
        close, eos, early = [], [], []
        for docs, _ in per_run:
            finals = [d for d in docs if not d["provisional"]]
            totals = [d["latency_ms"]["total"] for d in finals]
            closes = [d["latency_ms"]["total"] - d["latency_ms"]["segment"] for d in finals]
            eos.append((percentile(totals, 50), percentile(totals, 95)))
            close.append((percentile(closes, 50), percentile(closes, 95)))
            provisional = [
                d["latency_ms"]["total"] - d["latency_ms"]["segment"]
                for d in docs
                if d["provisional"]
            ]
            if provisional:
                early.append(percentile(provisional, 50))
        row = {
            "speed": speed,
            "runs": runs,
            "utterances": statistics.median(
                sum(not d["provisional"] for d in docs) for docs, _ in per_run
            ),
            "x_realtime": statistics.median(duration / wall for _, wall in per_run),
        }
        if speed == "realtime":
            row |= {
                "close_to_publish_p50_ms": statistics.median(c[0] for c in close),
                "close_to_publish_p95_ms": statistics.median(c[1] for c in close),
                "eos_to_publish_p50_ms": statistics.median(e[0] for e in eos),
                "eos_to_publish_p95_ms": statistics.median(e[1] for e in eos),
                "provisional_p50_ms": statistics.median(early) if early else None,
            }
        report.rows.append(row)
    return report
