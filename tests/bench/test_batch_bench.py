"""``bench batch``: the batch command's throughput per mode (real command, real Ray)."""

from __future__ import annotations

import json

import pytest
from cli_support import cli

from realtime_erc.bench.batch import excerpt_recording, parse_batch_modes
from realtime_erc.errors import UserError
from realtime_erc.sources.recording import read_recording


def test_an_excerpt_keeps_its_utterances_frames_and_annotations(demo_dir, tmp_path):
    demo = read_recording(demo_dir)
    rec = read_recording(excerpt_recording(demo, 2, 3, tmp_path / "x"))
    notes, src = rec.annotations, demo.annotations[2:5]
    assert [a.utterance_id for a in notes] == [0, 1, 2]
    shift = src[0].start - notes[0].start
    assert 0 < shift < src[0].start
    for a, b in zip(notes, src, strict=True):
        assert (a.text, a.emotion, a.speaker) == (b.text, b.emotion, b.speaker)
        assert a.start == pytest.approx(b.start - shift) and a.end == pytest.approx(b.end - shift)
    assert notes[-1].end < rec.duration < notes[-1].end + 2.0
    assert rec.has_video
    times = [t for _, t, _ in rec.iter_frames()]
    assert times[0] >= 0 and times[-1] < rec.duration and len(times) > 10
    with pytest.raises(UserError):
        excerpt_recording(demo, 16, 3, tmp_path / "y")


def test_modes_are_checked():
    assert parse_batch_modes("ray, one") == ("ray", "one")
    with pytest.raises(UserError, match="choose from"):
        parse_batch_modes("one,threads")


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray at a time
def test_bench_batch_runs_every_mode_and_compares_their_events(tmp_path):
    r = cli("bench", "batch", "--recordings", "2", "--utterances", "1", "--repeats", "1",
            "--out", str(tmp_path), timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "batch.json").read_text())
    rows = {row["mode"]: row for row in data["rows"]}
    assert set(rows) == {"one", "processes", "ray"}
    for row in rows.values():
        assert row["identical"] == "yes" and row["wall_s"] > 0 and row["rss_peak_mb"] > 500
    assert rows["one"]["speedup"] == 1.0
    assert rows["ray"]["speedup"] == pytest.approx(rows["one"]["wall_s"] / rows["ray"]["wall_s"],
                                                   abs=0.01)  # fmt: skip
    assert "| ray | 2 | 2 |" in (tmp_path / "batch.md").read_text()
