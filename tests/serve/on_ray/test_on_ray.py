"""``realtime-erc serve --ray`` on a local Ray (run inside a private network namespace by
tests/serve/test_serve_ray.py): the Python client and the browser capture page stream through
it, a killed ingress replica's session goes on over a new connection, and /metrics answers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from capture_support import capture, check_session
from cli_support import DEMO, ROOT, short_recording

from realtime_erc.client import stream_recording
from realtime_erc.sources.recording import read_recording

PORT = 8765


@pytest.fixture(scope="module")
def ray_server() -> Iterator[str]:
    """``realtime-erc serve --ray`` (a local Ray of its own); its http:// address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_erc", "serve", "--ray", "--port", str(PORT)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "250"},  # the announcement on one line
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "sessions: ws://" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(300)
        found = re.search(r"serving on Ray: (http://\S+)", "".join(lines))
        if found is None:
            pytest.fail("serve --ray did not start:\n" + "".join(lines)[-4000:])
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)  # the application is deleted, the local Ray shut down
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    assert code == 0, "".join(lines)[-4000:]


def run_async(coroutine):
    """``asyncio.run`` on a thread of its own: Playwright's sync API keeps a loop running on
    this one once the browser fixture is up."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def sessions_url(http: str) -> str:
    return http.replace("http://", "ws://").rstrip("/") + "/v1/sessions"


def finals(documents: list[dict]) -> list[dict]:
    return [d for d in documents if d.get("schema") == "erc.emotion/1" and not d["provisional"]]


def test_haproxy_hands_the_connections_to_the_ingress_replica(ray_server) -> None:
    """serve.ray_front = "haproxy" (the default): HAProxy owns the public port, and the ingress
    replica listens on a port of its own (Serve's direct ingress range) on loopback."""
    import psutil

    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    owner = {c.laddr.port: c.pid for c in listening}
    assert psutil.Process(owner[PORT]).name() == "haproxy"
    direct = [c for c in listening if 30000 <= c.laddr.port <= 31000]
    assert direct and all(c.laddr.ip == "127.0.0.1" for c in direct), direct
    titles = [" ".join(psutil.Process(c.pid).cmdline()) for c in direct]
    assert all("ingress" in title for title in titles), titles


def test_the_client_streams_a_recording(ray_server, tmp_path) -> None:
    """... and the ingress replica publishes the same documents on ZeroMQ."""
    import zmq

    recording = short_recording(tmp_path / "three", utterances=3)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.connect("tcp://127.0.0.1:5556")  # output.zmq.endpoint + the replica's rank, 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(1.0)  # ZeroMQ's slow joiner: subscribed before the session starts
    try:
        documents = run_async(stream_recording(sessions_url(ray_server), recording, pace="max"))
        published = []
        while sub.poll(5000):
            published.append(json.loads(sub.recv_multipart()[1]))
            if published[-1].get("state") == "offline":
                break
    finally:
        sub.close(0)
        context.term()
    assert ray_server.startswith(f"http://127.0.0.1:{PORT}/")
    assert [d["utterance_id"] for d in finals(documents)] == [0, 1, 2]
    assert all(d["text"] and d["label"] for d in finals(documents))
    assert documents[-1]["state"] == "offline"
    assert finals(published) == finals(documents)


def scrape(http: str) -> dict[tuple[str, str], float]:
    """``/metrics``: ``(sample name, replica) → value`` summed over the other labels, where
    the labels say ``model`` or ``deployment`` (batch sizes, call times) that joins the name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(http + "metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            which = sample.labels.get("model") or sample.labels.get("deployment")
            name = sample.name + (f":{which}" if which else "")
            key = (name, sample.labels["replica"])
            out[key] = out.get(key, 0.0) + sample.value
    return out


def by_replica(metrics: dict[tuple[str, str], float], name: str) -> dict[str, float]:
    return {replica: v for (n, replica), v in metrics.items() if n == name}


def test_metrics_of_every_deployment(ray_server) -> None:
    metrics = scrape(ray_server)
    accepted = by_replica(metrics, "erc_sessions_total")
    assert len(accepted) == 1 and list(accepted.values()) == [1.0], accepted
    assert list(by_replica(metrics, "erc_utterances_total").values()) == [3.0]
    # the model deployments count their own batches: three utterances each went through
    for model in ("asr", "text", "engine"):
        sizes = by_replica(metrics, f"erc_model_batch_size_sum:{model}")
        assert len(sizes) == 1 and next(iter(sizes)).startswith(f"{model}-"), metrics
        assert list(sizes.values()) == [3.0], (model, sizes)
        # ... and time them, as the ingress times its calls to them: the hop is the difference
        calls = by_replica(metrics, f"erc_model_call_seconds_count:{model}")
        trips = by_replica(metrics, f"erc_remote_call_seconds_count:{model}")
        assert list(calls.values()) == [3.0] and list(trips.values()) == [3.0], (calls, trips)
        spent = by_replica(metrics, f"erc_model_call_seconds_sum:{model}")
        waited = by_replica(metrics, f"erc_remote_call_seconds_sum:{model}")
        assert 0 < sum(spent.values()) < sum(waited.values()), (spent, waited)


def test_the_capture_page(ray_server, fake_media_browser, media) -> None:
    page, state = capture(fake_media_browser, ray_server, media, camera=True)
    check_session(page, state, media)
    assert state["video"] is True and state["frames"] > 0, state
    page.context.close()


def kill_ingress_replica() -> str:
    """``ray.kill`` of the (only) ingress replica's actor, from a driver joined to the server's
    Ray; the actor's name."""
    import ray

    ray.init(address="auto", logging_level="warning", log_to_driver=False)
    try:
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if "ingress" in a["name"] and a["name"].startswith("SERVE_REPLICA")]  # fmt: skip
        assert len(names) == 1, names
        ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]))
        return names[0]["name"]
    finally:
        ray.shutdown()


def test_a_session_goes_on_after_its_replica_is_killed(ray_server) -> None:
    """The demo, its ingress replica killed after the second final event: every one of its
    utterances still comes back, once, in order."""
    killed: list[str] = []
    two_finals = threading.Event()

    def on_document(document: dict) -> None:
        if len(finals([document])) and document["utterance_id"] >= 1:
            two_finals.set()

    async def run() -> list[dict]:
        streaming = asyncio.create_task(stream_recording(
            sessions_url(ray_server), DEMO, pace="max", session_id="kept",
            on_document=on_document,
        ))  # fmt: skip
        while not two_finals.is_set() and not streaming.done():
            await asyncio.sleep(0.1)
        killed.append(await asyncio.to_thread(kill_ingress_replica))
        return await streaming

    documents = run_async(run())
    assert killed
    ids = [d["utterance_id"] for d in finals(documents)]
    # every utterance once, in order: none lost, none published twice under another id
    assert ids == list(range(len(read_recording(DEMO).annotations))), ids
    onlines = [d for d in documents if d.get("schema") == "erc.status/1"
               and d["state"] == "online"]  # fmt: skip
    assert len(onlines) == 2, onlines
    context = onlines[1]["context"]
    assert context["kept"] == ["conversation"] and "speakers" in context["lost"]
    # it goes on after the last utterance the engine had, on the same session clock
    before = [d for d in finals(documents) if d["utterance_id"] < context["next_utterance_id"]]
    after = [d for d in finals(documents) if d["utterance_id"] >= context["next_utterance_id"]]
    assert before and after
    assert context["resumed_at"] == pytest.approx(before[-1]["end"], abs=0.05)
    assert all(d["start"] >= context["resumed_at"] - 0.5 for d in after)
    assert documents[-1]["state"] == "offline"


def test_metrics_after_a_replica_was_lost(ray_server) -> None:
    # the lost replica's last report stays (until it is stale) beside its successor's
    accepted = by_replica(scrape(ray_server), "erc_sessions_total")
    assert len(accepted) == 2, accepted
    assert all(r.startswith("ingress-") for r in accepted)
    assert sorted(accepted.values()) == [1.0, 3.0]  # 3 = client, capture page, "kept"


def test_requests_that_arrive_during_a_batch_are_the_next_batch(ray_server) -> None:
    """Eight utterances sent to the ASR deployment 20 ms apart, each taking longer than that to
    transcribe: those that arrive while a batch runs go through together next (Serve alone
    would have made each a batch of its own, queued behind the one running)."""
    import ray
    from ray import serve

    from realtime_erc.serve.on_ray import APP_NAME

    demo = read_recording(DEMO)
    first = demo.annotations[0]
    segment = demo.read_audio()[int(first.start * 16_000) : int(first.end * 16_000)]
    before = scrape(ray_server)

    async def send() -> list:
        asr = serve.get_deployment_handle("asr", app_name=APP_NAME)

        async def one(i: int):
            await asyncio.sleep(0.02 * i)
            return await asr.remote((segment, 0.0))

        return await asyncio.gather(*(one(i) for i in range(8)))

    ray.init(address="auto", logging_level="warning", log_to_driver=False)
    try:
        transcripts = run_async(send())
    finally:
        ray.shutdown()
    assert len({t.text for t in transcripts}) == 1 and transcripts[0].text.strip()

    def added(metrics, name: str) -> float:
        (now,) = by_replica(metrics, f"{name}:asr").values()
        return now - sum(by_replica(before, f"{name}:asr").values())

    for _ in range(20):  # the replica reports each batch in the background
        after = scrape(ray_server)
        if added(after, "erc_model_batch_size_sum") == 8:
            break
        time.sleep(0.25)
    assert added(after, "erc_model_batch_size_sum") == 8, after
    assert added(after, "erc_model_batch_size_count") <= 6, after
