"""``bench models`` runs at tiny lengths and reports sane figures (not a timed test)."""

from __future__ import annotations

import json

import pytest

from realtime_erc.bench.models import ModelBenchOptions, run_models_benchmark
from realtime_erc.models.base import FeatureDims

DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)


def test_report_fields_are_sane(tmp_path):
    options = ModelBenchOptions(
        models=["utterance-mlp", "dialogue-rnn-lite"],
        lengths=(12, 3),
        steps=4,
        forward_repeats=2,
        runs=2,
        devices=["cpu"],
        threads=1,
        dims=DIMS,
    )
    report = run_models_benchmark(options)
    assert [(r["model"], r["length"]) for r in report.rows] == [
        ("utterance-mlp", 3),
        ("utterance-mlp", 12),
        ("dialogue-rnn-lite", 3),
        ("dialogue-rnn-lite", 12),
    ]
    for row in report.rows:
        assert row["device"] == "cpu"
        assert 0 < row["step_p50_ms"] <= row["step_p95_ms"] < 5_000
        assert 0 < row["step_cpu_p50_ms"] < 5_000
        assert 0 < row["forward_ms"] < 60_000
        assert row["speedup"] == pytest.approx(row["forward_ms"] / row["step_p50_ms"])
    assert report.rows[0]["step_ratio"] == 1.0
    assert report.rows[1]["step_ratio"] == pytest.approx(
        report.rows[1]["step_p50_ms"] / report.rows[0]["step_p50_ms"]
    )
    summary = {s["model"]: s for s in report.meta["summary"]}
    assert set(summary) == {"utterance-mlp", "dialogue-rnn-lite"}
    assert set(summary["dialogue-rnn-lite"]["speedup"]) == {"3", "12"}
    assert report.meta["threads"] == 1 and report.meta["runs"] == 2
    json_path, md_path = report.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["benchmark"] == "models" and len(data["rows"]) == 4
    md = md_path.read_text()
    assert "| model | device | conversation length | step p50 (ms)" in md
    assert "| dialogue-rnn-lite | cpu | 12 |" in md


@pytest.mark.slow
def test_cli_bench_models(run_cli, tmp_path):
    result = run_cli(
        "bench", "models", "--models", "utterance-mlp", "--lengths", "2,5", "--steps", "3",
        "--runs", "1", "--device", "cpu", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "models.json").read_text())
    assert [r["length"] for r in data["rows"]] == [2, 5]
    assert (tmp_path / "models.md").is_file()


@pytest.mark.slow
def test_cli_refuses_unknown_model_and_bad_lengths(run_cli, tmp_path):
    result = run_cli("bench", "models", "--models", "nope", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown model 'nope'" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("bench", "models", "--lengths", "10,x", "--out", str(tmp_path))
    assert result.returncode == 2 and "--lengths" in result.stderr
