"""The embedded amqtt broker: MQTT and MQTT-over-WebSockets on loopback, and `--broker embedded`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request

import pytest

from realtime_erc.outputs.broker import BrokerError, EmbeddedBroker
from realtime_erc.outputs.mqtt import BrokerAddress, MqttOptions, MqttPublisher, make_client


def _status(state: str) -> dict:
    return {
        "schema": "erc.status/1", "session_id": "e1", "state": state, "model": None,
        "label_set": "meld7", "at": "2026-11-22T10:00:00.000Z",
    }  # fmt: skip


async def test_embedded_broker_carries_tcp_to_websockets_with_retained_status():
    async with EmbeddedBroker() as broker:
        assert broker.url.startswith("mqtt://127.0.0.1:")
        pub = MqttPublisher(broker.url, "e1", "meld7")
        await pub.start()
        await pub.publish("erc/e1/status", _status("online"))
        while pub.pending:
            await asyncio.sleep(0.01)
        # a websockets client (as the dashboard is) subscribing later gets the retained status
        ws = BrokerAddress("127.0.0.1", broker.ws_port)
        client = make_client(ws, MqttOptions(), transport="websockets")
        async with client:
            await client.subscribe("erc/+/status", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(client.messages))
        await pub.close()
    assert message.retain
    assert json.loads(message.payload)["state"] == "online"


async def test_embedded_broker_binds_loopback_only_and_stops():
    async with EmbeddedBroker() as broker:
        port = broker.port
        for host in ("127.0.0.1",):
            with socket.create_connection((host, port), timeout=2):
                pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


async def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BrokerError, match="in use"):
            await EmbeddedBroker(port=s.getsockname()[1]).start()


@pytest.mark.slow
def test_replay_with_embedded_broker_serves_dashboard_and_mqtt(start_cli, demo_dir):
    """`replay --broker embedded` prints the broker and dashboard addresses, serves the page and
    publishes on MQTT while the session runs."""
    proc = start_cli("replay", str(demo_dir), "--speed", "1.0", "--no-zmq", "--broker", "embedded")
    lines = []
    deadline = time.monotonic() + 120
    dashboard = broker = None
    while time.monotonic() < deadline and not (dashboard and broker):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"dashboard: (http://127\.0\.0\.1:\d+/\?broker=ws://\S+)", line):
            dashboard = m.group(1)
        if m := re.search(r"MQTT broker \(embedded\): (mqtt://127\.0\.0\.1:\d+)", line):
            broker = m.group(1)
    assert dashboard and broker, "".join(lines) + proc.stderr.read()
    page = urllib.request.urlopen(dashboard, timeout=5).read().decode()
    assert "vendor/mqtt.min.js" in page
    config = json.loads(urllib.request.urlopen(dashboard.split("?")[0] + "config.json").read())
    assert config["broker"].startswith("ws://127.0.0.1:")

    async def first_status() -> dict:
        client = make_client(BrokerAddress.parse(broker), MqttOptions())
        async with client:
            await client.subscribe("erc/+/status", qos=1)
            async with asyncio.timeout(60):
                async for message in client.messages:
                    return json.loads(message.payload)

    assert asyncio.run(first_status())["state"] == "online"
    proc.terminate()
    assert proc.wait(60) == 0
