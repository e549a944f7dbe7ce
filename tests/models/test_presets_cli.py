"""``realtime-erc models`` and ``--model NAME`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import short_recording

from realtime_erc.models.presets import get_preset, preset_names, presets


def test_models_lists_every_packaged_checkpoint(run_cli):
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [row["name"] for row in listed] == list(preset_names())
    for row, preset in zip(listed, presets(), strict=True):
        assert Path(row["file"]) == preset.path and Path(row["file"]).is_file()
        assert row["model_id"] == preset.model_id and row["labels"] == list(preset.labels)
        assert row["licence"] and row["trained_on"] and row["scores"]["test_weighted_f1"]
        assert row["cost"]["ms_per_utterance"] > 0

    table = run_cli("models")
    assert table.returncode == 0, table.stderr
    for preset in presets():
        assert preset.name in table.stdout and preset.model_id in table.stdout


def _one_error_listing_names(result) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert all(name in result.stderr for name in preset_names())


def test_an_unknown_model_name_is_one_error_listing_the_names(run_cli, demo_dir: Path):
    for command in ("replay", "evaluate-session"):
        _one_error_listing_names(run_cli(command, str(demo_dir), "--model", "meld7-txt"))
    _one_error_listing_names(run_cli("run", "--model", "meld7-txt", "--duration", "1"))


def test_an_unknown_name_in_the_configuration_is_the_same_error(run_cli, demo_dir: Path):
    result = run_cli(
        "replay", str(demo_dir), "--no-zmq", "-q", "--speed", "max",
        "--set", "model.checkpoint=meld7-txt",
    )  # fmt: skip
    _one_error_listing_names(result)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in preset_names() if n != "default"])
def test_model_option_selects_the_preset(run_cli, tmp_path: Path, name: str):
    """Replaying the demo's first utterances with ``--model NAME`` labels every one with that
    checkpoint."""
    preset = get_preset(name)
    out, short = tmp_path / "stream.jsonl", short_recording(tmp_path / "short", utterances=3)
    result = run_cli(
        "replay", str(short), "--model", name, "--speed", "max", "--no-zmq", "-q",
        "--jsonl", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    finals = [d for d in docs if d["schema"] == "erc.emotion/1" and not d["provisional"]]
    assert [d["utterance_id"] for d in finals] == [0, 1, 2]
    assert {d["model"] for d in finals} == {preset.model_id}
    assert {d["label_set"] for d in finals} == {preset.label_set}
    for d in finals:
        assert d["label"] in preset.labels, d
        assert not [e for e in d.get("errors", []) if e["stage"] == "model"], d
