"""``GET /metrics`` of a real ``realtime-erc serve`` counts what it served: parsed with
prometheus-client's own parser after sessions accepted, refused and streamed."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
from serve_fixtures import (
    ServeProcess,
    finals,
    metric_sum,
    parse_metrics,
    short_recording,
    start_server,
)
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from realtime_erc.client import connect, stream_recording

pytestmark = pytest.mark.slow

ACCEPTED = 'erc_sessions_total{result="accepted"}'
FULL = 'erc_sessions_total{result="refused_full"}'
PROTOCOL = 'erc_sessions_total{result="refused_protocol"}'


@pytest.fixture(scope="module")
def server() -> ServeProcess:
    server = start_server("--set", "serve.max_sessions=1")
    yield server
    server.stop()


async def refused_close_code(url: str, first: bytes | str) -> int:
    async with ws_connect(url) as ws:
        try:  # a server at its limit may close before this is sent
            await ws.send(first)
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
        return ws.close_code


def test_metrics_parse_and_count_the_sessions_utterances_and_latencies(server, tmp_path):
    status, body = server.get("/metrics")
    assert status == 200
    before = parse_metrics(body)  # the text format parses, and nothing is counted yet
    assert before.get(ACCEPTED, 0) == 0 and before["erc_sessions_open"] == 0
    assert before.get("erc_utterances_total", 0) == 0
    recording = short_recording(tmp_path / "short", utterances=3)

    async def go() -> list[dict]:
        held = await connect(server.url, session_id="held")  # the one session allowed
        assert server.metrics()["erc_sessions_open"] == 1
        full = await refused_close_code(server.url, json.dumps({"type": "start",
                                        "schema": "erc.ingest/1"}))  # fmt: skip
        await held.end()
        assert [d async for d in held][-1]["state"] == "offline"
        for _ in range(100):  # the server lets the session go just after its close frame
            if server.metrics()["erc_sessions_open"] == 0:
                break
            await asyncio.sleep(0.05)
        protocol = await refused_close_code(server.url, b"\x01\x00\x00")  # media before start
        assert (full, protocol) == (1013, 1008)
        return await stream_recording(server.url, recording, session_id="streamed")

    documents = asyncio.run(go())
    events = finals(documents)
    assert len(events) == 3
    for _ in range(100):  # as above: the session is let go just after its close frame
        if (after := server.metrics())["erc_sessions_open"] == 0:
            break
        time.sleep(0.05)

    # sessions: what this test did
    assert after[ACCEPTED] == 2 and after[FULL] == 1 and after[PROTOCOL] == 1
    assert after["erc_sessions_open"] == 0 and after["erc_queued_media"] == 0

    # utterances: one per final event received, and each one's latency in the histogram
    assert after["erc_utterances_total"] == len(events)
    latencies = [e["latency_ms"]["total"] / 1000 for e in events]
    assert after["erc_final_latency_seconds_count"] == len(events)
    assert after["erc_final_latency_seconds_sum"] == pytest.approx(sum(latencies), rel=1e-6)
    buckets = {k: v for k, v in after.items() if k.startswith("erc_final_latency_seconds_bucket")}
    assert buckets, after
    for key, count in buckets.items():
        le = float(key.split('le="')[1].split('"')[0])
        assert count == sum(1 for x in latencies if x <= le or math.isinf(le)), key

    provisional = [d for d in documents if d["schema"] == "erc.emotion/1" and d["provisional"]]
    assert after["erc_provisional_latency_seconds_count"] == len(provisional)

    # the engine ran the sessions' steps in batches
    assert metric_sum(after, "erc_model_batch_size_count") > 0
    assert metric_sum(after, "erc_model_batch_size_sum") >= metric_sum(
        after, "erc_model_batch_size_count"
    )


def test_metrics_is_the_prometheus_text_format(server):
    status, body = server.get("/metrics")
    assert status == 200
    for name, kind in [
        ("erc_sessions_open", "gauge"), ("erc_queued_media", "gauge"),
        ("erc_sessions_total", "counter"), ("erc_utterances_total", "counter"),
        ("erc_shed_total", "counter"), ("erc_final_latency_seconds", "histogram"),
        ("erc_provisional_latency_seconds", "histogram"), ("erc_model_batch_size", "histogram"),
    ]:  # fmt: skip
        assert f"# HELP {name} " in body and f"# TYPE {name} {kind}\n" in body, name


def test_replicas_metrics_merge_into_one_exposition_labelled_by_replica() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from realtime_erc.serve.metrics import Metrics, ModelBatches, merge_replicas

    ingress = [Metrics(lambda: 2, lambda: 0), Metrics(lambda: 1, lambda: 0)]
    for m in ingress:
        m.accepted()
    ingress[0].accepted()
    asr = ModelBatches("asr")
    for size in (1, 3):
        asr.observe(size)
    asr.call(0.09)
    ingress[0].remote("asr")(0.1)  # the round trip of that batch's call, from the ingress
    texts = {"ingress-a": ingress[0].text().decode(), "ingress-b": ingress[1].text().decode()}
    text = merge_replicas({**texts, "asr-1": asr.text()})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "erc_sessions_created" not in families
    accepted = {s.labels["replica"]: s.value for s in families["erc_sessions"].samples}
    assert accepted == {"ingress-a": 2.0, "ingress-b": 1.0}
    open_now = {s.labels["replica"]: s.value for s in families["erc_sessions_open"].samples}
    assert open_now == {"ingress-a": 2.0, "ingress-b": 1.0}
    batches = {(s.name, s.labels["replica"]): s.value
               for s in families["erc_model_batch_size"].samples
               if s.labels.get("model") == "asr" and "le" not in s.labels}  # fmt: skip
    assert batches == {("erc_model_batch_size_sum", "asr-1"): 4.0,
                       ("erc_model_batch_size_count", "asr-1"): 2.0}  # fmt: skip
    # a hop's cost: the ingress's round trip less the replica's time on the batch
    sums = {(f.name, s.labels["replica"]): s.value for f in families.values() for s in f.samples
            if s.name.endswith("_seconds_sum") and s.value}  # fmt: skip
    assert sums == {("erc_remote_call_seconds", "ingress-a"): 0.1,
                    ("erc_model_call_seconds", "asr-1"): 0.09}  # fmt: skip
    assert text.count("# TYPE erc_sessions_total counter") == 1  # one family, every replica
