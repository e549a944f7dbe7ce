"""``bench soak``: the generated long recording, the measurements, and a short real soak."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from realtime_erc.bench.soak import (
    RSS_GROWTH_LIMIT_MB,
    CacheBound,
    Published,
    SoakOptions,
    make_long_recording,
    missed_utterances,
    model_horizon,
    rss_bytes,
    run_soak_benchmark,
    state_size,
)
from realtime_erc.config import load_config
from realtime_erc.conversation.context import RingCache
from realtime_erc.models.bigfusion import BigFusionConfig
from realtime_erc.models.dfgcn import DFGCNConfig
from realtime_erc.sources.recording import Annotation, read_recording


def test_long_recording_loops_the_source_and_follows_the_format(demo_dir, tmp_path):
    demo = read_recording(demo_dir)
    path = make_long_recording(demo_dir, 2.0, tmp_path)
    rec = read_recording(path)  # validates the whole format
    loops = len(rec.annotations) // len(demo.annotations)
    assert loops == 2 and len(rec.annotations) == loops * len(demo.annotations)
    assert 120.0 <= rec.duration < 120.0 + demo.duration + 2.6
    assert [a.utterance_id for a in rec.annotations] == list(range(len(rec.annotations)))
    # Loop 2's utterances are loop 1's, shifted by one loop plus its gap (0.8..2.5 s).
    shift = rec.annotations[len(demo.annotations)].start - demo.annotations[0].start
    assert demo.duration + 0.8 <= shift <= demo.duration + 2.5
    assert rec.annotations[len(demo.annotations)].text == demo.annotations[0].text
    assert rec.has_video and len(rec.frame_times) == 2 * len(demo.frame_times)
    assert rec.frame_times[len(demo.frame_times)] == pytest.approx(shift, abs=1e-5)
    # A finished generation is reused, not rewritten.
    mtime = (path / "audio.flac").stat().st_mtime_ns
    assert make_long_recording(demo_dir, 2.0, tmp_path) == path
    assert (path / "audio.flac").stat().st_mtime_ns == mtime


def test_missed_utterances_are_the_ones_no_event_overlaps():
    annotations = [Annotation(i, "A", 10.0 * i, 10.0 * i + 2, "x", None) for i in range(4)]
    docs = [Published(0.0, 0.5, 2.5, 100.0, 10.0), Published(0.0, 29.0, 31.0, 100.0, 10.0)]
    assert [a.utterance_id for a in missed_utterances(annotations, docs)] == [1, 2]
    assert missed_utterances(annotations, []) == annotations


def test_state_size_sees_tensor_bytes_and_growing_containers():
    ring = RingCache(8, (4,))
    assert state_size({"ring": ring})[0] == 8 * 4 * 4
    for _ in range(20):
        ring.append(torch.ones(4))
    assert state_size({"ring": ring})[0] == 8 * 4 * 4  # bounded by its horizon
    growing: list[torch.Tensor] = []
    sizes = []
    for _ in range(3):
        growing.append(torch.zeros(16))
        sizes.append(state_size({"history": growing}))
    assert [b for b, _ in sizes] == [64, 128, 192]
    assert sizes[0][1] < sizes[1][1] < sizes[2][1]
    grew = CacheBound("m", 8, 24, 1000, 1000 + 65 * 1024, 0, 5, 5)
    assert not grew.bounded
    assert CacheBound("m", 8, 24, 1000, 1000, 1000, 5, 5).bounded


def test_model_horizon_is_the_longest_context_setting():
    assert model_horizon(BigFusionConfig()) == 256
    assert model_horizon(DFGCNConfig(window=7)) == 7
    assert model_horizon(object()) == 0


def test_rss_is_measured():
    assert 10 * 2**20 < rss_bytes() < 64 * 2**30


@pytest.mark.slow
def test_short_soak_meets_the_criteria(demo_dir, tmp_path):
    """A 3-minute generated session at full speed (~4 min of audio, 51 utterances) and every
    model's cache stepped to 3× a shortened horizon."""
    options = SoakOptions(
        minutes=3.0, source=demo_dir, cache_dir=tmp_path / "cache", horizon_cap=24
    )
    # in a fresh process: the memory figures are the soak's, not what earlier tests left in
    # this one's heap
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(run_soak_benchmark, load_config(None), options).result()
    s = result.session
    assert s.missed == 0 and s.emitted == s.annotated == 3 * 17
    assert s.events >= s.emitted + 2  # online/offline status documents too
    assert s.growth_mb <= RSS_GROWTH_LIMIT_MB
    assert s.growth_peak_mb < 4 * RSS_GROWTH_LIMIT_MB  # no runaway, even transiently
    assert s.rss_warm_mb > s.rss_start_mb  # models loaded before the warm-up baseline
    assert s.latency["first_n"] >= 10 and s.latency["last_n"] >= 10
    # Latency drift is a speed goal: the benchmark reports it (the 2-hour run against the 20 %
    # target); here only that both windows were measured, since a shared CPU makes any bound flaky.
    assert s.latency["first_p95_ms"] > 0 and s.latency["last_p95_ms"] > 0
    assert s.p95_ratio == pytest.approx(s.latency["last_p95_ms"] / s.latency["first_p95_ms"])
    assert s.x_realtime > 1.0
    assert {c.model for c in result.caches} >= {"bigfusion", "hotspot", "dfgcn"}
    for c in result.caches:
        assert c.bounded, c
        assert c.steps >= 3 * c.horizon
    paths = result.write(tmp_path / "out")
    data = json.loads(paths[0].read_text())
    assert data["utterances_emitted"] == 51
    assert data["rss_growth_mb"] == pytest.approx(s.growth_mb, abs=0.1)
    assert len(data["caches"]) == len(result.caches)
    markdown = paths[1].read_text()
    assert "segment-close→publish p95" in markdown and "bigfusion" in markdown


def test_cli_refuses_a_missing_source(run_cli, tmp_path):
    result = run_cli(
        "bench", "soak", "--minutes", "1", "--source", str(tmp_path / "nope"),
        "--cache-dir", str(tmp_path), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "nope" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_serve_soak_criteria_and_report(tmp_path):
    """The serve soak's result: criteria (growth, drift, missed, session errors) and its files."""
    from realtime_erc.bench.soak import (
        P95_RATIO_LIMIT,
        ServeSoakFigures,
        SessionFigures,
        SoakResult,
        serve_window,
    )

    assert serve_window(1800.0) == 300.0 and serve_window(600.0) == 150.0

    def figures(growth: float, first: float, last: float, missed: int = 0) -> SessionFigures:
        latency = {"first_n": 40, "last_n": 40, "first_p50_ms": first / 2,
                   "last_p50_ms": last / 2, "first_p95_ms": first, "last_p95_ms": last,
                   "first_eos_p95_ms": first + 500, "last_eos_p95_ms": last + 500}  # fmt: skip
        return SessionFigures(
            duration_s=600.0, running_s=601.0, window_s=150.0, annotated=4 * 136,
            emitted=4 * 136 - missed, missed=missed, events=2000, rss_start_mb=900.0,
            rss_warm_mb=1500.0, rss_end_mb=1500.0 + growth, rss_peak_after_warmup_mb=1600.0,
            rss_slope_mb_per_h=1.0, latency=latency, rss_timeline=[(0.0, 900.0)],
        )  # fmt: skip

    serve = ServeSoakFigures(4, [{"emitted": 136, "missed": 0, "shed": {}}] * 4, {}, [], 900.0, 20)
    ok = SoakResult(tmp_path / "rec", figures(10.0, 600.0, 650.0), [], {}, serve)
    assert ok.failures() == []
    slow = figures(10.0, 600.0, 600.0 * P95_RATIO_LIMIT + 1)
    grew = figures(RSS_GROWTH_LIMIT_MB + 1, 600.0, 600.0)
    assert len(SoakResult(tmp_path, slow, [], {}, serve).failures()) == 1
    assert "RSS grew" in SoakResult(tmp_path, grew, [], {}, serve).failures()[0]
    failed = ServeSoakFigures(4, [], {}, ["session 2: ClientError: busy"], 900.0, 20)
    assert SoakResult(tmp_path, figures(0, 600, 600, missed=3), [], {}, failed).failures() == [
        "3 of 544 annotated utterances were not emitted", "session 2: ClientError: busy",
    ]  # fmt: skip
    paths = ok.write(tmp_path / "out")
    assert [p.name for p in paths] == ["soak-serve.json", "soak-serve.md"]
    data = json.loads(paths[0].read_text())
    assert data["benchmark"] == "soak-serve" and data["sessions"] == 4
    assert data["criteria"] == "all met" and data["caches"] == []
    assert "4 concurrent sessions" in paths[1].read_text()


@pytest.mark.slow
def test_serve_soak_streams_concurrent_sessions(demo_dir, tmp_path):
    """Two clients stream a 24 s generated session (the demo's first three utterances
    looped, audio only) at real-time pace to one server."""
    from test_serve_bench import short_recording

    source = short_recording(demo_dir, tmp_path / "short")
    per_loop = len(read_recording(source).annotations)
    options = SoakOptions(minutes=0.4, source=source, cache_dir=tmp_path / "cache",
                          video=False, serve=True, sessions=2, window_s=10.0)  # fmt: skip
    result = run_soak_benchmark(load_config(None), options)
    s, v = result.session, result.serve
    assert v is not None and v.sessions == 2 and not v.errors
    loops = s.annotated // (2 * per_loop)
    assert loops >= 2 and s.annotated == 2 * loops * per_loop
    assert s.emitted == s.annotated and s.missed == 0
    assert [p["emitted"] for p in v.per_session] == [loops * per_loop] * 2
    assert s.latency["first_n"] > 0 and s.latency["last_n"] > 0
    assert s.latency["first_p95_ms"] > 0 and s.latency["last_p95_ms"] > 0
    assert s.rss_warm_mb > 200 and v.server_cpu_s > 0  # the server's tree, models loaded
    assert result.caches == []
    assert [p.name for p in result.write(tmp_path / "out")] == ["soak-serve.json", "soak-serve.md"]
