"""Running the CLI from tests (imported by conftest.py and by test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recordings" / "demo"


def cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``realtime-erc ARGS`` in a subprocess from the repository root; ``env`` adds to (or
    overrides) this process's environment."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "realtime_erc", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def popen_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``realtime-erc ARGS`` (stdout and stderr piped, text); ``env`` as for :func:`cli`,
    ``kwargs`` go to :class:`subprocess.Popen` (e.g. ``preexec_fn``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "realtime_erc", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        **kwargs,
    )
