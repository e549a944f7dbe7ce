"""Running the CLI from tests (imported by conftest.py and by test modules)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from realtime_erc.sources.recording import read_recording

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


def short_recording(directory: Path, utterances: int = 3) -> Path:
    """The demo's first ``utterances`` utterances (and a second of what follows the last) as
    an audio-only recording."""
    demo = read_recording(DEMO)
    end = demo.annotations[utterances - 1].end + 1.0
    audio = demo.read_audio()[: int(end * 16_000)]
    directory.mkdir(parents=True, exist_ok=True)
    sf.write(directory / "audio.flac", audio, 16_000)
    meta = {
        "format": "realtime-erc.recording/1",
        "session_id": "short",
        "audio": {"file": "audio.flac"},
    }
    (directory / "session.json").write_text(json.dumps(meta))
    return directory


def processes_under(folder: Path) -> list[int]:
    """Pids of the processes whose command line names ``folder`` (a local Ray's temp dir:
    none may outlive the command that started it)."""
    import psutil

    return [
        p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(folder) in part for part in p.info["cmdline"] or ())
    ]  # fmt: skip
