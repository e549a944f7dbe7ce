"""``bench stream`` runs and reports sane fields (not a timed test)."""

from __future__ import annotations

import json

import pytest

from realtime_erc.bench.stream import run_stream_benchmark
from realtime_erc.outputs.broker import find_mosquitto


@pytest.mark.slow
def test_stream_benchmark_reports_both_transports(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed: run `make setup`")
    report = run_stream_benchmark(events=40, rate=400, burst=200, runs=1)
    paths = report.write(tmp_path)
    data = json.loads(paths[0].read_text())
    rows = {r["transport"].split()[0]: r for r in data["rows"]}
    assert set(rows) == {"zeromq", "mqtt"}
    for row in rows.values():
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] < 5000
        assert row["events_per_s"] > 10
        assert row["lost"] == 0
    assert "latency p99 (ms)" in paths[1].read_text()
