"""The capture page (dashboard/capture.html) driven in Debian's headless Chromium with fake
media devices fed from files: the demo's first utterances as the microphone, the demo's video
as the camera. Shared by the capture tests against ``serve`` and against ``serve --ray``."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from cli_support import DEMO

from realtime_erc.sources.recording import read_recording

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


def make_media(folder: Path) -> dict:
    """speech.wav: the demo's first utterances at 16 kHz mono, then silence (Chromium loops
    it); camera.y4m: the demo's video at 5 fps, 320x240."""
    rec = read_recording(DEMO)
    said = rec.annotations[:UTTERANCES]
    audio = rec.read_audio()[: int((said[-1].end + 0.4) * SAMPLE_RATE)]
    audio = np.concatenate([audio, np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)])
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
