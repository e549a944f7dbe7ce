"""MQTT brokers this project starts itself: the embedded amqtt broker and a mosquitto process.

:class:`EmbeddedBroker` (``--broker embedded``) runs the pure-Python amqtt broker inside the
session's event loop, on loopback, with an MQTT listener and an MQTT-over-WebSockets listener
(for the web dashboard); it lives exactly as long as the ``async with`` block.

:class:`MosquittoBroker` starts Debian's ``mosquitto`` on free loopback ports with a generated
config in a temporary directory and stops it by PID (tests and ``bench stream``); it can be
killed and restarted on the same ports to simulate an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from realtime_erc.outputs.publisher import OutputError

log = logging.getLogger(__name__)


class BrokerError(OutputError):
    """A broker cannot start (port in use, mosquitto missing); the message names the fix."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")
        time.sleep(0.02)


@dataclass
class EmbeddedBroker:
    """In-process amqtt broker on ``host`` (loopback): MQTT on ``port`` and WebSockets on
    ``ws_port`` (0 = a free port each). Use as ``async with EmbeddedBroker() as broker:``.

    Anonymous access, no ``$SYS`` topics, no packet logging: it exists to carry one machine's
    stream to a dashboard, not to be a production broker (use mosquitto for that).
    """

    host: str = "127.0.0.1"
    port: int = 0
    ws_port: int = 0

    def __post_init__(self) -> None:
        self._broker = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for publishers and ``watch --mqtt``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:ws_port`` for the browser dashboard."""
        return f"ws://{self.host}:{self.ws_port}"

    async def start(self) -> None:
        from amqtt.broker import Broker

        self.port = self.port or free_port(self.host)
        self.ws_port = self.ws_port or free_port(self.host)
        for port in (self.port, self.ws_port):
            if _port_in_use(self.host, port):
                raise BrokerError(
                    f"cannot start the embedded MQTT broker: {self.host}:{port} is in use. "
                    "Set broker.port / broker.ws_port to free ports (0 picks one)"
                )
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}"},
                "ws": {"type": "ws", "bind": f"{self.host}:{self.ws_port}"},
            },
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        # amqtt logs every connection (and harmless protocol oddities); keep it to errors.
        for name in ("amqtt", "transitions", "websockets"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.ERROR)
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as e:
            raise BrokerError(f"cannot start the embedded MQTT broker: {e}") from None
        self._broker = broker
        log.debug("embedded MQTT broker on %s (websockets %s)", self.url, self.ws_url)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            # amqtt can wait forever on a client that does not close (a browser's
            # websocket): give connected clients a moment, then go.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.shutdown(), timeout=3.0)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto executable, or None (it is in Debian's ``mosquitto`` package)."""
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


class MosquittoBroker:
    """A mosquitto process on loopback: MQTT on :attr:`port`, WebSockets on :attr:`ws_port`.

    ``persistence``: keep sessions, subscriptions and queued QoS 1 messages in a file written on
    every change, so a persistent subscriber loses nothing when the broker is killed and
    restarted (:meth:`kill` then :meth:`start`). Stopped by PID, never by name.
    """

    def __init__(
        self,
        port: int = 0,
        ws_port: int = 0,
        directory: Path | None = None,
        persistence: bool = True,
        websockets: bool = True,
    ) -> None:
        executable = find_mosquitto()
        if executable is None:
            raise BrokerError(
                "mosquitto is not installed: `apt-get install mosquitto` (make setup does)"
            )
        self.executable = executable
        self.port = port or free_port()
        self.ws_port = (ws_port or free_port()) if websockets else 0
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 100000",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # as root, mosquitto switches to the "mosquitto" user, which cannot write our files
            lines.append("user root")
        if self.ws_port:
            # mosquitto 2.0.11 binds a websockets listener written "127.0.0.1" to every
            # interface; naming the loopback interface keeps it on loopback.
            lines += [f"listener {self.ws_port} lo", "protocol websockets"]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (or restart) and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [self.executable, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s)
            if self.ws_port:
                wait_for_port("127.0.0.1", self.ws_port, timeout_s)
        except BrokerError:
            code = self.process.poll()
            self.stop()
            raise BrokerError(
                f"mosquitto did not start (exit status {code}): {self.log_tail()}"
            ) from None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): clients see the connection drop."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM; SIGKILL after 5 s)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def wait_for_port_async(host: str, port: int, timeout_s: float = 10.0) -> None:
    """:func:`wait_for_port` off the event loop."""
    await asyncio.to_thread(wait_for_port, host, port, timeout_s)
