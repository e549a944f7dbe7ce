"""The capture page (dashboard/capture.html) against ``realtime-erc serve``, in Debian's headless
Chromium with fake media devices fed from files: the demo's first utterances as the microphone,
the demo's video as the camera. Click Start, hear the speech, click Stop: the page shows the
session's final events (text matching the speech, a label each) and a chart per speaker."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from capture_support import FPS, capture, check_session  # noqa: E402
from cli_support import popen_cli  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``realtime-erc serve --port 0 --no-zmq``; its http:// address once it serves."""
    proc = popen_cli("serve", "--port", "0", "--no-zmq")
    lines: list[str] = []
    seen = threading.Condition()

    def read() -> None:
        for line in proc.stdout:
            with seen:
                lines.append(line)
                seen.notify_all()
        with seen:
            seen.notify_all()

    threading.Thread(target=read, daemon=True).start()
    found: list[re.Match] = []

    def serving() -> bool:
        found[:] = [m for line in lines if (m := re.search(r"serving on (http://\S+)", line))]
        return bool(found) or proc.poll() is not None

    try:
        with seen:
            seen.wait_for(serving, timeout=240)  # the models load first (slow on a busy CPU)
        if not found:
            proc.kill()
            pytest.fail(f"serve did not start:\n{''.join(lines)}\n{proc.stderr.read()}")
        yield found[0].group(1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_capture_page_streams_microphone_and_camera_and_shows_the_emotions(
    server, fake_media_browser, media, tmp_path
):
    page, state = capture(fake_media_browser, server, media, camera=True)
    check_session(page, state, media)
    assert state["video"] is True
    # ≤ 5 fps on the session clock, and most of them (the camera delivers 5 fps)
    assert 2 * state["audio_s"] <= state["frames"] <= FPS * state["audio_s"] + 2, state
    page.screenshot(path=str(tmp_path / "capture.png"), full_page=True)
    page.context.close()


def test_capture_page_works_without_the_camera(server, fake_media_browser, media):
    # and with the audio at the device's own rate, downsampled to 16 kHz by pcm-worklet.js
    page, state = capture(
        fake_media_browser, server, media, camera=False, query="?audio_context=native"
    )
    check_session(page, state, media)
    assert state["video"] is False and state["frames"] == 0, state
    info = page.locator("#media-info").inner_text()
    assert re.search(r"microphone (\d+) Hz → 16000 Hz · no camera", info), info
    page.context.close()


def test_capture_page_shows_the_servers_error(server, fake_media_browser):
    context = fake_media_browser.new_context(permissions=["microphone", "camera"])
    page = context.new_page()
    page.goto(server + "capture.html?session_id=not%20a%20session%20id")
    page.click("#start")
    page.wait_for_selector('#state[data-state="error"]', timeout=30_000)
    error = page.locator("#error")
    assert error.is_visible() and error.get_attribute("data-code") == "bad_start"
    assert "session_id" in error.inner_text()
    assert page.evaluate("window.ercCapture.closeCode") == 1008
    assert page.locator("#start").inner_text() == "Start"  # and it can start again
    context.close()
