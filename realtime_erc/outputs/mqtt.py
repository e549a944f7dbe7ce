"""MQTT transport (STREAM_PROTOCOL.md): a publisher for the session, a subscriber for ``watch``.

:class:`MqttPublisher` sends every document with QoS 1 (configurable) on its topic and also:

- keeps ``{prefix}/{session}/status`` retained, with the last will ``lost`` set on the connection,
  so a crashed or cut-off publisher shows as ``lost`` to every subscriber;
- keeps each speaker's last *final* emotion retained on ``.../{speaker}/state``;
- on ``offline`` publishes the status retained and clears every state topic it set (an empty
  retained payload), so a finished session leaves nothing behind but its ``offline`` status.

Delivery: :meth:`MqttPublisher.publish` only enqueues; a sender task publishes in order, up to
``max_inflight`` messages awaiting their PUBACK at a time. If the broker goes away, the messages
not yet acknowledged go back to the head of the queue, the sender reconnects with exponential
backoff, re-announces the status and the retained states, and resumes in order. While connected,
a full queue makes ``publish`` wait (backpressure); while disconnected it drops the oldest message
(counted in :attr:`MqttPublisher.dropped`, logged). QoS 1 is at-least-once: a message whose PUBACK
was lost in the outage is sent again, so subscribers keep the last document per
``utterance_id`` (as they do for provisional → final).

Built on aiomqtt 2.x, the maintained successor of asyncio-mqtt (which breaks with paho-mqtt 2.x).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from realtime_erc.config import MqttOptions
from realtime_erc.events import StatusEvent, utc_timestamp
from realtime_erc.outputs.publisher import OutputError
from realtime_erc.outputs.schema import (
    EMOTION_SCHEMA_ID,
    STATUS_SCHEMA_ID,
    decode_json,
    encode_document,
)
from realtime_erc.outputs.topics import (
    check_prefix,
    document_kind,
    sanitize_id,
    state_topic,
    status_topic,
)

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is: parsed from ``mqtt://host:port`` (or ``mqtts://`` for TLS)."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse a broker url; :class:`OutputError` names the expected form."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or port == -1:
            raise OutputError(
                f"{url!r} is not an MQTT broker url: use mqtt://HOST:PORT (or mqtts:// for TLS), "
                "e.g. --mqtt mqtt://127.0.0.1:1883"
            )
        return cls(parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class _Backlog:
    """The ordered messages not yet acknowledged by the broker."""

    queue: deque[_Message] = field(default_factory=deque)
    dropped: int = 0


def make_client(
    address: BrokerAddress,
    options: MqttOptions,
    client_id: str | None = None,
    will: aiomqtt.Will | None = None,
    clean_session: bool = True,
    transport: str = "tcp",
) -> aiomqtt.Client:
    """An unconnected :class:`aiomqtt.Client` for ``address`` with ``options`` (credentials,
    TLS; its url is not read). Raises :class:`OutputError` for unreadable TLS files."""
    tls_context = None
    tls = options.tls
    if address.tls or tls.enabled:
        try:
            tls_context = ssl.create_default_context(cafile=tls.ca_file or None)
            if tls.certfile:
                tls_context.load_cert_chain(tls.certfile, tls.keyfile or None)
        except (OSError, ssl.SSLError) as e:
            raise OutputError(
                f"cannot set up TLS for {address.url}: {e}. Check output.mqtt.tls.ca_file, "
                "certfile and keyfile"
            ) from None
        if tls.insecure:
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=options.username or None,
        password=options.password or None,
        identifier=client_id,
        will=will,
        clean_session=clean_session,
        keepalive=options.keepalive_s,
        timeout=options.connect_timeout_s,
        tls_context=tls_context,
        tls_insecure=tls.insecure if tls_context is not None else None,
        transport=transport,  # type: ignore[arg-type]
        max_inflight_messages=max(options.max_inflight, 20),
        logger=logging.getLogger("realtime_erc.outputs.mqtt.paho"),
    )
    client.pending_calls_threshold = 4 * options.max_inflight  # we bound in-flight calls ourselves
    return client


def _broker(options: MqttOptions | str) -> tuple[MqttOptions, BrokerAddress]:
    """The options (a bare url: the defaults with that url) and the broker they name."""
    url = options if isinstance(options, str) else options.url
    address = BrokerAddress.parse(url)  # an OutputError naming the expected form
    return (MqttOptions(url=url) if isinstance(options, str) else options), address


def _unreachable(address: BrokerAddress, error: Exception) -> OutputError:
    text = str(error).lower()
    if "not authori" in text or "bad user name or password" in text or "auth" in text:
        return OutputError(
            f"the MQTT broker at {address.url} refused the login: {error}. Check "
            "output.mqtt.username and output.mqtt.password (or the user in the URL)"
        )
    if "certificate" in text or "ssl" in text or "tls" in text:
        return OutputError(
            f"TLS with the MQTT broker at {address.url} failed: {error}. Give the broker's CA "
            "with output.mqtt.tls.ca_file (or set output.mqtt.tls.insecure for testing only)"
        )
    return OutputError(
        f"cannot reach the MQTT broker at {address.url}: {error}. Start one there (e.g. "
        f"`mosquitto -p {address.port}`), pass another with --mqtt mqtt://HOST:PORT, or use "
        "--broker embedded"
    )


def _disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    # aiomqtt has no public "connection lost" hook for publishers: a QoS 1 publish in flight
    # just waits for its PUBACK until the timeout. Its private future resolves on disconnect.
    return client._disconnected  # noqa: SLF001


class MqttPublisher:
    """The session's MQTT output (a :class:`~realtime_erc.outputs.publisher.Publisher`).

    ``options``: the ``[output.mqtt]`` section (its ``url`` says where the broker is), or just a
    broker url (the defaults otherwise). ``session_id``, ``label_set`` and ``model`` build the
    last-will ``lost`` status, which must be set when connecting. :meth:`start` connects once
    (an unreachable broker is an :class:`OutputError` then); later outages are ridden out as the
    module docstring says.
    """

    name = "mqtt"

    def __init__(
        self,
        options: MqttOptions | str,
        session_id: str,
        label_set: str,
        model: str | None = None,
        topic_prefix: str = "erc",
    ) -> None:
        self.options, self.address = _broker(options)
        self.session_id = session_id
        self.label_set = label_set
        self.model = model
        self.prefix = check_prefix(topic_prefix)
        self.client_id = (
            self.options.client_id
            or f"realtime-erc-{sanitize_id(session_id)[:40]}-{uuid.uuid4().hex[:8]}"
        )
        self.delivered = 0  # messages acknowledged by the broker
        self.reconnects = 0
        self._backlog = _Backlog()
        self._changed = asyncio.Condition()
        self._status: _Message | None = None  # last status sent, re-announced on reconnect
        self._states: dict[str, _Message] = {}  # state topic → last final emotion (retained)
        self._inflight: deque[tuple[_Message, asyncio.Task[None]]] = deque()  # awaiting PUBACK
        self._client: aiomqtt.Client | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = False

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full while the broker was unreachable."""
        return self._backlog.dropped

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker."""
        return len(self._backlog.queue) + len(self._inflight)

    def _will(self) -> aiomqtt.Will:
        lost = StatusEvent(
            session_id=self.session_id,
            state="lost",
            model=self.model,
            label_set=self.label_set,
            at=utc_timestamp(),
        ).to_document()
        topic = status_topic(self.prefix, self.session_id)
        return aiomqtt.Will(topic, encode_document(lost), qos=self.options.qos, retain=True)

    async def _connect(self) -> aiomqtt.Client:
        client = make_client(self.address, self.options, self.client_id, will=self._will())
        await client.__aenter__()
        self._connected = True
        return client

    async def start(self) -> None:
        """Connect (within ``connect_timeout_s``) and start the sender."""
        if self._sender is not None:
            return
        try:
            self._client = await asyncio.wait_for(
                self._connect(), self.options.connect_timeout_s + 1
            )
        except (aiomqtt.MqttError, TimeoutError) as e:
            raise _unreachable(self.address, e) from None
        log.info("publishing on MQTT %s as %s", self.address.url, self.client_id)
        self._sender = asyncio.create_task(self._send_loop(), name="mqtt-sender")

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        """Enqueue ``document`` on ``topic`` (and the retained extras its kind calls for)."""
        if self._sender is None:
            raise RuntimeError("MqttPublisher.publish() before start()")
        payload = encode_document(document).encode()
        messages = [_Message(topic, payload, retain=False)]
        kind = document_kind(document)
        if kind == "emotion" and not document.get("provisional"):
            state = state_topic(self.prefix, document["session_id"], document["speaker"])
            self._states[state] = _Message(state, payload, retain=True)
            messages.append(self._states[state])
        elif kind == "status":
            messages = [_Message(topic, payload, retain=True)]
            self._status = messages[0]
            if document.get("state") != "online":
                # the session is over: clear every retained state it set
                messages += [_Message(t, b"", retain=True) for t in self._states]
                self._states.clear()
        for message in messages:
            await self._enqueue(message)

    async def _enqueue(self, message: _Message) -> None:
        queue = self._backlog.queue
        async with self._changed:
            while len(queue) >= self.options.buffer_size and self._connected:
                await self._changed.wait()  # backpressure while the broker keeps up
            if len(queue) >= self.options.buffer_size:
                queue.popleft()
                self._backlog.dropped += 1
                if self._backlog.dropped == 1 or self._backlog.dropped % 1000 == 0:
                    log.warning(
                        "MQTT broker unreachable and the buffer (%d) is full: dropped %d "
                        "oldest message(s); raise output.mqtt.buffer_size to keep more",
                        self.options.buffer_size,
                        self._backlog.dropped,
                    )
            queue.append(message)
            self._changed.notify_all()

    async def _send_loop(self) -> None:
        """Publish the backlog in order; on a lost connection reconnect with backoff."""
        delay = self.options.reconnect_min_s
        client = self._client
        while True:
            if client is not None:
                try:
                    await self._drain(client)
                    return  # closing and everything delivered
                except aiomqtt.MqttError as e:
                    log.warning(
                        "MQTT connection to %s lost (%s); %d message(s) buffered, reconnecting",
                        self.address.url,
                        e,
                        self.pending,
                    )
                finally:
                    self._connected = False
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
                    self._client = client = None
                    async with self._changed:
                        self._changed.notify_all()  # waiting publishers may drop now
            try:
                client = await self._connect()
            except aiomqtt.MqttError as e:
                log.debug("reconnect to %s failed: %s; next try in %.1f s", self.address, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.options.reconnect_max_s)
                continue
            self._client = client
            self.reconnects += 1
            delay = self.options.reconnect_min_s
            self._reannounce()
            log.info("reconnected to MQTT %s; sending %d message(s)", self.address, self.pending)

    def _reannounce(self) -> None:
        """After a reconnect: the broker published our will (``lost``) and, if it restarted,
        forgot retained messages; put the status and the states back first."""
        head = ([self._status] if self._status is not None else []) + list(self._states.values())
        self._backlog.queue.extendleft(reversed(head))

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send until closing with nothing left; raise :class:`aiomqtt.MqttError` on a lost
        connection after putting the unacknowledged messages back at the head, in order."""
        queue = self._backlog.queue
        inflight = self._inflight
        lost = _disconnected(client)
        try:
            while True:
                while queue and len(inflight) < self.options.max_inflight:
                    message = queue.popleft()
                    task = asyncio.create_task(
                        client.publish(
                            message.topic,
                            message.payload,
                            qos=self.options.qos,
                            retain=message.retain,
                        )
                    )
                    inflight.append((message, task))
                if not inflight:
                    if self._closing:
                        return
                    async with self._changed:
                        if not queue and not self._closing:
                            waiter = asyncio.ensure_future(self._changed.wait())
                            done, _ = await asyncio.wait(
                                {waiter, lost}, return_when=asyncio.FIRST_COMPLETED
                            )
                            if waiter not in done:
                                waiter.cancel()
                                with contextlib.suppress(asyncio.CancelledError):
                                    await waiter
                    if lost.done():
                        raise aiomqtt.MqttError(f"disconnected: {_reason(lost)}")
                    continue
                _, oldest = inflight[0]
                await asyncio.wait({oldest, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not oldest.done():
                    raise aiomqtt.MqttError(f"disconnected: {_reason(lost)}")
                oldest.result()  # raises MqttError if the publish failed
                inflight.popleft()
                self.delivered += 1
                async with self._changed:
                    self._changed.notify_all()  # room in the buffer
        finally:
            for _, task in inflight:
                task.cancel()
            queue.extendleft(reversed([m for m, _ in inflight]))
            inflight.clear()

    async def close(self) -> None:
        """Deliver the backlog (up to ``close_timeout_s``), then disconnect cleanly (no will)."""
        sender, self._sender = self._sender, None
        if sender is None:
            return
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        try:
            await asyncio.wait_for(asyncio.shield(sender), self.options.close_timeout_s)
        except TimeoutError:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        except aiomqtt.MqttError:
            pass
        if self.pending:
            log.warning(
                "%d MQTT message(s) not delivered: the broker at %s stayed unreachable",
                self.pending,
                self.address.url,
            )
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)


def _reason(lost: asyncio.Future[None]) -> str:
    if not lost.done():
        return "unknown"
    error = lost.exception()
    return str(error) if error else "by the broker"


class MqttSubscriber:
    """Async iterator of ``(topic, document)`` from an MQTT broker (``watch --mqtt``).

    Subscribes to ``{prefix}/+/+/emotion`` and ``{prefix}/+/status`` (one session: its id in place
    of the first ``+``). Retained status is delivered only while ``online`` (a retained
    ``offline``/``lost`` belongs to a session that has already ended); empty payloads (cleared
    retained messages) and malformed ones are skipped. If the broker goes away it reconnects
    with backoff; ``persistent=True`` keeps a broker-side session under ``client_id`` so messages
    published meanwhile are queued for us (QoS 1). ``options``: as for :class:`MqttPublisher`
    (its ``client_id`` is the publisher's: give this one ``client_id``).
    """

    def __init__(
        self,
        options: MqttOptions | str,
        topic_prefix: str = "erc",
        session_id: str | None = None,
        client_id: str | None = None,
        persistent: bool = False,
        include_state: bool = False,
    ) -> None:
        self.options, self.address = _broker(options)
        self.client_id = client_id or f"realtime-erc-watch-{uuid.uuid4().hex[:12]}"
        self.persistent = persistent
        session = "+" if session_id is None else sanitize_id(session_id)
        prefix = check_prefix(topic_prefix)
        self.filters = [f"{prefix}/{session}/+/emotion", f"{prefix}/{session}/status"]
        if include_state:
            self.filters.append(f"{prefix}/{session}/+/state")
        self.skipped = 0
        self.reconnects = 0
        self._client: aiomqtt.Client | None = None
        self._messages: AsyncIterator[aiomqtt.Message] | None = None
        self._opened = False

    def connect(self) -> None:
        """Nothing to do synchronously (the ZeroMQ subscriber's interface, used by ``watch``):
        :meth:`open` (or the first :meth:`receive`) connects."""

    async def open(self) -> None:
        """Connect and subscribe; :class:`OutputError` if the broker cannot be reached."""
        if self._client is not None or self._messages is not None:
            return
        try:
            await self._open()
        except (aiomqtt.MqttError, TimeoutError) as e:
            raise _unreachable(self.address, e) from None

    async def _open(self) -> None:
        client = make_client(
            self.address, self.options, self.client_id, clean_session=not self.persistent
        )
        await asyncio.wait_for(client.__aenter__(), self.options.connect_timeout_s + 1)
        try:
            for topic in self.filters:
                await client.subscribe(topic, qos=self.options.qos)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise
        self._client = client
        self._messages = client.messages.__aiter__()

    async def receive(self) -> tuple[str, dict[str, Any]]:
        """The next document; reconnects (with backoff) when the broker goes away."""
        if self._opened is False:
            await self.open()
            self._opened = True
        delay = self.options.reconnect_min_s
        while True:
            if self._messages is None:
                try:
                    await self._open()
                    self.reconnects += 1
                    delay = self.options.reconnect_min_s
                    log.info("resubscribed to %s", self.address.url)
                except (aiomqtt.MqttError, TimeoutError):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.options.reconnect_max_s)
                    continue
            try:
                message = await self._messages.__anext__()
            except aiomqtt.MqttError as e:
                log.warning("MQTT connection to %s lost (%s); reconnecting", self.address.url, e)
                await self._drop_client()
                continue
            parsed = self._parse(message)
            if parsed is not None:
                return parsed

    def _parse(self, message: aiomqtt.Message) -> tuple[str, dict[str, Any]] | None:
        topic = str(message.topic)
        payload = message.payload
        if not payload:
            return None  # a cleared retained message
        try:
            raw = payload.decode() if isinstance(payload, bytes | bytearray) else str(payload)
            document = decode_json(raw)
        except ValueError as e:
            log.warning("skipping a malformed message on %s: %s", topic, e)
            self.skipped += 1
            return None
        if not isinstance(document, dict):
            log.warning("skipping a message on %s that is not a JSON object", topic)
            self.skipped += 1
            return None
        if (
            message.retain
            and document.get("schema") == STATUS_SCHEMA_ID
            and document.get("state") != "online"
        ):
            return None
        if document.get("schema") not in (EMOTION_SCHEMA_ID, STATUS_SCHEMA_ID):
            log.debug("ignoring a document of schema %r on %s", document.get("schema"), topic)
        return topic, document

    async def _drop_client(self) -> None:
        client, self._client, self._messages = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def close(self) -> None:
        await self._drop_client()

    def __aiter__(self) -> MqttSubscriber:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        return await self.receive()

    async def __aenter__(self) -> MqttSubscriber:
        await self.open()
        self._opened = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
