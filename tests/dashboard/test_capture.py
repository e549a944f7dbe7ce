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

import cv2
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli_support import DEMO, popen_cli  # noqa: E402
from conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

from realtime_erc.sources.recording import read_recording  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SAMPLE_RATE = 16000
UTTERANCES = 3
SILENCE_S = 2.0
W, H, FPS = 320, 240, 5


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """Frames (BGR, W x H) as a 4:2:0 YUV4MPEG2 file, what Chromium's fake camera reads."""
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for image in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, U, V planes
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    """speech.wav: the demo's first utterances at 16 kHz mono, then silence (Chromium loops
    it); camera.y4m: the demo's video at 5 fps, 320x240."""
    rec = read_recording(DEMO)
    said = rec.annotations[:UTTERANCES]
    audio = rec.read_audio()[: int((said[-1].end + 0.4) * SAMPLE_RATE)]
    audio = np.concatenate([audio, np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)])
    folder = tmp_path_factory.mktemp("fake-media")
    wav = folder / "speech.wav"
    sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
    duration = len(audio) / SAMPLE_RATE
    frames = []
    for _, t, image in rec.iter_frames():
        if t >= duration:
            break
        if len(frames) < t * FPS + 1e-6:  # every frame at or after each 1/FPS step
            frames.append(cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA))
    assert len(frames) >= duration * FPS - 2
    return {"wav": wav, "y4m": write_y4m(folder / "camera.y4m", frames), "said": said,
            "duration": duration}  # fmt: skip


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


@pytest.fixture(scope="module")
def fake_media_browser(media) -> Iterator:
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


def capture(browser, url: str, media: dict, camera: bool, query: str = "") -> tuple[object, dict]:
    """Open the capture page, click Start, let the file's speech play once, click Stop, wait
    for the session to end; the page and its state (window.ercCapture)."""
    context = browser.new_context(
        viewport={"width": 1200, "height": 900}, permissions=["microphone", "camera"]
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url + "capture.html" + query)
    page.wait_for_selector('#state[data-state="idle"]', timeout=10_000)
    if not camera:
        page.uncheck("#use-video")
    page.click("#start")
    page.wait_for_selector('#state[data-state="live"]', timeout=60_000)
    # the whole file once (its speech, then silence) on the session clock; Chromium then
    # loops it, and the next round's speech starts only after its leading silence
    page.wait_for_function(
        f"window.ercCapture.audioSamples / 16000 >= {media['duration']:.2f}",
        timeout=int(media["duration"] * 1000) + 60_000,
        polling=100,
    )
    page.click("#start")  # now "Stop"
    page.wait_for_selector(
        '#state[data-state="ended"], #state[data-state="error"]', timeout=150_000
    )
    state = page.evaluate(
        """() => { const s = window.ercCapture; return {
             phase: s.phase, errors: s.errors, frames: s.frames, video: s.video,
             audio_s: s.audioSamples / 16000, session: s.sessionId, status: s.status,
             labels: s.labels, close: s.closeCode }; }"""
    )
    assert not problems, problems
    return page, state


def check_session(page, state: dict, media: dict) -> None:
    assert state["phase"] == "ended" and state["close"] == 1000, state
    assert not state["errors"] and page.locator("#error").is_hidden(), state
    assert state["status"] == "offline", state
    rows = page.locator('#utterances li[data-provisional="false"]')
    finals = [
        {
            "id": rows.nth(i).get_attribute("data-utterance"),
            "speaker": rows.nth(i).get_attribute("data-speaker"),
            "text": rows.nth(i).locator(".text").inner_text(),
            "label": rows.nth(i).locator(".lbl").inner_text(),
        }
        for i in range(rows.count())
    ]
    assert len(finals) >= 2, (finals, state)
    assert page.locator('#utterances li[data-provisional="true"]').count() == 0
    for final in finals:
        assert final["label"] and final["label"] in state["labels"], (final, state["labels"])
    heard = words(" ".join(f["text"] for f in finals))
    expected = words(" ".join(a.text for a in media["said"]))
    assert len(heard & expected) >= 0.6 * len(expected), (heard, expected)
    # an emotion-over-time chart per speaker, a point per final utterance
    for speaker in {f["speaker"] for f in finals}:
        chart = page.locator(f'#charts .chart[data-speaker="{speaker}"]')
        assert chart.count() == 1, speaker
        mine = [f for f in finals if f["speaker"] == speaker]
        assert chart.locator(".point").count() == len(mine)
        assert chart.locator("rect.band").count() == len(mine)
        assert int(chart.get_attribute("data-series")) >= 1
        box = chart.locator("svg").bounding_box()
        assert box["width"] > 200 and box["height"] > 100, box
    assert page.locator("#charts .chart").count() == len({f["speaker"] for f in finals})


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
