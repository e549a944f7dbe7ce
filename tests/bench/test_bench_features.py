"""``realtime-erc bench features`` and ``bench speakers`` run and report sane fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from feature_media import data_dir, require_espeak

pytestmark = pytest.mark.slow


def test_bench_features_reports_every_modality(run_cli, tmp_path: Path) -> None:
    require_espeak()
    result = run_cli("bench", "features", "--runs", "3", "--out", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "features.json").read_text())
    parts = {row["part"]: row for row in report["rows"]}
    for name in (
        "text (MiniLM)",
        "text (MPNet)",
        "audio egemaps",
        "audio librosa",
        "visual per frame",
        "all three, end of utterance (egemaps)",
        "all three, end of utterance (librosa)",
    ):
        row = parts[name]
        assert row["runs"] >= 3 and 0 < row["median_ms"] <= row["p95_ms"] < 60_000
        assert row["cpu_median_ms"] >= 0
    assert report["utterance_s"] == 2.0 and report["target_all_three_ms"] == 150.0
    assert "| all three, end of utterance (egemaps) |" in (tmp_path / "features.md").read_text()


def test_bench_speakers_reports_accuracy(run_cli, tmp_path: Path) -> None:
    if not (data_dir() / "ravdess" / "index.csv").is_file():
        pytest.skip(f"{data_dir()}/ravdess is absent: set REALTIME_ERC_DATA to the datasets")
    args = ["bench", "speakers", "--actors", "2", "--utterances", "6", "--seeds", "1"]
    result = run_cli(*args, "--out", str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "speakers.json").read_text())
    rows = report["rows"]
    assert rows and all(0.0 <= r["accuracy_median"] <= 1.0 for r in rows)
    assert {r["max_speakers"] for r in rows} == {8, 2}
    # every row twice: as the live segmenter cuts the clips (what the tracker hears), and clean
    assert {r["audio"] for r in rows} == {"live", "clip"}
    assert len(rows) == 2 * len({(r["method"], r["projection"], r["max_speakers"]) for r in rows})


def test_bench_speakers_without_data_is_one_clear_error(run_cli, tmp_path: Path) -> None:
    result = run_cli("bench", "speakers", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "ravdess/index.csv not found" in result.stderr and "--data" in result.stderr
    assert "Traceback" not in result.stderr
