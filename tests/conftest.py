"""Shared fixtures: the demo recording, a free TCP port, and the CLI as a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_support import DEMO, cli, popen_cli  # noqa: E402


@pytest.fixture
def demo_dir() -> Path:
    return DEMO


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_cli():
    return cli


@pytest.fixture
def start_cli():
    procs: list[subprocess.Popen] = []

    def start(*args: str, **kwargs) -> subprocess.Popen:
        proc = popen_cli(*args, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser_page():
    """A page in Debian's headless Chromium, driven by Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed: run `make setup` (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        yield page
        browser.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    """The capture page's fake microphone and camera files (see capture_support)."""
    from capture_support import make_media

    return make_media(tmp_path_factory.mktemp("fake-media"))


@pytest.fixture(scope="module")
def fake_media_browser(media):
    """Headless Chromium whose microphone plays speech.wav and whose camera shows camera.y4m."""
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed: run `make setup` (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    args = [
        *CHROMIUM_ARGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={media['wav']}",
        f"--use-file-for-fake-video-capture={media['y4m']}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        yield browser
        browser.close()
