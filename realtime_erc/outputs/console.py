"""Terminal rendering of the stream, and the loop behind ``realtime-erc watch``.

One line per document (:func:`format_document`), printed by :class:`ConsolePublisher` during a
run and by :func:`watch` for a subscriber::

    [12.3–14.0] A: "oh my god"  joy 0.70 (final)  412 ms
    [12.3–14.0] A: "oh my god"  label — (final)  412 ms      (no emotion model yet)
    ● demo-01 online  model bigfusion/meld7@3f2a  meld7  2026-11-22T10:00:00.000Z

Lines are built as :class:`rich.text.Text` pieces, never markup strings, so a transcript holding
``[brackets]`` prints verbatim.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.text import Text

from realtime_erc.outputs.jsonl import JsonlWriter
from realtime_erc.outputs.schema import EMOTION_SCHEMA_ID, STATUS_SCHEMA_ID
from realtime_erc.outputs.topics import subscription_prefix
from realtime_erc.outputs.zmq import ZmqSubscriber

log = logging.getLogger(__name__)

LABEL_STYLES = {
    "joy": "bold yellow",
    "happy": "bold yellow",
    "excited": "bold yellow",
    "surprise": "bold magenta",
    "anger": "bold red",
    "angry": "bold red",
    "frustrated": "red",
    "sadness": "bold blue",
    "sad": "bold blue",
    "fear": "bold cyan",
    "disgust": "bold green",
    "neutral": "white",
}
STATE_STYLES = {"online": "bold green", "offline": "bold white", "lost": "bold red"}


def format_document(doc: dict[str, Any]) -> Text:
    """One terminal line for a stream document (unknown documents are shown as raw JSON)."""
    schema = doc.get("schema")
    try:
        if schema == EMOTION_SCHEMA_ID:
            return _format_emotion(doc)
        if schema == STATUS_SCHEMA_ID:
            return _format_status(doc)
    except (KeyError, TypeError, ValueError) as e:
        log.debug("cannot format %r: %s", doc, e)
    return Text(f"? {doc}", style="dim")


def _format_emotion(doc: dict[str, Any]) -> Text:
    line = Text()
    line.append(f"[{float(doc['start']):.1f}–{float(doc['end']):.1f}] ", style="dim")
    line.append(f"{doc['speaker']}: ", style="bold")
    line.append(f'"{doc["text"]}"')
    line.append("  ")
    label, scores = doc.get("label"), doc.get("scores")
    if label is None:
        line.append("label —", style="dim")
    else:
        line.append(str(label), style=LABEL_STYLES.get(str(label).lower(), "bold"))
        if isinstance(scores, dict) and label in scores:
            line.append(f" {float(scores[label]):.2f}")
    provisional = bool(doc.get("provisional"))
    line.append(" (provisional)" if provisional else " (final)", style="italic dim")
    total = (doc.get("latency_ms") or {}).get("total")
    if total is not None:
        line.append(f"  {float(total):.0f} ms", style="dim")
    return line


def _format_status(doc: dict[str, Any]) -> Text:
    state = str(doc["state"])
    line = Text()
    line.append("● ", style=STATE_STYLES.get(state, "bold"))
    line.append(f"{doc['session_id']} ")
    line.append(state, style=STATE_STYLES.get(state, "bold"))
    if doc.get("model"):
        line.append(f"  model {doc['model']}", style="dim")
    line.append(f"  {doc.get('label_set', '')}  {doc.get('at', '')}", style="dim")
    return line


class ConsolePublisher:
    """A :class:`~realtime_erc.outputs.publisher.Publisher` that prints each document as one
    line (``realtime-erc replay`` without ``--quiet``)."""

    name = "console"

    def __init__(self, console: Console) -> None:
        self.console = console

    async def start(self) -> None:
        pass

    async def publish(self, topic: str, document: dict[str, Any]) -> None:
        self.console.print(format_document(document))

    async def close(self) -> None:
        pass


async def watch(
    subscriber: ZmqSubscriber,
    console: Console,
    jsonl: JsonlWriter | None = None,
    max_events: int | None = None,
    until_offline: bool = False,
) -> int:
    """Print every document the subscriber receives; optionally append them to ``jsonl``.

    Stops after ``max_events`` documents, or (``until_offline``) after a session's ``offline``
    or ``lost`` status; otherwise runs until cancelled (Ctrl-C). Connects the subscriber and
    starts the writer if the caller has not (both idempotent) but closes neither: the caller owns
    them (see :func:`watch_zmq`). Returns the number of documents received.
    """
    subscriber.connect()
    if jsonl is not None:
        await jsonl.start()
    count = 0
    if max_events is not None and max_events <= 0:
        return count
    async for topic, doc in subscriber:
        console.print(format_document(doc))
        if jsonl is not None:
            await jsonl.publish(topic, doc)
        count += 1
        if max_events is not None and count >= max_events:
            break
        if until_offline and _is_end(doc):
            break
    return count


async def watch_zmq(
    endpoint: str,
    jsonl_path: str | None = None,
    max_events: int | None = None,
    until_offline: bool = False,
    topic_prefix: str = "erc",
    session_id: str | None = None,
    console: Console | None = None,
) -> int:
    """``realtime-erc watch --zmq URL [--jsonl FILE]``: subscribe (to all sessions, or one), run
    :func:`watch`, and close the subscriber and the writer on the way out.

    Raises :class:`~realtime_erc.outputs.publisher.OutputError` for a bad endpoint or an
    unwritable file.
    """
    writer = JsonlWriter(jsonl_path) if jsonl_path else None
    try:
        async with ZmqSubscriber(endpoint, subscription_prefix(topic_prefix, session_id)) as sub:
            return await watch(sub, console or Console(), writer, max_events, until_offline)
    finally:
        if writer is not None:
            await writer.close()


def _is_end(doc: dict[str, Any]) -> bool:
    return doc.get("schema") == STATUS_SCHEMA_ID and doc.get("state") in ("offline", "lost")
