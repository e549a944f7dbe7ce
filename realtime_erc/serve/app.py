"""``realtime-erc serve``: one ASGI application for many conversations.

- ``ws://HOST:PORT/v1/sessions``: the ingest protocol (docs/INGEST_PROTOCOL.md), one WebSocket a
  conversation; each session runs the same chain as ``run`` over models the server loads once
  (the engine's steps of concurrent sessions run as one batch);
- ``GET /healthz``, ``GET /metrics`` (Prometheus text format) and the dashboard's files.

Loopback by default; any other address requires access tokens (the server refuses to start
without them). A session beyond ``serve.max_sessions`` is refused with close code 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from realtime_erc.config import AsrConfig, Config, ServeOptions
from realtime_erc.errors import UserError
from realtime_erc.events import SAMPLE_RATE, Resumption
from realtime_erc.serve.metrics import Metrics
from realtime_erc.serve.protocol import (
    AUDIO,
    INTERNAL,
    NORMAL,
    POLICY,
    TOO_BIG,
    TRY_LATER,
    VIDEO,
    ProtocolError,
    Start,
    limits_document,
    parse_start,
    text_message,
)
from realtime_erc.serve.sessions import IngestSource, SharedPublisher, SocketPublisher

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "dashboard"
_SERVED = {".html", ".js", ".css", ".md"}
START_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 5.0
KEEP_IN_TOUCH_S = 5.0


class ServeError(UserError):
    """The server cannot start as configured; the message says what to change."""


def access_tokens(options: ServeOptions) -> tuple[str, ...]:
    """``serve.tokens`` and the lines of ``serve.token_file``."""
    tokens = list(options.tokens)
    if options.token_file:
        path = Path(options.token_file).expanduser()
        try:
            tokens += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as e:
            raise ServeError(
                f"serve.token_file {path}: {e.strerror}: give a readable file, one token a line"
            ) from None
    return tuple(tokens)


def check_bind(options: ServeOptions) -> None:
    """Anything but loopback needs access tokens: refuse to start without them."""
    try:
        loopback = options.host == "localhost" or ipaddress.ip_address(options.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not access_tokens(options):
        raise ServeError(
            f"serve.host {options.host!r} is not loopback, and no access tokens are set: set "
            "serve.tokens (or serve.token_file), or bind 127.0.0.1"
        )


def limit_model_threads(config: Config) -> AsrConfig:
    """``serve.model_threads`` per model call, for this process (torch, OpenBLAS/OpenMP);
    the ASR options that give Whisper as many.

    One thread per call: with a team per call (OpenBLAS, OpenMP, Whisper's) the teams spin
    waiting on each other's preempted threads. At 10 sessions on 2 cores p95
    end-of-speech→final went 1.54 s → 1.15 s, CPU 131 % → 105 %."""
    threads = config.serve.model_threads
    if not threads:
        return config.asr
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    torch.set_num_threads(threads)
    if config.asr.cpu_threads:
        return config.asr
    return config.asr.with_values({"cpu_threads": threads})


class Server:
    """The state behind the app: shared models and outputs, open sessions, metrics."""

    def __init__(self, config: Config, remote: Any = None) -> None:
        """``remote``: the model deployments of ``serve --ray``
        (:class:`~realtime_erc.serve.on_ray.RemoteModels`) that transcribe, encode the text and
        step the engine instead of models loaded here."""
        check_bind(config.serve)
        self.config = config
        self.options = config.serve
        self.tokens = access_tokens(config.serve)
        self.metrics = Metrics(lambda: len(self.sessions), self._queue_depth)
        self.remote = remote.timed(self.metrics.remote) if remote is not None else None
        self.models: Any = None  # SessionModels
        self.sessions: dict[str, IngestSource] = {}
        self._pending = 0  # accepted sockets that have not sent "start" yet
        self._shared: list[Any] = []
        self._keeper: asyncio.Task | None = None
        self._sessions_changed = asyncio.Event()  # serve --ray: report without waiting

    async def start(self) -> None:
        """Load the models once and start the outputs every session shares (ZeroMQ, JSONL)."""
        from realtime_erc.batching import MicroBatcher
        from realtime_erc.engine import AsyncEngine
        from realtime_erc.session import build_publishers, load_models
        from realtime_erc.speech.asr import Transcriber
        from realtime_erc.speech.speakers import embed_voices, load_voice_encoder

        def load() -> Any:
            asr = limit_model_threads(self.config)
            models = load_models(self.config)
            batch = self.metrics.batch
            warm_up = np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE).astype(np.float32)
            if self.remote is not None:
                models.asr_batcher = self.remote.asr
            else:
                # Each shared model runs the sessions' requests that are ready together as
                # one batch (see docs/benchmarks/serve.md for what that gains per model).
                transcriber = models.transcriber = Transcriber(asr)
                transcriber.transcribe(warm_up)  # first-call allocations now, not in a session
                models.asr_batcher = MicroBatcher(
                    lambda items: transcriber.transcribe_batch(*zip(*items, strict=True)),
                    on_batch=batch("asr"),
                )
            if self.config.speakers.enabled:
                encoder = models.voice_encoder = load_voice_encoder()
                shortest = self.config.speakers.min_speech_s
                embed_voices(encoder, [warm_up], 0.0)
                models.voice_batcher = MicroBatcher(
                    lambda clips: embed_voices(encoder, clips, shortest), on_batch=batch("voices")
                )
            if models.engine is not None:
                models.batcher = (
                    self.remote.engine
                    if self.remote is not None
                    else AsyncEngine(models.engine, on_batch=batch("engine"))
                )
            if models.text is not None and self.remote is not None:
                models.text_batcher = self.remote.text
            elif models.text is not None:
                text = models.text

                def encode(items: list[tuple[str, str]]) -> list[Any]:
                    return text.encode_batch([t for t, _ in items], [c for _, c in items])

                models.text_batcher = MicroBatcher(encode, on_batch=batch("text"))
                text.encode("warm up")  # loads the encoder now, not in the first session
            for head in (models.speech_head, models.scores_head):
                if head is not None:
                    _ = head.extractor  # its Whisper encoder, shared by the sessions' views
            return models

        # Every session's blocking work (VAD, features, ASR, encoders) runs in the loop's
        # default executor: size it for the sessions, not for one.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(min(64, 8 + 4 * self.options.max_sessions), "erc-work")
        )
        self.models = await asyncio.to_thread(load)
        if self.remote is not None:
            self._keeper = asyncio.create_task(self._keep_in_touch(), name="keep in touch")
        own_mqtt = self.config.with_values({"output.mqtt.enabled": False})
        for publisher in build_publishers(own_mqtt, session_id="server"):
            await publisher.start()
            self._shared.append(publisher)

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
        for source in list(self.sessions.values()):
            source.end_now()
        for publisher in self._shared:
            with contextlib.suppress(Exception):
                await publisher.close()
        for batcher in self.models.batchers() if self.models else ():
            await batcher.close()

    async def _keep_in_touch(self) -> None:
        """``serve --ray``: report this replica's metrics to the hub, and tell the engine
        deployment which sessions are open here, so that it forgets only those of a lost
        replica (``serve.resume_s`` after their last word). A session opening or closing
        is reported at once: a replica may be lost before the next round."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sessions_changed.wait(), KEEP_IN_TOUCH_S)
            self._sessions_changed.clear()
            try:
                await self.remote.engine.touch(list(self.sessions))
                await self.remote.metrics.report(self.metrics.text().decode())
            except Exception:  # a deployment restarts; the next round tells it
                log.warning("a deployment did not answer", exc_info=True)

    async def metrics_text(self) -> bytes:
        """``/metrics``: this server's; on Ray every replica's, labelled by replica."""
        if self.remote is None:
            return self.metrics.text()
        await self.remote.metrics.report(self.metrics.text().decode())
        return (await self.remote.metrics.merged()).encode()

    async def _resumption(self, session_id: str) -> Resumption | None:
        """A session whose conversation state outlived the server replica that ran it (the
        engine deployment of ``serve --ray`` keeps it): it goes on after its last published
        utterance. None: a new session."""
        if self.remote is None:
            return None
        progress = await self.remote.engine.resume(session_id)
        if progress is None:
            return None
        return Resumption(
            at=progress.end, next_utterance_id=progress.utterance_id + 1,
            kept=("conversation",), lost=("speakers", "speaker_statistics"),
        )  # fmt: skip

    def _committer(self, session_id: str) -> Callable[[dict[str, Any]], None]:
        """Tells the engine deployment each final event published (where a resumed session
        goes on from), in the background."""
        pending: set[asyncio.Task] = set()

        def commit(document: dict[str, Any]) -> None:
            if document.get("schema") == "erc.emotion/1" and not document.get("provisional"):
                task = asyncio.ensure_future(
                    self.remote.engine.commit(session_id, document["utterance_id"])
                )
                pending.add(task)
                task.add_done_callback(pending.discard)

        return commit

    def _queue_depth(self) -> int:
        return sum(source.depth for source in self.sessions.values())

    # ------------------------------------------------------------------------------ sessions

    def _authorized(self, ws: WebSocket) -> bool:
        if not self.tokens:
            return True
        header = ws.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        given = given or ws.query_params.get("access_token", "")
        return any(hmac.compare_digest(given.encode(), t.encode()) for t in self.tokens)

    def _origin_allowed(self, ws: WebSocket) -> bool:
        origin = ws.headers.get("origin")
        if origin is None:  # not a browser
            return True
        own = {f"http://{ws.headers.get('host', '')}", f"https://{ws.headers.get('host', '')}"}
        return origin in own or origin in self.options.allowed_origins

    async def handle(self, ws: WebSocket) -> None:
        """One session, from the handshake to the close."""
        if not self._authorized(ws) or not self._origin_allowed(ws):
            self.metrics.refused("unauthorized")
            await ws.close(code=POLICY)  # before accepting: the handshake fails (HTTP 403)
            return
        await ws.accept()
        # a socket waiting for its "start" holds a place too: idle sockets cannot pile up
        if len(self.sessions) + self._pending >= self.options.max_sessions:
            self.metrics.refused("full")
            await _close(ws, ProtocolError(TRY_LATER, "busy", "the server is at its session "
                         "limit (serve.max_sessions): try again later"))  # fmt: skip
            return
        self._pending += 1
        try:
            start = await self._start_message(ws)
        except ProtocolError as e:
            self.metrics.refused("protocol")
            await _close(ws, e)
            return
        except WebSocketDisconnect:
            return
        finally:
            self._pending -= 1
        session_id = start.session_id or f"ws-{uuid.uuid4().hex[:8]}"
        if session_id in self.sessions:
            self.metrics.refused("protocol")
            await _close(ws, ProtocolError(POLICY, "session_in_use", f"session {session_id!r} "
                         "is open: use another session_id"))  # fmt: skip
            return
        try:
            resumed = await self._resumption(session_id)
            source = IngestSource(start, self.options, session_id=session_id,
                                  record=self._record_path(session_id),
                                  clock_start=resumed.at if resumed else 0.0)  # fmt: skip
        except Exception as e:  # the recording cannot be written, the engine is unreachable
            log.warning("session %s: %s", session_id, e)
            await _close(ws, ProtocolError(INTERNAL, "internal", f"the session failed: {e}"))
            return
        self.sessions[session_id] = source
        self.metrics.accepted()
        self._sessions_changed.set()
        try:
            await self._run(ws, start, session_id, source, resumed)
        finally:
            try:  # the recording is complete before the session counts as closed
                await asyncio.to_thread(source.close_recording)
            finally:
                del self.sessions[session_id]
                self._sessions_changed.set()
                if self.remote is not None:
                    await self.remote.engine.end_session(session_id)
                elif self.models.engine is not None:
                    self.models.engine.end_session(session_id)

    def _record_path(self, session_id: str) -> Path | None:
        """record_dir/<session id> (suffixed when a past session of that id is there); None:
        serve.record_dir is unset, nothing is recorded."""
        if not self.options.record_dir:
            return None
        root = Path(self.options.record_dir).expanduser()
        path, n = root / session_id, 1
        while path.exists():
            n += 1
            path = root / f"{session_id}-{n}"
        return path

    async def _start_message(self, ws: WebSocket) -> Start:
        try:
            message = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
        except TimeoutError:
            raise ProtocolError(POLICY, "not_started", f'no "start" in {START_TIMEOUT_S:g} s: '
                                "send it as soon as the socket opens") from None  # fmt: skip
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("text") is None:
            raise ProtocolError(POLICY, "not_started", 'media before "start": send it first')
        start = parse_start(
            text_message(message["text"], self.options.max_message_bytes), self.options
        )
        served = self.models.model_id
        if start.model not in (None, "default", self.config.model.checkpoint, served):
            raise ProtocolError(POLICY, "bad_model", f"model {start.model!r} is not served "
                                f"here: omit it, or ask for {served or 'none'}")  # fmt: skip
        return start

    async def _run(
        self,
        ws: WebSocket,
        start: Start,
        session_id: str,
        source: IngestSource,
        resumed: Resumption | None,
    ) -> None:
        from realtime_erc.pipeline import Pipeline
        from realtime_erc.session import build_stages

        async def send(document: dict[str, Any]) -> None:
            await asyncio.wait_for(ws.send_json(document), SEND_TIMEOUT_S)

        socket = SocketPublisher(send)
        socket.observers.append(self.metrics.observe)
        if self.remote is not None:
            socket.observers.append(self._committer(session_id))
        config = self.config.with_values(
            {"session.id": session_id, "output.zmq.enabled": False, "output.jsonl.path": ""}
        )
        extra = [socket, *(SharedPublisher(p) for p in self._shared)]
        stages = await asyncio.to_thread(
            build_stages, config, session_id, extra, paced=start.pace == "realtime",
            models=self.models, resumed=resumed,
        )  # fmt: skip
        pipeline = Pipeline(
            source, stages, source_name="socket", queue_size=config.pipeline.queue_size,
            drain_timeout_s=config.pipeline.drain_timeout_s,
        )  # fmt: skip
        running = asyncio.create_task(pipeline.run(), name=f"session {session_id}")
        reader = asyncio.create_task(self._read(ws, source), name=f"reader {session_id}")
        await asyncio.wait({running, asyncio.create_task(pipeline.running.wait())},
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if pipeline.running.is_set():
            await socket.ready({
                "type": "ready", "session_id": session_id, "model": self.models.model_id,
                "label_set": self.models.label_set or config.session.label_set,
                "labels": list(self.models.engine.labels) if self.models.engine else [],
                "limits": limits_document(self.options),
            })  # fmt: skip
        outcome: ProtocolError | None = None
        try:
            await asyncio.wait({running, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled():
                outcome = reader.exception() or reader.result()
                if isinstance(outcome, ProtocolError):
                    source.end_now()
            await running  # flushes what the session still has, on every output
        except Exception as e:  # this session's failure; the others go on
            log.exception("session %s failed", session_id)
            outcome = ProtocolError(INTERNAL, "internal", f"the session failed: {e}")
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if isinstance(outcome, ProtocolError):
            await _close(ws, outcome)
        elif not socket.gone:
            with contextlib.suppress(Exception):
                await ws.close(code=NORMAL)

    async def _read(self, ws: WebSocket, source: IngestSource) -> ProtocolError | None:
        """Media into the session until ``end`` (or the client goes: the same flush)."""
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.receive(), self.options.idle_timeout_s)
                except TimeoutError:
                    raise ProtocolError(POLICY, "idle", "nothing received for "
                                        f"{self.options.idle_timeout_s:g} s: send media, or "
                                        '"end" the session') from None  # fmt: skip
                if message["type"] == "websocket.disconnect":
                    source.end_now()
                    return None
                data = message.get("bytes")
                if data is None:
                    request = text_message(
                        message.get("text") or "", self.options.max_message_bytes
                    )
                    if request["type"] == "end":
                        await source.end()
                        return None
                    raise ProtocolError(POLICY, "unexpected", f"unexpected {request['type']!r} "
                                        'message: send media, then "end"')  # fmt: skip
                if len(data) > self.options.max_message_bytes:
                    raise ProtocolError(TOO_BIG, "too_big", "a message is larger than "
                                        f"{self.options.max_message_bytes} bytes")  # fmt: skip
                kind = data[0] if data else None
                if kind == AUDIO:
                    await source.push_audio(data[1:])
                elif kind == VIDEO:
                    await source.push_frame(data[1:])
                else:
                    raise ProtocolError(POLICY, "bad_kind", f"unknown media kind byte {kind!r}: "
                                        "0x01 audio, 0x02 video")  # fmt: skip
        except ProtocolError as e:
            return e


async def _close(ws: WebSocket, error: ProtocolError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_json(error.document())
    with contextlib.suppress(Exception):
        await ws.close(code=error.code, reason=str(error)[:120])


def create_app(config: Config, dashboard_broker: str | None = None, remote: Any = None) -> FastAPI:
    """The application; ``dashboard_broker``: the MQTT-over-WebSockets address the dashboard
    page subscribes to (the embedded broker's); ``remote``: the model deployments on Ray."""
    server = Server(config, remote)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        try:
            yield
        finally:
            await server.close()

    app = FastAPI(title="realtime-erc", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.websocket("/v1/sessions")
    async def sessions(ws: WebSocket) -> None:
        await server.handle(ws)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = server.models is not None
        body = {"status": "ok" if ok else "starting", "sessions": len(server.sessions),
                "model": server.models.model_id if ok else None,
                "tasks": len(asyncio.all_tasks())}  # fmt: skip
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        text = await server.metrics_text()
        return PlainTextResponse(text, media_type=server.metrics.content_type)

    @app.get("/config.json")
    async def dashboard_config() -> JSONResponse:
        settings = {"broker": dashboard_broker or "", "prefix": config.output.topic_prefix}
        return JSONResponse(settings, headers={"Cache-Control": "no-store"})

    @app.get("/{name:path}")
    async def static(name: str) -> Response:
        path = (STATIC_DIR / (name or "index.html")).resolve()
        if STATIC_DIR not in path.parents or path.suffix not in _SERVED or not path.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path)

    return app
