"""``bench batching``: the shared models' cost per utterance by batch size (real models)."""

from __future__ import annotations

import json

import pytest

from realtime_erc.bench.batching import BatchingOptions, run_batching_benchmark


@pytest.mark.slow
def test_batching_benchmark_measures_each_shared_model(demo_dir, tmp_path):
    report = run_batching_benchmark(BatchingOptions(recording=demo_dir, sizes=(1, 4), repeats=1))
    rows = {(r["model"], r["batch"]): r for r in report.rows}
    assert set(rows) == {("asr", 1), ("asr", 4), ("voices", 1), ("voices", 4), ("text", 1),
                         ("text", 4), ("heads", 1)}  # fmt: skip
    for (_, batch), row in rows.items():
        assert row["wall_ms"] > 0 and row["cpu_ms"] > 0, row
        if batch == 1:
            assert row["cpu_gain"] == 1.0
        else:
            assert row["cpu_gain"] == pytest.approx(
                rows[(row["model"], 1)]["cpu_ms"] / row["cpu_ms"], rel=0.05
            )
    assert report.meta["utterances"] == 17
    data = json.loads(report.write(tmp_path)[0].read_text())
    assert data["benchmark"] == "batching" and len(data["rows"]) == 7
