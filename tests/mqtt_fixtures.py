"""A mosquitto broker for tests: free loopback ports, generated config in a temp dir, stopped by
PID (see :class:`realtime_erc.outputs.broker.MosquittoBroker`).

Use it with ``from mqtt_fixtures import mosquitto_fixture  # noqa: F401`` (the fixture is named
``mosquitto``); a plain module rather than a second ``conftest.py``, whose name would shadow the
root one that other tests import from."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from realtime_erc.outputs.broker import MosquittoBroker, find_mosquitto


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running mosquitto with persistence (kill/stop and ``start()`` again to simulate an
    outage); skipped with the fix when mosquitto is not installed."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed: run `make setup` (apt-get install mosquitto)")
    broker = MosquittoBroker(directory=tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


class Subscriber:
    """A paho MQTT client subscribed to ``erc/#`` on ``mqtt://HOST:PORT``, collecting the
    documents the broker hands on."""

    def __init__(self, url: str) -> None:
        host, port = re.match(r"mqtt://([^:/]+):(\d+)", url).groups()
        self.documents: list[dict] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        # an empty payload clears a retained topic
        self.client.on_message = lambda c, u, m: (
            m.payload and self.documents.append(json.loads(m.payload))
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("erc/#", qos=1)
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10), f"no SUBACK from the broker at {url}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
