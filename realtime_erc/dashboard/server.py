"""Serve the dashboard's static files on loopback (``realtime-erc dashboard``).

Besides the files, ``/config.json`` tells the page which broker to use by default
(``{"broker": "ws://127.0.0.1:9001", "prefix": "erc"}``); a ``?broker=ws://...`` query in the
page's address wins over it. The server runs in a daemon thread so it can sit beside an asyncio
session without touching its loop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from realtime_erc.outputs.publisher import OutputError

if TYPE_CHECKING:
    from realtime_erc.config import Config
    from realtime_erc.outputs.broker import EmbeddedBroker

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent
"""index.html, app.js, style.css and vendor/mqtt.min.js."""

_SERVED = {".html", ".js", ".css", ".md"}


class _Handler(SimpleHTTPRequestHandler):
    """Static files from :data:`STATIC_DIR` (no directory listings, no Python sources) and
    ``/config.json``."""

    def __init__(self, *args, settings: dict[str, str], **kwargs) -> None:
        self.settings = settings
        super().__init__(*args, directory=str(STATIC_DIR), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/config.json":
            body = json.dumps(self.settings).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        if path != "/" and Path(path).suffix not in _SERVED:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("dashboard: " + format, *args)


class DashboardServer:
    """HTTP server for the dashboard on ``host:port`` (0 = a free port).

    ``broker_ws_url``: the MQTT-over-WebSockets address the page connects to by default;
    ``topic_prefix``: the stream's topic prefix. Use as a context manager, or
    :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        broker_ws_url: str = "ws://127.0.0.1:9001",
        port: int = 0,
        host: str = "127.0.0.1",
        topic_prefix: str = "erc",
    ) -> None:
        self.broker_ws_url = broker_ws_url
        self.host = host
        self.port = port
        self.topic_prefix = topic_prefix
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, with the broker in the query (works even if config.json is
        stale)."""
        return f"http://{self.host}:{self.port}/?broker={quote(self.broker_ws_url, safe=':/')}"

    def start(self) -> None:
        if self._server is not None:
            return
        handler = functools.partial(
            _Handler, settings={"broker": self.broker_ws_url, "prefix": self.topic_prefix}
        )
        try:
            server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as e:
            raise OutputError(
                f"cannot serve the dashboard on {self.host}:{self.port}: {e.strerror}. "
                "Choose another port with --port (0 picks a free one)"
            ) from None
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()
        log.debug("dashboard on %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class EmbeddedServices:
    """What ``--broker embedded`` started, and the configuration that publishes to it."""

    config: Config
    """The loaded configuration with ``output.mqtt`` pointed at the embedded broker."""
    broker: EmbeddedBroker | None = None
    dashboard: DashboardServer | None = None


@contextlib.asynccontextmanager
async def embedded_services(
    config: Config, announce: Callable[[str], None] | None = None, *, dashboard: bool = True
) -> AsyncIterator[EmbeddedServices]:
    """``--broker embedded``: run an amqtt broker (and, with ``broker.dashboard`` and
    ``dashboard``, the dashboard pointing at it) for the duration of the block. Start it before
    building a session: the yielded :attr:`EmbeddedServices.config` is the one that publishes
    to it. Without ``broker.embedded`` nothing starts and the configuration is yielded as it is.
    ``announce`` receives the lines a user needs (the broker's and the dashboard's addresses)."""
    if not config.broker.embedded:
        yield EmbeddedServices(config)
        return
    from realtime_erc.outputs.broker import EmbeddedBroker

    b = config.broker
    async with EmbeddedBroker(b.host, b.port, b.ws_port) as broker:
        config = config.with_values({"output.mqtt.enabled": True, "output.mqtt.url": broker.url})
        server = None
        if b.dashboard and dashboard:
            server = DashboardServer(
                broker.ws_url, b.dashboard_port, b.host, config.output.topic_prefix
            )
            server.start()
        try:
            if announce is not None:
                announce(f"MQTT broker (embedded): {broker.url}  websockets: {broker.ws_url}")
                if server is not None:
                    announce(f"dashboard: {server.url}")
            yield EmbeddedServices(config, broker, server)
        finally:
            if server is not None:
                server.stop()
