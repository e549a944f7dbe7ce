"""The web dashboard in Debian's headless Chromium (driven by Playwright), fed by mosquitto."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from matplotlib import image as mpimg
from mqtt_fixtures import mosquitto_fixture  # noqa: F401 - the "mosquitto" fixture

from realtime_erc.dashboard import DashboardServer
from realtime_erc.outputs.mqtt import MqttOptions, MqttPublisher
from realtime_erc.outputs.topics import topic_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _emotion(session: str, i: int, speaker: str, label: str, provisional: bool = False) -> dict:
    scores = {"neutral": 0.1, "joy": 0.1, "anger": 0.1, "sadness": 0.1}
    scores[label] = 0.7
    return {
        "schema": "erc.emotion/1", "session_id": session, "utterance_id": i, "speaker": speaker,
        "start": 3.0 * i, "end": 3.0 * i + 2, "text": "" if provisional else f"{label} line {i}",
        "label": label, "scores": scores, "label_set": "meld7",
        "modalities": {"text": not provisional, "audio": True, "visual": False},
        "provisional": provisional, "model": "test@1", "latency_ms": {"total": 250.0},
        "emitted_at": "2026-11-22T10:00:00.000Z",
    }  # fmt: skip


def _status(session: str, state: str) -> dict:
    return {
        "schema": "erc.status/1", "session_id": session, "state": state, "model": "test@1",
        "label_set": "meld7", "at": "2026-11-22T10:00:00.000Z",
    }  # fmt: skip


class BackgroundPublishers:
    """MqttPublishers running on their own event loop thread (the browser API is synchronous)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.publishers: dict[str, MqttPublisher] = {}

    def call(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def send(self, session: str, doc: dict, wait: bool = True) -> None:
        async def go() -> None:
            pub = self.publishers.get(session)
            if pub is None:
                options = MqttOptions(url=self.url, reconnect_min_s=0.1, reconnect_max_s=0.5)
                pub = self.publishers[session] = MqttPublisher(options, session, "meld7", "test@1")
                await pub.start()
            await pub.publish(topic_for("erc", doc), doc)
            while wait and pub.pending:
                await asyncio.sleep(0.02)

        self.call(go())

    def close(self) -> None:
        for pub in self.publishers.values():
            self.call(pub.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_dashboard_renders_retained_state_live_events_and_reconnects(
    mosquitto, browser_page, tmp_path
):
    page = browser_page
    pubs = BackgroundPublishers(mosquitto.url)
    try:
        # before the page opens: retained status + state of two sessions
        pubs.send("dash-1", _status("dash-1", "online"))
        pubs.send("dash-1", _emotion("dash-1", 0, "A", "joy"))
        pubs.send("dash-2", _status("dash-2", "online"))
        pubs.send("dash-2", _emotion("dash-2", 0, "Z", "sadness"))

        with DashboardServer(mosquitto.ws_url) as server:
            page.goto(server.url)
            page.wait_for_selector('#connection[data-state="connected"]', timeout=10_000)
            a = page.locator('[data-session="dash-1"] [data-speaker="A"] .current')
            a.wait_for(timeout=10_000)
            assert a.inner_text() == "joy"
            z = page.locator('[data-session="dash-2"] [data-speaker="Z"] .current')
            assert z.inner_text() == "sadness"
            assert page.locator('[data-session="dash-1"] [data-status="online"]').count() == 1

            # live: a provisional event, then its final one replaces it
            pubs.send("dash-1", _emotion("dash-1", 1, "B", "neutral", provisional=True))
            b = page.locator('[data-session="dash-1"] [data-speaker="B"] .current')
            b.wait_for(timeout=10_000)
            page.wait_for_function(
                'document.querySelector(\'[data-session="dash-1"] [data-speaker="B"] '
                ".current').classList.contains('provisional')"
            )
            pubs.send("dash-1", _emotion("dash-1", 1, "B", "anger"))
            page.wait_for_function(
                '(() => { const e = document.querySelector(\'[data-session="dash-1"] '
                "[data-speaker=\"B\"] .current'); return e && e.textContent === 'anger' && "
                "!e.classList.contains('provisional'); })()",
                timeout=10_000,
            )
            row = page.locator('[data-session="dash-1"] li[data-utterance="1"] .text')
            assert row.inner_text() == "anger line 1"
            # coloured by its emotion (--anger: #e5484d)
            assert row.evaluate("e => getComputedStyle(e).color") == "rgb(229, 72, 77)"
            assert page.locator('[data-session="dash-1"] [data-speaker="B"] .bar').count() == 4

            # the broker goes away and comes back: the page says so and recovers
            mosquitto.stop()
            page.wait_for_function(
                "document.getElementById('connection').dataset.state !== 'connected'",
                timeout=10_000,
            )
            mosquitto.start()
            pubs.send("dash-1", _emotion("dash-1", 2, "A", "sadness"))
            page.wait_for_selector('#connection[data-state="connected"]', timeout=15_000)
            page.locator('[data-session="dash-1"] li[data-utterance="2"]').wait_for(timeout=15_000)
            assert a.inner_text() == "sadness"

            pubs.send("dash-2", _status("dash-2", "offline"))
            page.locator('[data-session="dash-2"] [data-status="offline"]').wait_for(timeout=10_000)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
    finally:
        pubs.close()
    pixels = mpimg.imread(io.BytesIO(shot.read_bytes()))[..., :3]
    assert pixels.shape[0] > 400 and pixels.shape[1] >= 1200
    assert pixels.std() > 0.05  # not blank
    assert len({tuple(p) for p in (pixels[::8, ::8].reshape(-1, 3) * 255).astype(int)}) > 20


def _boxes_intersect(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_timeline_scrolls_in_its_own_area_below_the_speaker_cards(mosquitto, browser_page):
    """Many utterances of three speakers: at a wide and at a narrow viewport, the timeline
    scrolls inside its own box, which never intersects a speaker card."""
    page = browser_page
    pubs = BackgroundPublishers(mosquitto.url)
    labels = ["joy", "anger", "sadness", "neutral"]
    try:
        pubs.send("lay-1", _status("lay-1", "online"))
        with DashboardServer(mosquitto.ws_url) as server:
            page.goto(server.url)
            page.wait_for_selector('#connection[data-state="connected"]', timeout=10_000)
            for i in range(40):
                doc = _emotion("lay-1", i, "ABC"[i % 3], labels[i % 4])
                if i % 7 == 0:  # a long utterance: the card's quote must not grow the card
                    doc["text"] = " ".join([f"{labels[i % 4]} words"] * 40)
                pubs.send("lay-1", doc, wait=i == 39)
            page.locator('[data-session="lay-1"] li[data-utterance="39"]').wait_for(timeout=10_000)
            for width in (1200, 700, 420):
                page.set_viewport_size({"width": width, "height": 900})
                page.wait_for_timeout(200)
                timeline = page.locator('[data-session="lay-1"] .timeline')
                box = timeline.bounding_box()
                cards = page.locator('[data-session="lay-1"] .speaker')
                assert cards.count() == 3
                for i in range(3):
                    card = cards.nth(i).bounding_box()
                    assert not _boxes_intersect(box, card), (width, box, card)
                    assert card["y"] + card["height"] <= box["y"], (width, box, card)
                # its own scrolling area, following the newest row
                scroll = timeline.evaluate(
                    "e => [e.scrollHeight, e.clientHeight, e.scrollTop, "
                    "getComputedStyle(e).overflowY]"
                )
                assert scroll[0] > scroll[1] and scroll[3] == "auto", (width, scroll)
                last = page.locator('[data-session="lay-1"] li[data-utterance="39"]')
                last_box = last.bounding_box()
                assert box["y"] <= last_box["y"] and (
                    last_box["y"] + last_box["height"] <= box["y"] + box["height"] + 1
                ), (width, box, last_box)
                # nothing wider than the page
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
                    width
                )
    finally:
        pubs.close()
