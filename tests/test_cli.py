"""The command line: one clear line for user errors, exit codes, config show, schema."""

import json
from pathlib import Path

import pytest
import typer

from realtime_erc.config import Config, load_config


def test_config_show_prints_the_effective_configuration(run_cli, tmp_path: Path):
    result = run_cli("config", "show", "--set", "asr.model=base", "--set", "vad.hangover_ms=300")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "shown.toml"
    path.write_text(result.stdout)
    shown = load_config(path)
    assert shown.asr.model == "base" and shown.vad.hangover_ms == 300
    assert shown.output == Config().output


def test_unknown_config_key_is_one_clear_error(run_cli, tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[vad]\nhangover = 300\n")
    result = run_cli("config", "show", "--config", str(path))
    assert result.returncode == 2
    assert "vad.hangover: unknown key" in result.stderr and "hangover_ms" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_on_replay_is_refused_before_anything_runs(run_cli, demo_dir: Path):
    result = run_cli("replay", str(demo_dir), "--set", "vad.hangover_ms=long")
    assert result.returncode == 2
    assert "vad.hangover_ms" in result.stderr and "Traceback" not in result.stderr


def test_schema_prints_both_schemas(run_cli):
    result = run_cli("schema")
    assert result.returncode == 0
    schemas = json.loads(result.stdout)
    assert set(schemas) == {"erc.emotion/1", "erc.status/1"}
    one = json.loads(run_cli("schema", "erc.status/1").stdout)
    assert one == schemas["erc.status/1"]
    assert run_cli("schema", "erc.nope/1").returncode == 2


def test_replay_of_a_broken_recording_names_the_file(run_cli, tmp_path: Path):
    (tmp_path / "session.json").write_text('{"format": "realtime-erc.recording/9"}')
    result = run_cli("replay", str(tmp_path), "--no-zmq")
    assert result.returncode == 2
    assert "session.json" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1


def test_a_user_error_raised_anywhere_ends_the_command_in_one_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from realtime_erc.cli import app
    from realtime_erc.errors import UserError

    class NewProblem(UserError):
        """An error class the CLI has never heard of."""

    def broken(*args, **kwargs):
        raise NewProblem("the stream file is odd: write it with replay --jsonl")

    monkeypatch.setattr("realtime_erc.outputs.report.write_report", broken)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: the stream file is odd: write it with replay --jsonl"

    # anything else is a bug: it keeps its traceback
    monkeypatch.setattr("realtime_erc.outputs.report.write_report", lambda *a: 1 / 0)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "s.jsonl")])
    assert isinstance(result.exception, ZeroDivisionError)


def test_every_command_is_wrapped_by_the_one_error_handler():
    from realtime_erc.cli.app import app

    def commands(group):
        yield from group.registered_commands
        for sub in group.registered_groups:
            yield from commands(sub.typer_instance)

    found = list(commands(app))
    assert len(found) >= 20
    assert all(getattr(c.callback, "__wrapped__", None) for c in found)


def test_an_error_is_one_line_whatever_its_length_and_keeps_its_brackets(capsys):
    from realtime_erc.cli.options import fail

    message = "/a/long/path/" * 20 + ": install the extra with pip install '.[ray]'"
    with pytest.raises(typer.Exit):
        fail(message)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"error: {message}"]
