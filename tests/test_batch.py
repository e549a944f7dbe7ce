"""``realtime-erc batch``: many recordings through the pipeline, resumable, bad ones reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_support import ROOT, cli, processes_under, short_recording

from realtime_erc.batch import (
    BatchError,
    BatchSummary,
    RecordingReport,
    find_recordings,
    output_names,
    stream_figures,
)
from realtime_erc.bench.batch import final_events, same_events
from realtime_erc.ray_support import in_private_network


def corrupt_recording(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "session.json").write_text('{"format": "realtime-erc.recording/1", "sess')
    return directory


# ---------------------------------------------------------------------------------------------
# Logic


def test_recordings_are_found_in_folders_and_globs(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / "set" / name).mkdir(parents=True)
        (tmp_path / "set" / name / "session.json").write_text("{}")
    (tmp_path / "set" / "notes").mkdir()
    a, b = tmp_path / "set" / "a", tmp_path / "set" / "b"
    assert find_recordings([tmp_path / "set"]) == [a, b]
    assert find_recordings([str(tmp_path / "set" / "*")]) == [a, b]  # "notes" is no recording
    assert find_recordings([b, a, b]) == [b, a]
    with pytest.raises(BatchError, match="no recordings in"):
        find_recordings([tmp_path / "set" / "notes"])


def test_output_names_tell_apart_recordings_of_the_same_name() -> None:
    names = output_names([Path("/x/demo"), Path("/y/demo"), Path("/y/other")])
    assert names[2] == "other" and names[0] != names[1]
    assert all(n.startswith("demo-") for n in names[:2])


def test_stream_figures_count_final_labels_per_speaker(tmp_path: Path) -> None:
    docs = [
        {"schema": "erc.status/1", "state": "online"},
        {"schema": "erc.emotion/1", "provisional": True, "speaker": "S1", "label": "anger"},
        {"schema": "erc.emotion/1", "provisional": False, "speaker": "S1", "label": "joy"},
        {"schema": "erc.emotion/1", "provisional": False, "speaker": "S2", "label": "joy"},
        {"schema": "erc.emotion/1", "provisional": False, "speaker": "S1", "label": "joy"},
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert stream_figures(path) == {
        "utterances": 3, "labels_per_speaker": {"S1": {"joy": 2}, "S2": {"joy": 1}}
    }  # fmt: skip


def test_summary_names_the_failed_recording_and_its_error() -> None:
    ok = RecordingReport("/r/a", "a", 10.0, 2.0, 3, {"S1": {"joy": 3}})
    bad = RecordingReport("/r/b", "b", error="recording b: audio.flac is not audio | fix it")
    summary = BatchSummary([ok, bad], wall_s=2.5, workers=2, engine="processes")
    s = summary.to_json()
    assert (s["analysed"], s["failed"], s["x_realtime"]) == (1, 1, 4.0)
    md = summary.markdown()
    assert "| a | 3 | S1: joy 3 | 5.0 | ok |" in md
    assert "| b | – | – | – | failed: recording b: audio.flac is not audio \\| fix it |" in md


# ---------------------------------------------------------------------------------------------
# The command, on real recordings


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    for folder in ("set", "ray-set"):
        short_recording(root / folder / "two", utterances=2)
        short_recording(root / folder / "three", utterances=3)
        corrupt_recording(root / folder / "broken")

    def replay(name: str):  # what replay --speed max gives, to compare with
        return cli("replay", str(root / "set" / name), "--speed", "max", "--no-zmq", "--quiet",
                   "--jsonl", str(root / f"replay-{name}.jsonl"))  # fmt: skip

    with ThreadPoolExecutor(2) as pool:  # the two replays' model loading overlaps
        for r in pool.map(replay, ("two", "three")):
            assert r.returncode == 0, r.stderr
    return root


@pytest.mark.slow
def test_batch_equals_replay_reports_the_corrupt_one_and_resumes(recordings: Path) -> None:
    out = recordings / "out"
    r = cli("batch", str(recordings / "set"), "--out", str(out), "--workers", "2")
    assert r.returncode == 1, r.stdout + r.stderr  # one recording failed
    for name in ("two", "three"):
        ours = final_events(out / name / "events.jsonl")
        assert same_events(ours, final_events(recordings / f"replay-{name}.jsonl"))
        report = json.loads((out / name / "report.json").read_text())
        assert report["utterances"] == {"two": 2, "three": 3}[name] and report["error"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["analysed"], summary["failed"]) == (2, 1)
    broken = next(x for x in summary["reports"] if x["name"] == "broken")
    assert "session.json" in broken["error"]
    assert "broken" in (out / "summary.md").read_text() and "broken" in r.stdout

    # a rerun redoes only what is not finished: the broken one, now repaired
    shutil.rmtree(recordings / "set" / "broken")
    short_recording(recordings / "set" / "broken", utterances=2)
    before = (out / "two" / "events.jsonl").stat().st_mtime_ns
    r = cli("batch", str(recordings / "set"), "--out", str(out), "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["analysed"], summary["skipped"], summary["failed"]) == (1, 2, 0)
    assert (out / "two" / "events.jsonl").stat().st_mtime_ns == before
    assert same_events(
        final_events(out / "broken" / "events.jsonl"), final_events(out / "two" / "events.jsonl")
    )


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray at a time
def test_batch_on_ray_in_a_private_network(recordings: Path) -> None:
    """A local Ray, started by the command inside a network namespace of its own (loopback
    only: nothing Ray opens is reachable from outside), stopped with the batch."""
    # Ray's socket paths must stay under 107 bytes: a short temp dir, not the test's
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as short:
        run_batch_on_ray(recordings, Path(short))


def run_batch_on_ray(recordings: Path, ray_tmp: Path) -> None:
    out = recordings / "ray-out"
    command = [sys.executable, "-m", "realtime_erc", "batch", str(recordings / "ray-set"),
               "--out", str(out), "--ray", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        in_private_network(command),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr  # the broken one
    assert (out / "summary.json").is_file(), r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["engine"], summary["analysed"], summary["failed"]) == ("ray", 2, 1)
    for name in ("two", "three"):
        ours = final_events(out / name / "events.jsonl")
        assert same_events(ours, final_events(recordings / f"replay-{name}.jsonl"))
    assert (ray_tmp / "ray").is_dir()  # Ray ran under the test's temp dir ...
    assert not processes_under(ray_tmp)  # ... and is gone with the batch


def test_events_match_within_the_score_tolerance_only() -> None:
    a = [{"schema": "erc.emotion/1", "label": "joy", "scores": {"joy": 0.348973, "anger": 0.1}}]
    b = [{"schema": "erc.emotion/1", "label": "joy", "scores": {"joy": 0.348972, "anger": 0.1}}]
    assert same_events(a, b)
    assert not same_events(a, [{**b[0], "label": "anger"}])
    assert not same_events(a, [{**b[0], "scores": {"joy": 0.3489, "anger": 0.1}}])
    assert not same_events(a, a + a)
