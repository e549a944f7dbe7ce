"""Ray for ``batch --ray`` and ``serve --ray``: importing it, joining or starting it, and the
private network the tests and benchmarks run a local Ray in.

Ray is an optional extra (``pip install 'realtime-erc[ray]'``). Without an address, Ray's
``RAY_ADDRESS`` is joined when set, else a local Ray is started and the caller stops it with
``ray.shutdown()`` — never ``ray stop``, which kills every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from realtime_erc.errors import UserError

PRIVATE_NETWORK_ENV = "REALTIME_ERC_RAY_NETNS"
"""Set to 1 inside the namespace :func:`rerun_in_private_network` runs a command in."""


class RayError(UserError, RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def import_ray():  # -> the ray module
    """Ray, or one error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayError(
            "--ray needs Ray: pip install 'realtime-erc[ray]' (or run without --ray)"
        ) from None
    return ray


def start_ray(address: str | None, **local: Any) -> bool:
    """Connect to ``address`` (else ``RAY_ADDRESS``, else start a local Ray with ``local``
    arguments of ``ray.init``); True if this call started Ray (the caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": "warning", "log_to_driver": False}
    if address is None:
        kwargs |= {"include_dashboard": False, **local}
        check_socket_room(Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()))
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise RayError(
            f"cannot reach the Ray cluster at {address}: {e}; check the address (ray status "
            "on the head node), or drop --ray-address to start a local Ray"
        ) from None
    return True


# the longest socket path a local Ray makes under its temp dir (a 7-digit process id)
_RAY_SOCKET_TAIL = "/ray/session_2026-12-07_01-23-47_704531_1234567/sockets/plasma_store"


def check_socket_room(tmpdir: Path) -> None:
    """Ray's Unix sockets live under ``tmpdir``; a path past 107 bytes fails deep in its
    start-up, so say so first."""
    if len(str(tmpdir)) + len(_RAY_SOCKET_TAIL) > 107:
        raise RayError(
            f"RAY_TMPDIR={tmpdir} is too long for Ray's socket paths (at most "
            f"{107 - len(_RAY_SOCKET_TAIL)} characters): set RAY_TMPDIR to a shorter "
            "directory, e.g. /tmp/ray"
        )


def in_private_network(command: Sequence[str]) -> list[str]:
    """``command`` inside a network namespace of its own with loopback only: Ray's services
    listen on every interface, and there nothing outside can reach them. A non-root user
    gets the namespace through a user namespace (``--map-root-user``)."""
    as_user = ["--map-root-user"] if os.geteuid() != 0 else []
    return ["unshare", *as_user, "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            *command]  # fmt: skip


def inside_private_network() -> bool:
    return os.environ.get(PRIVATE_NETWORK_ENV) == "1"


def rerun_in_private_network() -> int:
    """This command again (``python -m realtime_erc`` + its arguments) inside a private
    network; its exit status."""
    if not shutil.which("unshare"):
        raise RayError("unshare not found (util-linux): install it, or pass --no-private-network")
    env = {**os.environ, PRIVATE_NETWORK_ENV: "1"}
    command = in_private_network([sys.executable, "-m", "realtime_erc", *sys.argv[1:]])
    return subprocess.run(command, env=env).returncode
