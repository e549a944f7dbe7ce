"""The server's memory allocator.

glibc's malloc fragments under the server's many threads: in a 30-minute soak of 4 sessions
its resident memory grew by 100 MB after warm-up, and kept growing, while Python's own heap
stayed flat (tracemalloc) and no component leaked on its own. With jemalloc the same run
stays flat (see docs/benchmarks/soak-serve.md). ``serve`` therefore re-executes itself with
jemalloc preloaded when ``serve.allocator = "jemalloc"`` (the default) and the library is
installed (Debian: ``libjemalloc2``, which ``make setup`` installs).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LIBRARY = "libjemalloc.so.2"
_SEARCHED = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib")  # fmt: skip
_TRIED = "REALTIME_ERC_JEMALLOC_TRIED"  # set across the re-execution: never loop


def jemalloc_library() -> Path | None:
    """Where libjemalloc is installed, if it is."""
    for folder in _SEARCHED:
        path = Path(folder) / LIBRARY
        if path.is_file():
            return path
    return None


def jemalloc_loaded(maps: Path = Path("/proc/self/maps")) -> bool:
    """Whether this process runs on jemalloc."""
    try:
        return LIBRARY in maps.read_text()
    except OSError:
        return False


def use_jemalloc(argv: list[str] | None = None) -> None:
    """Re-execute this command (``python -m realtime_erc`` + ``argv``, default: this
    process's arguments) with jemalloc preloaded. Returns when it is loaded already, or when
    it cannot be (not installed: a warning names the package)."""
    if jemalloc_loaded():
        return
    library = jemalloc_library()
    if library is None or os.environ.get(_TRIED):
        log.warning(
            "serve.allocator = jemalloc, but %s; using the system's malloc, whose resident "
            "memory creeps up with many sessions (install libjemalloc2, or set "
            "serve.allocator = system to silence this)",
            "it did not load" if library is not None else f"{LIBRARY} is not installed",
        )
        return
    preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), str(library)) if p)
    env = {**os.environ, "LD_PRELOAD": preload, _TRIED: "1"}
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "realtime_erc", *args], env)
