"""Outputs: the emotion stream's documents, topics and transports (STREAM_PROTOCOL.md).

``schema`` (JSON Schemas, validation, wire form), ``topics`` (topic names), ``publisher`` (the
publish stage and the Publisher protocol), ``zmq`` and ``jsonl`` (transports), ``console``
(terminal rendering and ``watch``). Transports are imported from their modules.
"""

from realtime_erc.outputs.publisher import OutputError, Publisher, PublishStage
from realtime_erc.outputs.schema import SCHEMAS, SchemaError, encode_document, validate_document
from realtime_erc.outputs.topics import (
    document_kind,
    emotion_topic,
    sanitize_id,
    state_topic,
    status_topic,
    subscription_prefix,
    topic_for,
)

__all__ = [
    "SCHEMAS",
    "OutputError",
    "PublishStage",
    "Publisher",
    "SchemaError",
    "document_kind",
    "emotion_topic",
    "encode_document",
    "sanitize_id",
    "state_topic",
    "status_topic",
    "subscription_prefix",
    "topic_for",
    "validate_document",
]
