"""JSON Schemas (draft 2020-12) of the stream documents, and their validation and wire form.

The schemas are the machine-readable half of STREAM_PROTOCOL.md: ``realtime-erc schema`` prints
them, the publish stage checks every outgoing document against them, and a subscriber in another
language can validate with any draft 2020-12 validator. Producers never add fields, so every
object is closed (``additionalProperties: false``); consumers should still ignore unknown fields.
"""

from __future__ import annotations

import json
import math
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

EMOTION_SCHEMA_ID = "erc.emotion/1"
STATUS_SCHEMA_ID = "erc.status/1"

_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TIMESTAMP = {
    "type": "string",
    "description": "ISO-8601 UTC time, e.g. 2026-11-22T10:00:43.741Z.",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$",
}
_SESSION_ID = {"type": "string", "minLength": 1, "description": "Raw session id."}
_LABEL_SET = {"type": "string", "minLength": 1, "description": "Label set name, e.g. meld7."}
_MODEL = {
    "type": ["string", "null"],
    "description": "Model name@version that produced the labels; null when none is configured.",
}
_SECONDS = {"type": "number", "minimum": 0, "description": "Seconds on the session clock."}

EMOTION_SCHEMA: dict[str, Any] = {
    "$schema": _DIALECT,
    "$id": "urn:realtime-erc:schema:erc.emotion/1",
    "title": EMOTION_SCHEMA_ID,
    "description": "One utterance's emotion (a provisional one may precede the final one).",
    "type": "object",
    "required": [
        "schema",
        "session_id",
        "utterance_id",
        "speaker",
        "start",
        "end",
        "text",
        "label",
        "scores",
        "label_set",
        "modalities",
        "provisional",
        "model",
        "latency_ms",
        "emitted_at",
    ],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": EMOTION_SCHEMA_ID},
        "session_id": _SESSION_ID,
        "utterance_id": {
            "type": "integer",
            "minimum": 0,
            "description": "Increases by one per utterance within a session.",
        },
        "speaker": {"type": "string", "minLength": 1, "description": "Raw speaker id."},
        "start": _SECONDS,
        "end": _SECONDS,
        "text": {"type": "string", "description": "Transcript; empty in a provisional event."},
        "label": {
            "type": ["string", "null"],
            "minLength": 1,
            "description": "argmax of scores; null until an emotion model is configured.",
        },
        "scores": {
            "description": "Probabilities over label_set, in its order; null without a model.",
            "type": ["object", "null"],
            "minProperties": 1,
            "propertyNames": {"minLength": 1},
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "label_set": _LABEL_SET,
        "modalities": {
            "type": "object",
            "description": "Which modalities contributed to this event.",
            "required": ["text", "audio", "visual"],
            "additionalProperties": False,
            "properties": {
                "text": {"type": "boolean"},
                "audio": {"type": "boolean"},
                "visual": {"type": "boolean"},
            },
        },
        "provisional": {"type": "boolean"},
        "model": _MODEL,
        "latency_ms": {
            "type": "object",
            "description": "Milliseconds: total = last audio sample in → published; per stage.",
            "required": ["total"],
            "propertyNames": {"minLength": 1},
            "additionalProperties": {"type": "number", "minimum": 0},
        },
        "emitted_at": _TIMESTAMP,
        "errors": {
            "type": "array",
            "description": "Optional: work that failed for this utterance (the event still "
            "carries what did succeed). Absent when nothing failed.",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["stage", "message"],
                "additionalProperties": False,
                "properties": {
                    "stage": {"type": "string", "minLength": 1},
                    "message": {"type": "string"},
                },
            },
        },
        "heads": {
            "type": "object",
            "description": "Optional: each emotion head's distribution over label_set "
            "(audio: the voice, visual: the face), as the heads alone see the utterance.",
            "propertyNames": {"enum": ["audio", "visual"]},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "$schema": _DIALECT,
    "$id": "urn:realtime-erc:schema:erc.status/1",
    "title": STATUS_SCHEMA_ID,
    "description": "Session lifecycle: online, offline (clean end) or lost (the MQTT last will).",
    "type": "object",
    "required": ["schema", "session_id", "state", "model", "label_set", "at"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": STATUS_SCHEMA_ID},
        "session_id": _SESSION_ID,
        "state": {"enum": ["online", "offline", "lost"]},
        "model": _MODEL,
        "label_set": _LABEL_SET,
        "at": _TIMESTAMP,
        "load": {
            "type": "object",
            "description": "Optional: the overload policy's state, sent whenever it changes "
            "(level 0 = nothing shed).",
            "required": ["level", "shedding", "lag_ms", "shed_counts"],
            "additionalProperties": False,
            "properties": {
                "level": {"type": "integer", "minimum": 0},
                "shedding": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "lag_ms": {"type": "number", "minimum": 0},
                "shed_counts": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
            },
        },
        "context": {
            "type": "object",
            "description": "Optional, on the online status of a session that goes on after "
            "its server lost it (a client reconnected with the same session_id): the session "
            "time its audio resumes from, its next utterance_id, and which parts of the "
            "session's context were kept and which start afresh.",
            "required": ["resumed_at", "next_utterance_id", "kept", "lost"],
            "additionalProperties": False,
            "properties": {
                "resumed_at": {"type": "number", "minimum": 0},
                "next_utterance_id": {"type": "integer", "minimum": 0},
                "kept": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "lost": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    EMOTION_SCHEMA_ID: EMOTION_SCHEMA,
    STATUS_SCHEMA_ID: STATUS_SCHEMA,
}
"""Every document schema, keyed by the value of the documents' ``schema`` field."""

_VALIDATORS = {key: Draft202012Validator(schema) for key, schema in SCHEMAS.items()}


class SchemaError(ValueError):
    """A document does not match its schema. ``field`` is the JSON path of the offending value
    (``"latency_ms/total"``; ``""`` for the document itself)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def validate_document(doc: Any) -> None:
    """Check ``doc`` against the schema named by its ``schema`` field.

    Raises :class:`SchemaError` whose message names the schema and the field. Besides the JSON
    Schema, numbers must be finite: JSON cannot carry NaN or infinity.
    """
    if not isinstance(doc, dict):
        raise SchemaError(f"a document must be a JSON object, got {type(doc).__name__}")
    schema_id = doc.get("schema")
    validator = _VALIDATORS.get(schema_id) if isinstance(schema_id, str) else None
    if validator is None:
        known = ", ".join(SCHEMAS)
        raise SchemaError(
            f"field 'schema': unknown document schema {schema_id!r} (known: {known})", "schema"
        )
    error = best_match(validator.iter_errors(doc))
    if error is not None:
        path, message = _describe(error)
        where = f"field '{path}'" if path else "document"
        raise SchemaError(f"{schema_id}: {where}: {message}", path)
    bad = _non_finite(doc)
    if bad is not None:
        raise SchemaError(f"{schema_id}: field '{bad}': NaN or infinity is not valid JSON", bad)


def _describe(error: ValidationError) -> tuple[str, str]:
    """(JSON path of the offending field, message); a missing or extra key is named itself."""
    parts = [str(p) for p in error.absolute_path]
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance]
        if missing:
            return "/".join([*parts, missing[0]]), "is required but missing"
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {})
        extra = [k for k in instance if k not in known]
        if extra:
            return "/".join([*parts, str(extra[0])]), "is not a field of this schema"
    return "/".join(parts), error.message


def encode_document(doc: dict[str, Any]) -> str:
    """The wire form of a document: one line of JSON, UTF-8 text kept as is (not \\u-escaped).

    Never contains a raw newline (json escapes them inside strings), so it is a valid JSONL line.
    Raises :class:`SchemaError` for NaN/infinity instead of writing invalid JSON.
    """
    try:
        return json.dumps(doc, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        bad = _non_finite(doc) or ""
        raise SchemaError(f"cannot encode document: field '{bad}': {e}", bad) from None


def decode_json(text: str | bytes) -> Any:
    """Parse received JSON strictly: ``ValueError`` for malformed text, ``NaN``/``Infinity``
    (Python's json accepts them, JSON does not) and nesting too deep for the parser (which
    would otherwise surface as ``RecursionError``). Subscribers and readers use this so that
    one hostile payload is skipped or refused instead of killing them."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _non_finite(value: Any, path: str = "") -> str | None:
    """JSON path of the first NaN/infinite float inside ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, child in items:
        found = _non_finite(child, f"{path}/{key}" if path else str(key))
        if found is not None:
            return found
    return None
