"""A mosquitto broker for tests: free loopback ports, generated config in a temp dir, stopped by
PID (see :class:`realtime_erc.outputs.broker.MosquittoBroker`).

Use it with ``from mqtt_fixtures import mosquitto_fixture  # noqa: F401`` (the fixture is named
``mosquitto``); a plain module rather than a second ``conftest.py``, whose name would shadow the
root one that other tests import from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
