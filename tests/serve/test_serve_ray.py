"""``realtime-erc serve --ray`` on a real local Ray, started inside a network namespace of the
test's own (loopback only) with the Python client beside it: every utterance comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import ROOT, short_recording

from realtime_erc.ray_support import in_private_network

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("ray_driver.py")


def run_in_private_network(tmp_path: Path, *command: str, timeout: float = 600) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        in_private_network(command),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_client_streams_a_recording_through_serve_on_ray(tmp_path_factory) -> None:
    recording = short_recording(tmp_path_factory.mktemp("rec") / "three", utterances=3)
    ray_tmp = tmp_path_factory.mktemp("ray")
    out = ray_tmp / "result.json"
    run_in_private_network(ray_tmp, sys.executable, str(DRIVER), str(out), str(recording))
    result = json.loads(out.read_text())
    assert result["ready"], result["output"]
    assert result["url"].startswith("ws://127.0.0.1:8765/")
    finals = [d for d in result["documents"]
              if d.get("schema") == "erc.emotion/1" and not d["provisional"]]  # fmt: skip
    assert [d["utterance_id"] for d in finals] == [0, 1, 2]
    assert all(d["text"] and d["label"] for d in finals)
    assert result["documents"][-1]["state"] == "offline"
    assert result["exit_code"] == 0, result["output"]
