"""The publish stage: the pipeline's sink that turns events into stream documents.

:class:`PublishStage` announces the session (``erc.status/1`` ``online``), publishes one
``erc.emotion/1`` document per :class:`EmotionEvent` on every configured :class:`Publisher`
(ZeroMQ, JSONL, later MQTT), and says ``offline`` exactly once at the end, also when the pipeline
stops on an error.

Hook for MQTT: a publisher receives ``(topic, document)``; :func:`~realtime_erc.outputs.topics.
document_kind` tells an emotion from a status document, so an MQTT publisher can additionally
publish final emotions retained on :func:`~realtime_erc.outputs.topics.state_topic` and clear
those when it sees ``offline``. ZeroMQ and JSONL keep no state and just send what they get.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

from realtime_erc.errors import UserError
from realtime_erc.events import (
    EmotionEvent,
    Event,
    LoadReport,
    Resumption,
    StatusEvent,
    StatusState,
    utc_timestamp,
)
from realtime_erc.outputs.schema import validate_document
from realtime_erc.outputs.topics import check_prefix, topic_for
from realtime_erc.pipeline import Stage

log = logging.getLogger(__name__)


class OutputError(UserError, RuntimeError):
    """An output cannot work (port in use, unwritable file); the message names it and the fix."""


@runtime_checkable
class Publisher(Protocol):
    """Something that carries stream documents somewhere. ``name`` is used in log messages."""

    name: str

    async def start(self) -> None:
        """Bind / connect / open. Raise :class:`OutputError` for problems a user can fix."""

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        """Send one document on ``topic`` (a publisher without topics ignores it)."""

    async def close(self) -> None:
        """Deliver what is queued (bounded in time) and release resources."""


class PublishStage(Stage):
    """Sink stage: publishes every :class:`EmotionEvent`, passes any other event through.

    ``validate``: check every document against its JSON Schema before sending (cheap; a failure
    raises :class:`~realtime_erc.outputs.schema.SchemaError` and stops the pipeline, naming the
    field, rather than sending a document subscribers cannot trust).
    """

    name = "publish"

    def __init__(
        self,
        session_id: str,
        label_set: str,
        model: str | None,
        publishers: Sequence[Publisher],
        topic_prefix: str = "erc",
        validate: bool = True,
        resumed: Resumption | None = None,
    ) -> None:
        """``resumed``: the session goes on after its server lost it (said in ``online``)."""
        self.session_id = session_id
        self.resumed = resumed
        self.label_set = label_set
        self.model = model
        self.publishers = list(publishers)
        self.topic_prefix = check_prefix(topic_prefix)
        self.validate = validate
        self.published = 0  # documents sent (each counted once, whatever the publisher count)
        self._started: list[Publisher] = []
        self._online_sent = False
        self._offline_sent = False

    async def start(self) -> None:
        """Start every publisher, then announce ``online``.

        If any of this fails, the publishers already started are closed before the error
        propagates (the pipeline does not call :meth:`close` on a stage whose start failed).
        """
        try:
            for publisher in self.publishers:
                await publisher.start()
                self._started.append(publisher)
            await self._publish(self._status("online", context=self.resumed))
            self._online_sent = True
        except BaseException:
            await self._close_publishers()
            raise

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, EmotionEvent):
            await self._publish(event.to_document())
            return
        if isinstance(event, StatusEvent):  # e.g. the overload policy's level changed
            await self._publish(self._status(event.state, event.load))
            return
        yield event

    async def flush(self) -> AsyncIterator[Event]:
        """End of stream: say ``offline``."""
        await self._send_offline()
        return
        yield  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        """Say ``offline`` if :meth:`flush` did not (error or cancellation), then close every
        publisher; one failing to close does not keep the others open."""
        try:
            await self._send_offline()
        except Exception:
            log.exception("publishing 'offline' for session %s failed", self.session_id)
        await self._close_publishers()

    async def _send_offline(self) -> None:
        if self._online_sent and not self._offline_sent:
            self._offline_sent = True  # set first: never twice, even if a publisher fails
            await self._publish(self._status("offline"))

    def _status(
        self, state: StatusState, load: LoadReport | None = None, context: Resumption | None = None
    ) -> dict[str, Any]:
        return StatusEvent(
            session_id=self.session_id,
            state=state,
            model=self.model,
            label_set=self.label_set,
            at=utc_timestamp(),
            load=load,
            context=context,
        ).to_document()

    async def _publish(self, document: dict[str, Any]) -> None:
        """Send to every started publisher; if some fail, the others still get the document and
        the first error is raised afterwards."""
        if self.validate:
            validate_document(document)
        topic = topic_for(self.topic_prefix, document)
        first_error: Exception | None = None
        for publisher in self._started:
            try:
                await publisher.publish(topic, document)
            except Exception as e:
                log.error("publisher '%s' failed on %s: %s", publisher.name, topic, e)
                first_error = first_error or e
        self.published += 1
        if first_error is not None:
            raise first_error

    async def _close_publishers(self) -> None:
        started, self._started = self._started, []
        for publisher in reversed(started):
            try:
                await publisher.close()
            except Exception:
                log.exception("closing publisher '%s' failed", publisher.name)
