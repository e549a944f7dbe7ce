"""``realtime-erc serve --ray`` on a real local Ray. Ray's services listen on every interface,
so the tests in tests/serve/on_ray/ run in a pytest of their own inside a network namespace
with loopback only (the server, its Ray, the clients and Chromium all inside): nothing Ray
opens is reachable from outside."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_support import ROOT, processes_under

from realtime_erc.ray_support import PRIVATE_NETWORK_ENV, in_private_network

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time

INNER = Path(__file__).with_name("on_ray")


def test_serve_on_ray_in_a_private_network(tmp_path: Path) -> None:
    # Ray's socket paths must stay under 107 bytes: a short temp dir, not the test's
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as short:
        run_inner(tmp_path, Path(short))


def run_inner(tmp_path: Path, ray_tmp: Path) -> None:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           PRIVATE_NETWORK_ENV: "1"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               "--basetemp", str(tmp_path / "inner"), str(INNER)]  # fmt: skip
    r = subprocess.run(in_private_network(command), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-3000:]
    # none skipped (e.g. without Chromium)
    assert re.search(r"^7 passed", r.stdout, re.M), r.stdout[-3000:]
    assert (ray_tmp / "ray").is_dir()  # Ray ran under the test's temp dir ...
    assert not processes_under(ray_tmp)  # ... and is gone with the server
