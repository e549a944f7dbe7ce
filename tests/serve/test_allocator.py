"""``serve`` runs on jemalloc (glibc's malloc fragments under many sessions), and without the
library it says so and goes on with the system's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from serve_fixtures import start_server

from realtime_erc.serve import allocator


def test_a_process_on_jemalloc_is_recognised(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert not allocator.jemalloc_loaded(maps)
    maps.write_text("7f00-7f01 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert allocator.jemalloc_loaded(maps)


def test_without_the_library_it_warns_and_goes_on(monkeypatch, caplog) -> None:
    monkeypatch.setattr(allocator, "jemalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator, "jemalloc_library", lambda: None)
    monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail("re-executed"))
    with caplog.at_level(logging.WARNING):
        allocator.use_jemalloc(["serve"])
    assert "libjemalloc.so.2 is not installed" in caplog.text
    assert "libjemalloc2" in caplog.text


@pytest.mark.slow
def test_serve_runs_on_jemalloc() -> None:
    if allocator.jemalloc_library() is None:
        pytest.fail("libjemalloc2 is not installed: run `make setup`")
    server = start_server()
    try:
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert allocator.LIBRARY in maps  # the same process, re-executed with it preloaded
        assert server.healthz()["status"] == "ok"
    finally:
        server.stop()
