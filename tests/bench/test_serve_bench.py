"""``bench serve``: N real-time clients against one server vs N replay processes (short runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from realtime_erc.bench.serve import (
    ServeBenchOptions,
    SessionOutcome,
    parse_arrival,
    parse_modes,
    parse_sessions,
    rotate_recording,
    run_serve_benchmark,
    summarize,
)
from realtime_erc.errors import UserError
from realtime_erc.sources.recording import RecordingWriter, read_recording


def short_recording(source: Path, directory: Path, utterances: int = 3) -> Path:
    """The demo's first ``utterances`` utterances (audio and annotations, no video), cut half a
    second after the last one ends."""
    demo = read_recording(source)
    kept = demo.annotations[:utterances]
    audio = demo.read_audio()[: int((kept[-1].end + 0.5) * 16_000)]
    writer = RecordingWriter(directory, "serve-short", sample_rate=16_000,
                             speakers=demo.speakers, label_set=demo.label_set)  # fmt: skip
    with writer:
        writer.write_audio(audio)
        for a in kept:
            writer.write_annotation(a)
    return directory


def test_a_rotated_recording_moves_utterances_frames_and_audio_together(demo_dir, tmp_path):
    demo = read_recording(demo_dir)
    rotated = read_recording(rotate_recording(demo, 5, tmp_path / "from-5"))
    assert rotated.duration == pytest.approx(demo.duration, abs=1e-3)
    assert [a.text for a in rotated.annotations] == [
        a.text for a in demo.annotations[5:] + demo.annotations[:5]
    ]
    assert [a.utterance_id for a in rotated.annotations] == list(range(len(demo.annotations)))
    original, moved = demo.read_audio(), rotated.read_audio()
    for before, after in ((demo.annotations[5], rotated.annotations[0]),
                          (demo.annotations[0], rotated.annotations[-5])):  # fmt: skip
        assert after.end - after.start == pytest.approx(before.end - before.start, abs=1e-6)
        a = original[int(before.start * 16_000) :][:16_000]
        b = moved[int(round(after.start * 16_000)) :][:16_000]
        assert np.corrcoef(a, b)[0, 1] > 0.99  # the same speech (to a sample of rounding)
    assert rotated.has_video and len(rotated.frame_times) == len(demo.frame_times)
    assert np.all(np.diff(rotated.frame_times) > 0)
    with pytest.raises(UserError):
        parse_arrival("random")


def test_sessions_and_modes_are_parsed():
    assert parse_sessions("1, 2,4,8,4") == [1, 2, 4, 8]
    assert parse_modes("processes,server") == ("processes", "server")
    for bad in ("", "0,1", "a"):
        with pytest.raises(UserError):
            parse_sessions(bad)
    with pytest.raises(UserError):
        parse_modes("server,threads")


def test_outcome_reads_finals_provisionals_and_the_last_shed_counts():
    docs = [
        {"schema": "erc.status/1", "state": "online", "load": {"shed_counts": {"video": 1}}},
        {"schema": "erc.emotion/1", "provisional": True, "latency_ms": {"total": 300.0}},
        {
            "schema": "erc.emotion/1",
            "provisional": False,
            "latency_ms": {"segment": 400.0, "asr": 300.0, "total": 900.0},
        },  # fmt: skip
        {"schema": "erc.status/1", "state": "online", "load": {"shed_counts": {"video": 3}}},
        {"schema": "erc.status/1", "state": "offline"},
    ]
    o = SessionOutcome.from_documents(docs, annotated=2)
    assert o.finals == [900.0] and o.provisionals == [300.0] and o.shed == {"video": 3}
    assert o.stages == {"segment": [400.0], "asr": [300.0]}
    assert o.received == 1


def test_summary_finds_the_largest_n_held_per_mode():
    def row(mode, n, p95, rss, shed=0):
        return {"mode": mode, "sessions": n, "final_p95_ms": p95, "received": 3 * n,
                "annotated": 3 * n, "shed_total": shed, "errors": [],
                "rss_peak_mb": rss}  # fmt: skip

    rows = [row("server", 1, 800, 1000), row("server", 2, 900, 1040), row("server", 4, 1400, 1120),
            row("processes", 1, 800, 600), row("processes", 2, 1600, 1200),
            row("processes", 4, 3000, 2400, shed=2)]  # fmt: skip
    s = summarize(rows)
    assert s["server_largest_n_held"] == 4 and s["processes_largest_n_held"] == 1
    assert s["server_over_processes"] == 4.0
    assert s["server_rss_mb_per_session"] == pytest.approx(40.0, abs=0.5)
    assert s["processes_rss_mb_per_session"] == pytest.approx(600.0, abs=0.5)


def test_summary_compares_the_ray_path_with_plain_serve():
    def row(mode, n, p50, p95, asr):
        return {"mode": mode, "sessions": n, "final_p50_ms": p50, "final_p95_ms": p95,
                "received": 3 * n, "annotated": 3 * n, "shed_total": 0, "errors": [],
                "rss_peak_mb": 1000.0 * n, "batch_means": {"asr": asr}}  # fmt: skip

    rows = [row("server", 1, 700, 750, 1.0), row("ray", 1, 712, 780, 1.0),
            row("server", 8, 1200, 1800, 1.4), row("ray", 8, 1300, 2160, 1.6)]  # fmt: skip
    s = summarize(rows)
    assert s["ray_p50_overhead_ms_at_1"] == 12 and s["ray_p50_overhead_ms_at_8"] == 100
    assert s["ray_p95_ratio_at_8"] == 1.2 and s["ray_mean_asr_batch_at_8"] == 1.6
    assert s["ray_largest_n_held"] == 1 and s["server_largest_n_held"] == 1
    assert parse_modes("server,ray") == ("server", "ray")


@pytest.mark.slow
def test_serve_benchmark_runs_both_modes(demo_dir, tmp_path):
    recording = short_recording(demo_dir, tmp_path / "short", utterances=2)
    annotated = len(read_recording(recording).annotations)
    options = ServeBenchOptions(
        sessions=[2], recording=recording, timeout_s=240.0, arrival="spread"
    )
    report = run_serve_benchmark(options)
    assert [(r["sessions"], r["mode"]) for r in report.rows] == [(2, "server"), (2, "processes")]
    for row in report.rows:
        assert not row["errors"], row["errors"]
        assert len(row["per_session"]) == row["sessions"]
        for session in row["per_session"]:
            assert session["received"] == session["annotated"] == annotated
        for key in ("final_p50_ms", "final_p95_ms", "cpu_s", "rss_peak_mb"):
            assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["final_p50_ms"] <= row["final_p95_ms"]
        assert row["rss_peak_mb"] > 100  # models are resident
    server = {r["sessions"]: r for r in report.rows if r["mode"] == "server"}
    assert server[2]["rss_idle_mb"] > 100 and server[2]["client_cpu_s"] >= 0
    # every shared model ran the sessions' requests through its batcher
    assert set(server[2]["batch_means"]) == {"asr", "voices", "text", "engine"}
    assert all(1.0 <= m <= 2.0 for m in server[2]["batch_means"].values())
    assert report.meta["cpus"] >= 1 and report.meta["utterances_per_session"] == annotated
    paths = report.write(tmp_path / "out")
    data = json.loads(paths[0].read_text())
    assert data["benchmark"] == "serve-spread" and len(data["rows"]) == 2
    markdown = paths[1].read_text()
    assert "EoS→final p95" in markdown and "processes" in markdown and "server" in markdown
