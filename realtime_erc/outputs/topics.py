"""Topic names of the stream (STREAM_PROTOCOL.md, "Topics").

``{prefix}/{session_id}/{speaker}/emotion``, ``.../{speaker}/state`` and ``{prefix}/{session_id}/
status``. Ids are sanitised for MQTT (no ``/``, ``+``, ``#``, no leading ``$``); the raw ids stay
in the payload. ZeroMQ uses the same strings as frame 0 and filters by prefix, hence
:func:`subscription_prefix` ends with ``/``.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from realtime_erc.outputs.schema import EMOTION_SCHEMA_ID, STATUS_SCHEMA_ID

DocumentKind = Literal["emotion", "status"]

_FORBIDDEN = frozenset("/+#")
_REPLACEMENT = "_"


def sanitize_id(raw: str) -> str:
    """Make an id safe as one topic level, deterministically and readably.

    ``/``, ``+``, ``#``, control characters and lone surrogates (which UTF-8 cannot encode)
    become ``_``; a leading ``$`` (reserved by MQTT brokers) becomes ``_``; an empty id becomes
    ``_``. Distinct raw ids may map to the same topic id; payloads keep the raw id.
    """
    out = "".join(
        _REPLACEMENT if ch in _FORBIDDEN or unicodedata.category(ch) in ("Cc", "Cs") else ch
        for ch in raw
    )
    if out.startswith("$"):
        out = _REPLACEMENT + out[1:]
    return out or _REPLACEMENT


def check_prefix(prefix: str) -> str:
    """Validate a topic prefix (``erc``, or ``lab/erc``); returns it without a trailing ``/``.

    Raises ValueError naming the problem: a prefix may hold ``/`` between levels but no wildcard,
    no empty level and no leading ``$``.
    """
    cleaned = prefix.rstrip("/")
    levels = cleaned.split("/")
    if (
        not cleaned
        or any(not level for level in levels)
        or any(ch in "+#" for ch in cleaned)
        or cleaned.startswith("$")
    ):
        raise ValueError(
            f"topic prefix {prefix!r} is not usable: use non-empty levels without '+', '#' or a "
            "leading '$', e.g. erc or lab/erc"
        )
    return cleaned


def emotion_topic(prefix: str, session_id: str, speaker: str) -> str:
    """``{prefix}/{session}/{speaker}/emotion``: every ``erc.emotion/1`` document."""
    return f"{prefix.rstrip('/')}/{sanitize_id(session_id)}/{sanitize_id(speaker)}/emotion"


def state_topic(prefix: str, session_id: str, speaker: str) -> str:
    """``{prefix}/{session}/{speaker}/state``: the speaker's last final emotion (MQTT, retained)."""
    return f"{prefix.rstrip('/')}/{sanitize_id(session_id)}/{sanitize_id(speaker)}/state"


def status_topic(prefix: str, session_id: str) -> str:
    """``{prefix}/{session}/status``: ``erc.status/1`` documents."""
    return f"{prefix.rstrip('/')}/{sanitize_id(session_id)}/status"


def subscription_prefix(prefix: str, session_id: str | None = None) -> str:
    """What a ZeroMQ subscriber subscribes to: ``erc/`` (all sessions) or ``erc/demo-01/``.

    The trailing ``/`` matters: ZeroMQ filters by byte prefix, so ``erc/demo-1`` would also match
    session ``demo-10``.
    """
    base = prefix.rstrip("/")
    return f"{base}/" if session_id is None else f"{base}/{sanitize_id(session_id)}/"


def document_kind(document: dict[str, Any]) -> DocumentKind:
    """``"emotion"`` or ``"status"`` by the document's ``schema`` field; ValueError otherwise.

    Publishers with per-kind behaviour (MQTT: retained ``state`` for final emotions, retained
    status) branch on this.
    """
    schema = document.get("schema")
    if schema == EMOTION_SCHEMA_ID:
        return "emotion"
    if schema == STATUS_SCHEMA_ID:
        return "status"
    raise ValueError(f"no topic for a document with schema {schema!r}")


def topic_for(prefix: str, document: dict[str, Any]) -> str:
    """The topic a document is published on, chosen by its kind (see :func:`document_kind`)."""
    if document_kind(document) == "emotion":
        return emotion_topic(prefix, document["session_id"], document["speaker"])
    return status_topic(prefix, document["session_id"])
