"""``bench overload``: a short recording replayed faster than the slow profile transcribes it;
with shedding the latency stays bounded and the policy's work shows, without it nothing is shed."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from realtime_erc.sources.recording import read_recording

pytestmark = pytest.mark.slow


def test_bench_overload_compares_the_policies(run_cli, demo_dir, tmp_path):
    audio = read_recording(demo_dir).read_audio()[: 30 * 16_000]
    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(rec / "audio.flac", audio, 16_000)
    meta = {"format": "realtime-erc.recording/1", "session_id": "bench",
            "audio": {"file": "audio.flac"}}  # fmt: skip
    (rec / "session.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    result = run_cli(
        "bench", "overload", "--recording", str(rec), "--runs", "1", "--out", str(out),
        "--speed", "8", "--set", "load.shed_thresholds_s=[0.3, 0.6, 0.9, 1.2]", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "overload.json").read_text())
    assert report["asr_model"] == "base" and report["asr_cpu_threads"] == 1
    shedding, plain = report["rows"]
    assert (shedding["policy"], plain["policy"]) == ("shedding", "no shedding")
    assert shedding["max_level"] >= 2 and "transcription" in shedding["shed"]
    assert plain["max_level"] == 0 and plain["shed"] == "nothing"
    assert plain["transcribed"] == plain["utterances"] >= 5  # everything, however late
    assert shedding["transcribed"] < shedding["utterances"]
    assert shedding["eos_to_final_max_ms"] < plain["eos_to_final_max_ms"]
    assert "| shedding |" in (out / "overload.md").read_text()
