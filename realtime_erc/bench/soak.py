"""``realtime-erc bench soak``: a long session replayed at full speed, watched for leaks and drift.

1. A long recording is generated from a short one (default ``recordings/demo``): its audio,
   video and annotations looped to ``minutes``, each loop with its own gain and a silent gap of
   its own length, written with :class:`RecordingWriter` (so it follows the recording format) to
   a cache directory — never into the repository. A finished one is reused.
2. It replays at ``--speed max`` through the same pipeline as ``replay`` (:func:`plan_replay` /
   :func:`run_session`), with an in-process publisher that keeps only the few numbers measured,
   while a thread samples the process's resident memory every second.
3. Every registered model is stepped through ``cache_steps_per_horizon`` × its context horizon
   utterances by an :class:`Engine`, measuring the bytes its streaming state holds after every
   step: a bounded cache stops growing once the horizon is full.

Criteria (issue 8): RSS growth after warm-up ≤ 50 MB (median of the session's last minute −
median of the first minute after warm-up; the largest transient peak is reported beside it);
p95 latency of the last window within 20 % of the first (windows: 10 % of the session, 1 to 10
minutes); every annotated utterance emitted; every model's cache bounded by its horizon.

``--serve --sessions N`` (issue 21): instead of step 2, ``realtime-erc serve`` runs as a
subprocess and N clients (:func:`realtime_erc.client.stream_recording`) stream the long recording
to it concurrently at real-time pace; the server's process tree is sampled (RSS, CPU) and every
session's final events are pooled. The latency windows are then 5 minutes (a quarter of the
session when it is shorter than 20 minutes), the criteria the same (RSS growth after warm-up
≤ 50 MB, last window's p95 ≤ 1.2 × the first's, nothing missed) and the cache check is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.config import Config
from realtime_erc.sources.recording import (
    Annotation,
    Recording,
    RecordingWriter,
    read_recording,
)

log = logging.getLogger(__name__)

RSS_GROWTH_LIMIT_MB = 50.0
P95_RATIO_LIMIT = 1.2
WINDOW_FRACTION = 0.1
WINDOW_MAX_S = 600.0
WINDOW_MIN_S = 60.0
CACHE_SLACK_BYTES = 64 * 1024  # per-conversation bookkeeping that may appear late (masks)
_READY = ".complete"  # marks a fully written generated recording


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "realtime-erc" / "soak"


@dataclass
class SoakOptions:
    """``minutes``: length of the generated session; ``source``: the recording looped;
    ``cache_dir``: where generated recordings live; ``window_s``: latency comparison window
    (None = 10 % of the session, between 1 and 10 minutes; also the warm-up);
    ``sample_every_s``: RSS sampling period; ``cache_steps_per_horizon``: how far past its
    horizon each model is stepped (0 = skip the cache check); ``horizon_cap``: shorten long
    horizons for a quick check (None = the models' defaults); ``video``: loop the video too."""

    minutes: float = 120.0
    source: Path = Path("recordings/demo")
    cache_dir: Path = field(default_factory=default_cache_dir)
    window_s: float | None = None
    sample_every_s: float = 1.0
    cache_steps_per_horizon: int = 3
    horizon_cap: int | None = None
    video: bool = True
    seed: int = 0
    serve: bool = False
    """Stream to a ``realtime-erc serve`` subprocess from ``sessions`` concurrent clients."""
    sessions: int = 4
    stagger_s: float = 0.25
    overrides: list[str] = field(default_factory=list)
    """``--set`` settings for the server (serve mode)."""
    config_file: Path | None = None


# ---------------------------------------------------------------------------------------------
# The long recording


def make_long_recording(
    source: Path, minutes: float, cache_dir: Path, seed: int = 0, video: bool = True
) -> Path:
    """Loop ``source`` to at least ``minutes`` (whole loops) and return the recording's path.

    Loop *k* has gain ``g_k`` ∈ [0.7, 1.0] and is followed by ``gap_k`` ∈ [0.8, 2.5] s of the
    source's own background level (seeded), so utterance timing and level vary between loops.
    Utterance ids continue across loops. Reused when already generated with the same inputs.
    """
    src = read_recording(source)
    target_s = minutes * 60.0
    name = f"{src.session_id}-{minutes:g}min-seed{seed}{'' if video else '-novideo'}"
    out = cache_dir / name
    if (out / _READY).exists():
        return out
    if out.exists():
        shutil.rmtree(out)  # an interrupted earlier generation
    cache_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    audio = _read_native_audio(src)  # [n, channels] at the source's rate
    sr = src.audio_sample_rate
    noise_rms = float(np.sqrt(np.mean(audio[: sr // 2] ** 2))) if len(audio) else 0.0
    frames = list(src.iter_frames()) if video and src.has_video else []
    writer = RecordingWriter(
        out,
        f"soak-{name}",
        sample_rate=sr,
        channels=src.audio_channels,
        fps=src.fps if frames else None,
        speakers=src.speakers,
        label_set=src.label_set,
        source=f"realtime-erc bench soak: {source} looped to {minutes:g} min "
        f"(per-loop gain and gap, seed {seed}); content as in the source recording",
    )
    with writer:
        offset_s, utterance_id, loop = 0.0, 0, 0
        while offset_s < target_s:
            gain = float(rng.uniform(0.7, 1.0))
            gap_s = float(rng.uniform(0.8, 2.5))
            for start in range(0, len(audio), sr * 10):
                writer.write_audio(audio[start : start + sr * 10] * gain)
            for _, t, image in frames:
                writer.write_frame(image, offset_s + t)
            for a in src.annotations:
                writer.write_annotation(
                    Annotation(
                        utterance_id,
                        a.speaker,
                        a.start + offset_s,
                        a.end + offset_s,
                        a.text,
                        a.emotion,
                    )
                )
                utterance_id += 1
            gap = round(gap_s * sr)
            writer.write_audio(rng.normal(0, noise_rms, (gap, src.audio_channels)))
            offset_s += (len(audio) + gap) / sr
            loop += 1
    (out / _READY).write_text(json.dumps({"loops": loop, "duration_s": offset_s}) + "\n")
    log.info("generated %s: %d loops, %.0f s", out, loop, offset_s)
    return out


def _read_native_audio(rec: Recording) -> np.ndarray:
    import soundfile as sf

    data, _ = sf.read(rec.audio_path, dtype="float32", always_2d=True)
    return data


# ---------------------------------------------------------------------------------------------
# Measuring a session


class RssSampler:
    """Samples this process's resident set size every ``every_s`` seconds on a thread.
    ``samples``: ``(perf_counter, bytes)`` pairs."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        self.samples.append((time.perf_counter(), rss_bytes()))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()


def rss_bytes() -> int:
    """Resident set size of this process (psutil when installed, else /proc/self/status)."""
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("cannot read the resident set size (no psutil, no /proc)") from None
    return psutil.Process().memory_info().rss


@dataclass(frozen=True, slots=True)
class Published:
    """What is kept of one emotion document: publish time (perf_counter), the utterance's span
    on the session clock and its latency figures (ms)."""

    at: float
    start: float
    end: float
    total_ms: float
    segment_ms: float

    @property
    def close_to_publish_ms(self) -> float:
        return self.total_ms - self.segment_ms


class SoakCollector:
    """In-process publisher keeping only :class:`Published` per final emotion document (a few
    dozen bytes each, so the collector itself does not look like a leak) and a count of all
    others (status documents, provisional events)."""

    name = "soak"

    def __init__(self) -> None:
        self.emotions: list[Published] = []
        self.other_documents = 0

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, document: dict) -> None:
        self.take(document)

    def take(self, document: dict) -> None:
        if document.get("schema") != "erc.emotion/1" or document.get("provisional"):
            self.other_documents += 1  # status, and provisional events (a final one follows)
            return
        latency = document.get("latency_ms") or {}
        self.emotions.append(
            Published(
                time.perf_counter(),
                float(document["start"]),
                float(document["end"]),
                float(latency.get("total", math.nan)),
                float(latency.get("segment", 0.0)),
            )
        )

    async def close(self) -> None:
        pass


@dataclass
class SessionFigures:
    duration_s: float
    running_s: float
    window_s: float
    annotated: int
    emitted: int
    missed: int
    events: int
    rss_start_mb: float
    rss_warm_mb: float
    """Median RSS over the minute after warm-up."""
    rss_end_mb: float
    """Median RSS over the session's last minute (before its stages were closed)."""
    rss_peak_after_warmup_mb: float
    rss_slope_mb_per_h: float
    latency: dict[str, float | None]
    rss_timeline: list[tuple[float, float]]

    @property
    def growth_mb(self) -> float:
        """Sustained growth: last minute's median − first post-warm-up minute's median (the
        criterion; a one-off transient peak does not count, a leak does)."""
        return self.rss_end_mb - self.rss_warm_mb

    @property
    def growth_peak_mb(self) -> float:
        """Largest transient excursion above the warm-up level."""
        return self.rss_peak_after_warmup_mb - self.rss_warm_mb

    @property
    def p95_ratio(self) -> float | None:
        first, last = self.latency.get("first_p95_ms"), self.latency.get("last_p95_ms")
        return last / first if first and last is not None else None

    @property
    def x_realtime(self) -> float:
        return self.duration_s / self.running_s if self.running_s > 0 else math.nan


def run_soak_session(recording: Path, config: Config, options: SoakOptions) -> SessionFigures:
    """Replay ``recording`` at full speed under the RSS sampler and measure it."""
    from realtime_erc.session import plan_replay, run_session

    rec = read_recording(recording)
    cfg = config.with_values(
        {"replay.speed": "max", "output.zmq.enabled": False, "output.jsonl.path": "",
         "output.mqtt.enabled": False}
    )  # fmt: skip
    collector = SoakCollector()
    with RssSampler(options.sample_every_s) as sampler:
        stats = asyncio.run(run_session(plan_replay(recording, cfg, [collector]), cfg))
    return analyse(
        rec, collector, sampler.samples, stats.running_s, stats.finished_at, options.window_s
    )


SERVE_WINDOW_S = 300.0


def serve_window(duration_s: float) -> float:
    """The serve soak's latency window: 5 minutes, or a quarter of a shorter session."""
    return min(SERVE_WINDOW_S, duration_s / 4)


@dataclass
class ServeSoakFigures:
    """What the serve soak adds: per-session outcomes and the server's CPU."""

    sessions: int
    per_session: list[dict[str, Any]]
    shed: dict[str, int]
    errors: list[str]
    server_cpu_s: float
    server_startup_s: float


def run_serve_soak_session(
    recording: Path, options: SoakOptions
) -> tuple[SessionFigures, ServeSoakFigures]:
    """``options.sessions`` clients stream ``recording`` at real time to one server subprocess."""
    from collections import Counter

    from realtime_erc.bench.serve import ServeBenchOptions, ServerProcess, TreeSampler
    from realtime_erc.client import stream_recording

    rec = read_recording(recording)
    n = options.sessions
    bench = ServeBenchOptions(
        sessions=[n], recording=recording, overrides=list(options.overrides),
        config_file=options.config_file, sample_every_s=options.sample_every_s,
    )  # fmt: skip
    collectors = [SoakCollector() for _ in range(n)]
    statuses: list[dict[str, Any]] = [{} for _ in range(n)]
    errors: list[str] = []

    def on_document(i: int):
        def take(document: dict[str, Any]) -> None:
            if document.get("schema") == "erc.status/1" and "load" in document:
                statuses[i] = document["load"]
            collectors[i].take(document)

        return take

    async def clients(url: str) -> None:
        async def one(i: int) -> None:
            await asyncio.sleep(i * options.stagger_s)
            try:
                await stream_recording(
                    url, recording, pace="realtime", session_id=f"soak-{i}",
                    on_document=on_document(i),
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001 - reported as a failure
                errors.append(f"session {i}: {type(e).__name__}: {e}")

        await asyncio.gather(*(one(i) for i in range(n)))

    with tempfile.TemporaryDirectory(prefix="soak-serve-") as tmp:
        server = ServerProcess(bench, n, Path(tmp))
        try:
            startup = server.start()
            pid = server.proc.pid  # type: ignore[union-attr]
            with TreeSampler(lambda: [pid], options.sample_every_s) as sampler:
                began = sampler.sample()
                asyncio.run(clients(server.url))
                finished = sampler.sample()
        finally:
            server.stop()
    merged = SoakCollector()
    merged.emotions = sorted((e for c in collectors for e in c.emotions), key=lambda e: e.at)
    merged.other_documents = sum(c.other_documents for c in collectors)
    samples = [(t, rss) for t, rss, _ in sampler.samples]
    window = options.window_s if options.window_s is not None else serve_window(rec.duration)
    figures = analyse(rec, merged, samples, finished[0] - began[0], finished[0], window)
    missed = [len(missed_utterances(rec.annotations, c.emotions)) for c in collectors]
    figures = replace(
        figures, annotated=n * len(rec.annotations), emitted=len(merged.emotions),
        missed=sum(missed),
    )  # fmt: skip
    shed: Counter[str] = Counter()
    for load in statuses:
        shed.update(load.get("shed_counts") or {})
    serve = ServeSoakFigures(
        sessions=n,
        per_session=[
            {"emitted": len(c.emotions), "missed": m, "shed": s.get("shed_counts") or {}}
            for c, m, s in zip(collectors, missed, statuses, strict=True)
        ],
        shed=dict(shed),
        errors=errors,
        server_cpu_s=finished[2] - began[2],
        server_startup_s=startup,
    )
    return figures, serve


def window_for(duration_s: float, window_s: float | None = None) -> float:
    if window_s is not None:
        return window_s
    return min(WINDOW_MAX_S, max(WINDOW_MIN_S, WINDOW_FRACTION * duration_s))


def analyse(
    rec: Recording,
    collector: SoakCollector,
    samples: list[tuple[float, int]],
    running_s: float,
    finished_at: float,
    window_s: float | None = None,
) -> SessionFigures:
    """Latency per window, RSS after warm-up and at the end, utterances missed.
    ``samples``: ``(perf_counter, bytes)``; ``finished_at``: perf_counter when the pipeline
    had drained (later samples are the teardown, which frees the models)."""
    duration = rec.duration
    window = window_for(duration, window_s)
    docs = collector.emotions
    first = [d for d in docs if d.end <= window]
    last = [d for d in docs if d.end > duration - window]

    def figures(prefix: str, chosen: list[Published]) -> dict[str, float | None]:
        close = [d.close_to_publish_ms for d in chosen]
        total = [d.total_ms for d in chosen]
        return {
            f"{prefix}_n": len(chosen),
            f"{prefix}_p50_ms": percentile(close, 50),
            f"{prefix}_p95_ms": percentile(close, 95),
            f"{prefix}_eos_p95_ms": percentile(total, 95),
        }

    latency = figures("first", first) | figures("last", last)
    # Warm-up ends when the first window's audio has been processed: the first publish of an
    # utterance ending after it (models loaded, caches and allocator arenas filled).
    later = [d.at for d in docs if d.end > window]
    warm_at = min(later) if later else samples[-1][0]
    mb = [(t, r / 2**20) for t, r in samples]
    session = [(t, r) for t, r in mb if t <= finished_at] or mb
    after = [(t, r) for t, r in session if t >= warm_at] or session[-1:]
    rss_warm = float(np.median([r for t, r in after if t <= after[0][0] + 60.0]))
    end_at = session[-1][0]
    rss_end = float(np.median([r for t, r in after if t >= end_at - 60.0]))
    slope = 0.0
    if len(after) >= 10:
        ts = np.array([t for t, _ in after])
        slope = float(np.polyfit(ts - ts[0], np.array([r for _, r in after]), 1)[0]) * 3600
    t0 = mb[0][0]
    step = max(1, len(mb) // 240)  # a readable timeline in the JSON (≤ ~240 points)
    timeline = [(round(t - t0, 1), round(r, 1)) for t, r in mb[::step]]
    return SessionFigures(
        duration_s=duration,
        running_s=running_s,
        window_s=window,
        annotated=len(rec.annotations),
        emitted=len(docs),
        missed=len(missed_utterances(rec.annotations, docs)),
        events=len(docs) + collector.other_documents,
        rss_start_mb=mb[0][1],
        rss_warm_mb=rss_warm,
        rss_end_mb=rss_end,
        rss_peak_after_warmup_mb=max(r for _, r in after),
        rss_slope_mb_per_h=slope,
        latency=latency,
        rss_timeline=timeline,
    )


def missed_utterances(
    annotations: Iterable[Annotation], docs: Iterable[Published]
) -> list[Annotation]:
    """Annotated utterances that no emitted event overlaps."""
    spans = sorted((d.start, d.end) for d in docs)
    starts = np.array([s for s, _ in spans])
    ends = np.maximum.accumulate(np.array([e for _, e in spans])) if spans else np.zeros(0)
    missed = []
    for a in annotations:
        # Events starting before the annotation ends; the latest end among them must pass its start.
        k = int(np.searchsorted(starts, a.end, side="left"))
        if k == 0 or ends[k - 1] <= a.start:
            missed.append(a)
    return missed


# ---------------------------------------------------------------------------------------------
# Cache bounds


@dataclass
class CacheBound:
    model: str
    horizon: int
    steps: int
    bytes_at_horizon: int
    bytes_max: int
    bytes_end: int
    objects_at_horizon: int
    objects_max: int

    @property
    def bounded(self) -> bool:
        return (
            self.bytes_max <= self.bytes_at_horizon + CACHE_SLACK_BYTES
            and self.objects_max <= self.objects_at_horizon + 64
        )


HORIZON_FIELDS = ("horizon", "window", "past", "graph_past", "graph_window")


def model_horizon(config: Any) -> int:
    """The longest context (utterances) any of the model's caches may keep (0 = none)."""
    if not is_dataclass(config):
        return 0
    values = [getattr(config, f.name) for f in fields(config) if f.name in HORIZON_FIELDS]
    return max((int(v) for v in values if isinstance(v, int)), default=0)


def state_size(state: Any) -> tuple[int, int]:
    """``(bytes, objects)`` reachable from a streaming state: tensor storages (each counted
    once) and numpy arrays, and the number of containers/objects walked (a growing Python list
    of small things shows up there)."""
    seen: set[int] = set()
    storages: set[int] = set()
    total = 0
    objects = 0
    stack = [state]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        objects += 1
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(obj, np.ndarray):
            total += obj.nbytes
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, torch.nn.Module):
            continue  # model weights are not per-conversation state
        else:
            if hasattr(obj, "__dict__"):
                stack.extend(vars(obj).values())
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total, objects


def check_cache_bounds(
    steps_per_horizon: int = 3,
    models: Iterable[str] | None = None,
    seed: int = 0,
    horizon_cap: int | None = None,
) -> list[CacheBound]:
    """Step each registered model (default sizes, CPU) through ``steps_per_horizon`` × its
    horizon utterances of a 3-speaker synthetic conversation via :class:`Engine`.
    ``horizon_cap`` shortens a model's ``horizon`` setting (quick checks: boundedness does not
    depend on the horizon's size)."""
    from realtime_erc.bench.models import BENCH_LABELS
    from realtime_erc.engine import Engine
    from realtime_erc.models.base import FeatureDims
    from realtime_erc.models.checkpoint import build_model
    from realtime_erc.models.registry import MODELS, model_class
    from realtime_erc.models.synthetic import random_dialogue

    results = []
    dims = FeatureDims()
    for name in models or MODELS:
        torch.manual_seed(seed)
        config = model_class(name).Config()
        if horizon_cap is not None and getattr(config, "horizon", 0) > horizon_cap:
            config = replace(config, horizon=horizon_cap)
        model = build_model(name, dims, BENCH_LABELS, "meld7", config)
        engine = Engine(model, "cpu")
        horizon = model_horizon(model.config)
        steps = max(steps_per_horizon * horizon, 30)
        dialogue = random_dialogue(np.random.default_rng(seed), dims, steps, speakers=3, max_seq=4)
        at_h = (0, 0)
        peak = (0, 0)
        size = (0, 0)
        for i, utt in enumerate(dialogue, 1):
            engine.step("soak", utt)
            size = state_size(_engine_state(engine, "soak"))
            peak = (max(peak[0], size[0]), max(peak[1], size[1]))
            if i == max(horizon, 1):
                at_h = size
        results.append(
            CacheBound(name, horizon, steps, at_h[0], peak[0], size[0], at_h[1], peak[1])
        )
    return results


def _engine_state(engine: Any, session_id: str) -> Any:
    # The engine keeps per-session state privately; this check only reads it.
    return engine._states.get(session_id)


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class SoakResult:
    recording: Path
    session: SessionFigures
    caches: list[CacheBound]
    config: dict[str, Any]
    serve: ServeSoakFigures | None = None

    def failures(self) -> list[str]:
        s, out = self.session, []
        if s.growth_mb > RSS_GROWTH_LIMIT_MB:
            out.append(f"RSS grew {s.growth_mb:.1f} MB after warm-up (> {RSS_GROWTH_LIMIT_MB})")
        ratio = s.p95_ratio
        if ratio is None or ratio > P95_RATIO_LIMIT:
            out.append(f"p95 latency last/first window = {ratio} (> {P95_RATIO_LIMIT})")
        if s.missed:
            out.append(f"{s.missed} of {s.annotated} annotated utterances were not emitted")
        if self.serve is not None:
            out += self.serve.errors
        out += [
            f"{c.model}: streaming state grew past its horizon"
            for c in self.caches
            if not c.bounded
        ]
        return out

    def reports(self) -> tuple[BenchReport, BenchReport]:
        s = self.session
        lat = s.latency
        title = f"Soak: {s.duration_s / 60:.0f} min at --speed max ({self.recording.name})"
        serve: dict[str, Any] = {}
        if self.serve is not None:
            v = self.serve
            title = (
                f"Soak: {v.sessions} concurrent sessions × {s.duration_s / 60:.0f} min at "
                f"real-time pace against one `realtime-erc serve` ({self.recording.name})"
            )
            serve = {
                "sessions": v.sessions,
                "server_startup_s": round(v.server_startup_s, 1),
                "server_cpu_s": round(v.server_cpu_s, 1),
                "server_cpu_pct": round(100 * v.server_cpu_s / s.running_s, 0)
                if s.running_s > 0 else None,
                "shed": ", ".join(f"{k} {c}" for k, c in sorted(v.shed.items()) if c) or "0",
                "per_session": v.per_session,
                "rss": "the server's process tree (psutil), sampled while the clients stream",
            }  # fmt: skip
        session = BenchReport(
            name="soak-serve" if self.serve is not None else "soak",
            title=title,
            columns=[
                ("metric", "metric"),
                ("first", f"first {s.window_s / 60:.3g} min"),
                ("last", f"last {s.window_s / 60:.3g} min"),
                ("ratio", "last / first"),
            ],
            rows=[
                {"metric": "utterances", "first": lat["first_n"], "last": lat["last_n"]},
                {
                    "metric": "segment-close→publish p50 (ms)",
                    "first": lat["first_p50_ms"],
                    "last": lat["last_p50_ms"],
                    "ratio": _ratio(lat["last_p50_ms"], lat["first_p50_ms"]),
                },
                {
                    "metric": "segment-close→publish p95 (ms)",
                    "first": lat["first_p95_ms"],
                    "last": lat["last_p95_ms"],
                    "ratio": s.p95_ratio,
                },
                {
                    "metric": "end-of-speech→publish p95 (ms)",
                    "first": lat["first_eos_p95_ms"],
                    "last": lat["last_eos_p95_ms"],
                    "ratio": _ratio(lat["last_eos_p95_ms"], lat["first_eos_p95_ms"]),
                },
            ],
            meta={
                "recording_duration_s": round(s.duration_s, 1),
                "running_s": round(s.running_s, 1),
                "x_realtime": round(s.x_realtime, 2),
                "utterances_annotated": s.annotated,
                "utterances_emitted": s.emitted,
                "utterances_missed": s.missed,
                "events_published": s.events,
                "rss_start_mb": round(s.rss_start_mb, 1),
                "rss_after_warmup_mb": round(s.rss_warm_mb, 1),
                "rss_end_mb": round(s.rss_end_mb, 1),
                "rss_growth_mb": round(s.growth_mb, 1),
                "rss_peak_after_warmup_mb": round(s.rss_peak_after_warmup_mb, 1),
                "rss_transient_peak_mb": round(s.growth_peak_mb, 1),
                "rss_slope_mb_per_hour": round(s.rss_slope_mb_per_h, 2),
                "window_s": round(s.window_s, 1),
                "criteria": "; ".join(self.failures()) or "all met",
                **serve,
                **self.config,
                "latency": lat,
                "rss_timeline_s_mb": s.rss_timeline,
            },
        )
        caches = BenchReport(
            name="soak-caches",
            title="Streaming state per model after stepping past its horizon (Engine, CPU)",
            columns=[
                ("model", "model"),
                ("horizon", "horizon"),
                ("steps", "steps"),
                ("kib_at_horizon", "KiB at horizon"),
                ("kib_max", "KiB max"),
                ("kib_end", "KiB at end"),
                ("objects_at_horizon", "objects at horizon"),
                ("objects_max", "objects max"),
                ("bounded", "bounded"),
            ],
            rows=[
                {
                    "model": c.model,
                    "horizon": c.horizon,
                    "steps": c.steps,
                    "kib_at_horizon": round(c.bytes_at_horizon / 1024, 1),
                    "kib_max": round(c.bytes_max / 1024, 1),
                    "kib_end": round(c.bytes_end / 1024, 1),
                    "objects_at_horizon": c.objects_at_horizon,
                    "objects_max": c.objects_max,
                    "bounded": "yes" if c.bounded else "NO",
                }
                for c in self.caches
            ],
        )
        return session, caches

    def markdown(self) -> str:
        session, caches = self.reports()
        if not self.caches and self.serve is not None:
            return session.markdown()
        return session.markdown() + "\n" + caches.markdown()

    def write(self, directory: Path) -> list[Path]:
        session, caches = self.reports()
        directory.mkdir(parents=True, exist_ok=True)
        js, md = directory / f"{session.name}.json", directory / f"{session.name}.md"
        js.write_text(json.dumps(session.to_json() | {"caches": caches.rows}, indent=2) + "\n")
        md.write_text(self.markdown())
        return [js, md]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run_soak_benchmark(config: Config, options: SoakOptions) -> SoakResult:
    recording = make_long_recording(
        options.source, options.minutes, options.cache_dir, options.seed, options.video
    )
    if options.serve:
        load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
        session, serve = run_serve_soak_session(recording, options)
        meta = {
            "asr_model": config.asr.model,
            "asr_device": config.asr.device,
            "rss_sampled_every_s": options.sample_every_s,
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        return SoakResult(recording, session, [], meta, serve)
    session = run_soak_session(recording, config, options)
    caches = (
        check_cache_bounds(
            options.cache_steps_per_horizon, seed=options.seed, horizon_cap=options.horizon_cap
        )
        if options.cache_steps_per_horizon > 0
        else []
    )
    meta = {
        "asr_model": config.asr.model,
        "asr_device": config.asr.device,
        "speakers_enabled": config.speakers.enabled,
        "rss_sampled_every_s": options.sample_every_s,
    }
    return SoakResult(recording, session, caches, meta)
