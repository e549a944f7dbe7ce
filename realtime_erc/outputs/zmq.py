"""ZeroMQ transport: a publisher bound on an endpoint, and the subscriber ``watch`` uses.

Each message is two frames, ``[topic, json]`` (STREAM_PROTOCOL.md). The publisher is an XPUB
socket: to subscribers it is a PUB, and it also hears subscriptions, so :class:`ZmqPublisher`
can hold the first event until someone listens (PUB drops whatever is sent before a subscriber
has joined: the "slow joiner").
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import zmq
import zmq.asyncio

from realtime_erc.outputs.publisher import OutputError
from realtime_erc.outputs.schema import decode_json, encode_document

log = logging.getLogger(__name__)

DEFAULT_LINGER_MS = 2000


class ZmqPublisher:
    """Publishes documents on an XPUB socket bound on ``endpoint`` (e.g. ``tcp://127.0.0.1:5556``;
    ``tcp://127.0.0.1:*`` picks a free port, see :attr:`bound_endpoint`).

    ``wait_for_subscriber_s``: if > 0, :meth:`start` waits up to that long for a first
    subscription so that a consumer started first sees every message. ``linger_ms``: how long
    :meth:`close` may take to deliver what is still queued.
    """

    name = "zmq"

    def __init__(
        self,
        endpoint: str,
        wait_for_subscriber_s: float = 0.0,
        linger_ms: int = DEFAULT_LINGER_MS,
    ) -> None:
        self.endpoint = endpoint
        self.wait_for_subscriber_s = wait_for_subscriber_s
        self.linger_ms = linger_ms
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port when ``*`` or ``0`` was asked for)."""
        if self._socket is None:
            raise RuntimeError("ZmqPublisher is not bound yet: call bind() or start() first")
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def bind(self) -> None:
        """Create the socket and bind it (idempotent). Separate from :meth:`start` so a caller
        can learn :attr:`bound_endpoint` and connect a subscriber before waiting for it."""
        if self._socket is not None:
            return
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.XPUB)
        socket.setsockopt(zmq.LINGER, self.linger_ms)
        try:
            socket.bind(self.endpoint)
        except zmq.ZMQError as e:
            socket.close(linger=0)
            context.term()
            raise OutputError(_bind_error_message(self.endpoint, e)) from None
        self._context, self._socket = context, socket
        log.info("publishing on %s", self.bound_endpoint)

    async def start(self) -> None:
        """Bind, then (if asked) wait for the first subscriber."""
        self.bind()
        assert self._socket is not None
        if self.wait_for_subscriber_s <= 0:
            return
        try:
            await asyncio.wait_for(self._socket.recv(), self.wait_for_subscriber_s)
            log.info("a subscriber joined %s", self.bound_endpoint)
        except TimeoutError:
            log.info(
                "no subscriber on %s within %.1f s; publishing anyway",
                self.bound_endpoint,
                self.wait_for_subscriber_s,
            )

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        """Send ``[topic, json]``. Never blocks on slow subscribers (PUB drops at its high-water
        mark instead)."""
        if self._socket is None:
            raise RuntimeError("ZmqPublisher.publish() before start()")
        await self._discard_subscriptions()
        await self._socket.send_multipart([topic.encode(), encode_document(document).encode()])

    async def close(self) -> None:
        """Close the socket and wait (up to ``linger_ms``) until queued messages are delivered."""
        socket, context = self._socket, self._context
        self._socket = self._context = None
        if socket is None or context is None:
            return
        socket.close(linger=self.linger_ms)
        # term() blocks until the queue is delivered or the linger runs out: keep it off the loop.
        await asyncio.to_thread(context.term)

    async def _discard_subscriptions(self) -> None:
        """Read the (un)subscription messages XPUB queues for us, so they do not pile up."""
        assert self._socket is not None
        while self._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            message = await self._socket.recv()
            if message[:1] == b"\x01":
                log.debug("subscriber joined for %r", message[1:])


def _bind_error_message(endpoint: str, error: zmq.ZMQError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"cannot publish on {endpoint}: the address is already in use. Is another "
            "realtime-erc running? Choose another with --zmq tcp://127.0.0.1:PORT"
        )
    return (
        f"cannot publish on {endpoint}: {error.strerror}. Give a bindable endpoint such as "
        "--zmq tcp://127.0.0.1:5556 (is another realtime-erc running? choose another with "
        "--zmq tcp://127.0.0.1:PORT)"
    )


class ZmqSubscriber:
    """Async iterator of ``(topic, document)`` from a :class:`ZmqPublisher` at ``endpoint``.

    ``prefix``: topic prefix to subscribe to (``erc/`` for everything, ``erc/demo-01/`` for one
    session); a trailing ``/`` is added if missing, ``""`` subscribes to all messages. Malformed
    messages (not two frames, not UTF-8 JSON objects) are logged and skipped.

    Use ``async with ZmqSubscriber(url) as sub: async for topic, doc in sub: ...``, or call
    :meth:`connect` / :meth:`close` yourself.
    """

    def __init__(self, endpoint: str, prefix: str = "erc/") -> None:
        self.endpoint = endpoint
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.skipped = 0  # malformed messages dropped
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None

    def connect(self) -> None:
        """Connect and subscribe (idempotent). ZeroMQ connects in the background, so this works
        before the publisher exists; a bad endpoint raises :class:`OutputError`."""
        if self._socket is not None:
            return
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.endpoint)
        except zmq.ZMQError as e:
            socket.close()
            context.term()
            raise OutputError(
                f"cannot subscribe to {self.endpoint}: {e.strerror}. "
                "Give the publisher's endpoint, e.g. --zmq tcp://127.0.0.1:5556"
            ) from None
        socket.setsockopt(zmq.SUBSCRIBE, self.prefix.encode())
        self._context, self._socket = context, socket

    async def receive(self) -> tuple[str, dict[str, Any]]:
        """The next well-formed ``(topic, document)``; waits as long as it takes."""
        self.connect()
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart()
            parsed = self._parse(frames)
            if parsed is not None:
                return parsed
            self.skipped += 1

    def _parse(self, frames: list[bytes]) -> tuple[str, dict[str, Any]] | None:
        if len(frames) != 2:
            log.warning("skipping a message of %d frames (expected [topic, json])", len(frames))
            return None
        try:
            topic = frames[0].decode()
            document = decode_json(frames[1].decode())
        except ValueError as e:  # UnicodeDecodeError, JSONDecodeError
            log.warning("skipping a malformed message on %r: %s", frames[0][:80], e)
            return None
        if not isinstance(document, dict):
            log.warning("skipping a message on %s that is not a JSON object", topic)
            return None
        return topic, document

    def close(self) -> None:
        """Disconnect; pending messages are discarded."""
        socket, context = self._socket, self._context
        self._socket = self._context = None
        if socket is not None and context is not None:
            socket.close(linger=0)
            context.term()

    def __aiter__(self) -> ZmqSubscriber:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        return await self.receive()

    async def __aenter__(self) -> ZmqSubscriber:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
