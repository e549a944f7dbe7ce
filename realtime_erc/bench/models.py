"""``realtime-erc bench models``: per-utterance ``step`` latency of every registered model at
several conversation lengths, beside the cost of re-running the full causal forward pass over the
conversation so far for each new utterance (what research code does).

For each model, device and length ``L``: fresh conversations are stepped up to ``L`` and the last
``min(steps, L)`` steps are timed (repeating conversations until ``steps`` samples exist), after a
warm-up conversation. A step's time includes turning the utterance into tensors — the whole cost
a live session pays. The full forward pass is timed on an already collated batch of the first
``L`` utterances (collation excluded, which favours recompute), median of ``forward_repeats``.
Every figure is measured ``runs`` times; the report gives the median over runs.
Models use their default (production) sizes and ``FeatureDims()`` defaults; the dialogue is
synthetic (3 speakers, random missing modalities).

Targets (issue 5): median step ≤ 5 ms on the CPU at length 1000; step(1000) / step(10) ≤ 1.5.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.engine import pick_device
from realtime_erc.models.base import DialogueBatch, ERCModel, FeatureDims
from realtime_erc.models.checkpoint import build_model
from realtime_erc.models.registry import MODELS
from realtime_erc.models.synthetic import random_dialogue

log = logging.getLogger(__name__)

BENCH_LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
STEP_TARGET_MS = 5.0
RATIO_TARGET = 1.5


@dataclass
class ModelBenchOptions:
    """``models``: registry names (None = all); ``devices``: "cpu", "cuda" (None = the CPU, plus
    CUDA when available); ``threads``: torch CPU threads (None = torch's default); ``runs``:
    repetitions of every measurement (the report gives medians over runs)."""

    models: Sequence[str] | None = None
    lengths: Sequence[int] = (10, 100, 1000)
    steps: int = 20
    forward_repeats: int = 3
    runs: int = 3
    devices: Sequence[str] | None = None
    threads: int | None = None
    seed: int = 0
    dims: FeatureDims = field(default_factory=FeatureDims)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    model: ERCModel, dialogue, length: int, steps: int, cpu_times: list[float] | None = None
) -> list[float]:
    """Wall-clock milliseconds of the last ``min(steps, length)`` steps of conversations of
    ``length`` utterances, over as many fresh conversations as needed for ``steps`` samples.
    ``cpu_times`` (if given) receives the same steps' CPU time of this thread: on a busy machine
    it shows the work itself, without the time the thread waited for a core."""
    device = model.device
    window = min(steps, length)
    times: list[float] = []
    with torch.inference_mode():
        while len(times) < steps:
            state = model.init_state()
            for i, utt in enumerate(dialogue[:length]):
                if i < length - window:
                    model.step(state, utt)
                    continue
                _sync(device)
                c0, t0 = time.thread_time(), time.perf_counter()
                logits, state = model.step(state, utt)
                _sync(device)
                times.append((time.perf_counter() - t0) * 1e3)
                if cpu_times is not None:
                    cpu_times.append((time.thread_time() - c0) * 1e3)
    return times[:steps]


def time_forward(model: ERCModel, dialogue, length: int, dims: FeatureDims, repeats: int) -> float:
    """Median milliseconds of one causal forward pass over the first ``length`` utterances."""
    batch = DialogueBatch.from_dialogues([dialogue[:length]], dims).to(model.device)
    times = []
    with torch.inference_mode():
        model(batch, causal=True)  # warm-up
        for _ in range(repeats):
            _sync(model.device)
            t0 = time.perf_counter()
            model(batch, causal=True)
            _sync(model.device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_models_benchmark(options: ModelBenchOptions | None = None) -> BenchReport:
    opts = options or ModelBenchOptions()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    names = list(opts.models) if opts.models else list(MODELS)
    devices = list(opts.devices) if opts.devices else ["cpu"]
    if opts.devices is None and pick_device("auto").type == "cuda":
        devices.append("cuda")
    lengths = sorted(set(opts.lengths))
    dialogue = random_dialogue(
        np.random.default_rng(opts.seed), opts.dims, max(lengths), speakers=3, p_missing=0.2
    )
    report = BenchReport(
        name="models",
        title="Model step latency vs full recompute",
        columns=[
            ("model", "model"),
            ("device", "device"),
            ("length", "conversation length"),
            ("step_p50_ms", "step p50 (ms)"),
            ("step_p95_ms", "step p95 (ms)"),
            ("step_cpu_p50_ms", "step CPU time p50 (ms)"),
            ("forward_ms", "full forward (ms)"),
            ("speedup", "speed-up vs recompute"),
            ("step_ratio", f"step(L)/step({lengths[0]})"),
        ],
        meta={
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps_timed": opts.steps,
            "runs": opts.runs,
            "feature_dims": opts.dims.to_dict(),
            "targets": f"CPU step p50 ≤ {STEP_TARGET_MS} ms at the longest length; "
            f"step({lengths[-1]})/step({lengths[0]}) ≤ {RATIO_TARGET}",
            "forward": "causal forward over the conversation so far, collation excluded",
        },
    )
    summary, skipped = [], {}
    for name in names:
        for dev in devices:
            device = pick_device(dev)
            try:
                torch.manual_seed(opts.seed)
                model = build_model(name, opts.dims, BENCH_LABELS, "bench7").to(device).eval()
            except (ImportError, AttributeError) as e:
                skipped[name] = f"not importable: {e}"
                log.warning("skipping %s: %s", name, e)
                break
            time_steps(model, dialogue, min(lengths[0], 10), 10)  # warm-up
            rows = []
            for length in lengths:
                p50s, p95s, cpu50s, forwards = [], [], [], []
                for _ in range(opts.runs):
                    cpu: list[float] = []
                    steps = time_steps(model, dialogue, length, opts.steps, cpu)
                    cpu50s.append(percentile(cpu, 50))
                    p50s.append(percentile(steps, 50))
                    p95s.append(percentile(steps, 95))
                    forwards.append(
                        time_forward(model, dialogue, length, opts.dims, opts.forward_repeats)
                    )
                p50, forward = statistics.median(p50s), statistics.median(forwards)
                rows.append(
                    {
                        "model": name,
                        "device": device.type,
                        "length": length,
                        "step_p50_ms": p50,
                        "step_p95_ms": statistics.median(p95s),
                        "step_cpu_p50_ms": statistics.median(cpu50s),
                        "forward_ms": forward,
                        "speedup": forward / p50 if p50 else None,
                    }
                )
                log.info("%s %s L=%d step %.2f ms forward %.1f ms", name, dev, length, p50, forward)
            for row in rows:
                row["step_ratio"] = row["step_p50_ms"] / rows[0]["step_p50_ms"]
            report.rows.extend(rows)
            last = rows[-1]
            summary.append(
                {
                    "model": name,
                    "device": device.type,
                    "step_p50_ms_at_longest": last["step_p50_ms"],
                    "step_ratio": last["step_ratio"],
                    "speedup": {str(r["length"]): r["speedup"] for r in rows},
                    "meets_targets": last["step_p50_ms"] <= STEP_TARGET_MS
                    and last["step_ratio"] <= RATIO_TARGET,
                }
            )
    report.meta["summary"] = summary
    if skipped:
        report.meta["skipped"] = skipped
    return report
