"""``realtime-erc bench stream``: how fast the stream's transports carry documents on loopback.

For ZeroMQ (PUB/SUB) and MQTT (QoS 1 through mosquitto, started on free ports unless ``--mqtt``
names a broker) with the real publisher and subscriber classes:

- **latency**: ``events`` real ``erc.emotion/1`` documents at ``rate`` per second; for each, the
  time from ``publish()`` being called to the subscriber handing over the parsed document
  (p50/p99 per run);
- **throughput**: ``burst`` documents published as fast as the publisher accepts them; events
  per second = documents received / (last received − first published).

Publisher and subscriber share one process and one event loop (one core), so the throughput is
a floor for what separate processes reach. Each figure is the median over ``runs`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.events import utc_timestamp
from realtime_erc.outputs.topics import topic_for


def _document(i: int) -> dict:
    return {
        "schema": "erc.emotion/1",
        "session_id": "bench",
        "utterance_id": i,
        "speaker": "AB"[i % 2],
        "start": float(i),
        "end": i + 1.5,
        "text": "that is the most wonderful news I have heard all year",
        "label": "joy",
        "scores": {
            "neutral": 0.05,
            "surprise": 0.21,
            "fear": 0.01,
            "sadness": 0.01,
            "joy": 0.70,
            "disgust": 0.01,
            "anger": 0.01,
        },
        "label_set": "meld7",
        "modalities": {"text": True, "audio": True, "visual": True},
        "provisional": False,
        "model": "bench@0",
        "latency_ms": {"total": 1.0},
        "emitted_at": utc_timestamp(),
    }


@dataclass
class _Link:
    """A connected publisher/subscriber pair."""

    publisher: object
    subscriber: object


@contextlib.asynccontextmanager
async def _zmq_link() -> AsyncIterator[_Link]:
    from realtime_erc.outputs.zmq import ZmqPublisher, ZmqSubscriber

    publisher = ZmqPublisher("tcp://127.0.0.1:*", wait_for_subscriber_s=5.0)
    publisher.bind()
    subscriber = ZmqSubscriber(publisher.bound_endpoint, "erc/")
    subscriber.connect()
    await publisher.start()
    await asyncio.sleep(0.2)  # the subscription reaches the socket's filter
    try:
        yield _Link(publisher, subscriber)
    finally:
        subscriber.close()
        await publisher.close()


@contextlib.asynccontextmanager
async def _mqtt_link(url: str) -> AsyncIterator[_Link]:
    from realtime_erc.outputs.mqtt import MqttOptions, MqttPublisher, MqttSubscriber

    options = MqttOptions(url=url, qos=1, buffer_size=100_000)
    subscriber = MqttSubscriber(options, session_id="bench")
    await subscriber.open()
    publisher = MqttPublisher(options, "bench", "meld7")
    await publisher.start()
    try:
        yield _Link(publisher, subscriber)
    finally:
        await publisher.close()
        await subscriber.close()


async def _measure(link: _Link, count: int, rate: float | None) -> tuple[list[float], float, int]:
    """Publish ``count`` documents (paced at ``rate``/s, or unpaced) and receive them.
    Returns (latencies in ms, events/s, documents received)."""
    sent: dict[int, float] = {}
    latencies: list[float] = []
    last_rx = 0.0

    async def receive() -> None:
        nonlocal last_rx
        async for _, doc in link.subscriber:  # type: ignore[attr-defined]
            if doc.get("schema") != "erc.emotion/1":
                continue
            t = time.perf_counter()
            uid = doc["utterance_id"]
            if uid in sent:
                latencies.append((t - sent.pop(uid)) * 1000)
                last_rx = t
            if len(latencies) >= count:
                return

    receiver = asyncio.create_task(receive())
    docs = [_document(i) for i in range(count)]
    start = time.perf_counter()
    for i, doc in enumerate(docs):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        sent[i] = time.perf_counter()
        await link.publisher.publish(topic_for("erc", doc), doc)  # type: ignore[attr-defined]
        if not rate and i % 64 == 0:
            await asyncio.sleep(0)  # let the receiver run in this shared loop
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receiver, 30)
    receiver.cancel()
    received = len(latencies)
    elapsed = (last_rx - start) if received else float("nan")
    return latencies, received / elapsed if received else 0.0, received


async def _transport_row(name: str, link_factory, events: int, rate: float, burst: int, runs: int):
    p50, p99, eps, lost = [], [], [], 0
    for _ in range(runs):
        async with link_factory() as link:
            lat, _, received = await _measure(link, events, rate)
            p50.append(percentile(lat, 50))
            p99.append(percentile(lat, 99))
            lost += events - received
        async with link_factory() as link:
            _, rate_eps, received = await _measure(link, burst, None)
            eps.append(rate_eps)
            lost += burst - received
    return {
        "transport": name,
        "runs": runs,
        "latency_p50_ms": statistics.median(p for p in p50 if p is not None) if any(p50) else None,
        "latency_p99_ms": statistics.median(p for p in p99 if p is not None) if any(p99) else None,
        "events_per_s": statistics.median(eps),
        "lost": lost,
    }


def run_stream_benchmark(
    events: int = 500,
    rate: float = 200.0,
    burst: int = 5000,
    runs: int = 3,
    mqtt_url: str | None = None,
) -> BenchReport:
    """Measure ZeroMQ and MQTT; starts (and stops) mosquitto unless ``mqtt_url`` is given."""
    from realtime_erc.outputs.broker import MosquittoBroker

    report = BenchReport(
        name="stream",
        title="Stream transports on loopback: publish → receive",
        columns=[
            ("transport", "transport"),
            ("runs", "runs"),
            ("latency_p50_ms", "latency p50 (ms)"),
            ("latency_p99_ms", "latency p99 (ms)"),
            ("events_per_s", "sustained events/s"),
            ("lost", "lost"),
        ],
        meta={"events_per_latency_run": events, "rate_per_s": rate, "burst": burst},
    )

    async def main() -> None:
        report.rows.append(await _transport_row("zeromq", _zmq_link, events, rate, burst, runs))
        if mqtt_url:
            row = await _transport_row(
                "mqtt qos1", lambda: _mqtt_link(mqtt_url), events, rate, burst, runs
            )
            report.rows.append(row)
            return
        with MosquittoBroker(websockets=False, persistence=False) as broker:
            report.meta["broker"] = "mosquitto (started for the benchmark)"
            row = await _transport_row(
                "mqtt qos1 (mosquitto)", lambda: _mqtt_link(broker.url), events, rate, burst, runs
            )
            report.rows.append(row)

    asyncio.run(main())
    return report
