"""JSON Schemas of erc.emotion/1 and erc.status/1 against STREAM_PROTOCOL.md."""

from __future__ import annotations

import copy
import json

import pytest
from jsonschema import Draft202012Validator

from realtime_erc.events import EmotionEvent, StatusEvent, utc_timestamp
from realtime_erc.outputs.schema import (
    EMOTION_SCHEMA,
    SCHEMAS,
    SchemaError,
    encode_document,
    validate_document,
)

# Copied verbatim from STREAM_PROTOCOL.md.
PROTOCOL_EMOTION = json.loads("""
{
  "schema": "erc.emotion/1",
  "session_id": "demo-01",
  "utterance_id": 12,
  "speaker": "A",
  "start": 41.20,
  "end": 43.05,
  "text": "oh my god, that's amazing",
  "label": "joy",
  "scores": {"neutral": 0.05, "surprise": 0.21, "fear": 0.01, "sadness": 0.01, "joy": 0.70, "disgust": 0.01, "anger": 0.01},
  "label_set": "meld7",
  "modalities": {"text": true, "audio": true, "visual": true},
  "provisional": false,
  "model": "bigfusion/meld7-assembled@3f2a9c1e",
  "latency_ms": {"segment": 412.0, "asr": 230.5, "features": 38.1, "model": 2.4, "total": 690.3},
  "emitted_at": "2026-11-22T10:00:43.741Z"
}
""")  # noqa: E501
PROTOCOL_STATUS = json.loads(
    '{"schema": "erc.status/1", "session_id": "demo-01", "state": "online", "model": "...", '
    '"label_set": "meld7", "at": "2026-11-22T10:00:00.000Z"}'
)


def emotion(**changes: object) -> dict:
    doc = copy.deepcopy(PROTOCOL_EMOTION)
    doc.update(changes)
    return doc


def test_schemas_are_valid_draft_2020_12() -> None:
    assert set(SCHEMAS) == {"erc.emotion/1", "erc.status/1"}
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["additionalProperties"] is False
    json.dumps(SCHEMAS)  # printable by `realtime-erc schema`


def test_protocol_examples_are_valid() -> None:
    validate_document(PROTOCOL_EMOTION)
    validate_document(PROTOCOL_STATUS)
    for state in ("offline", "lost"):
        validate_document({**PROTOCOL_STATUS, "state": state, "model": None})


def test_document_without_emotion_model_is_valid() -> None:
    doc = emotion(label=None, scores=None, model=None, provisional=True, text="")
    doc["latency_ms"] = {"total": 0}
    validate_document(doc)


def test_events_produce_valid_documents() -> None:
    event = EmotionEvent(
        session_id="s/1",
        utterance_id=0,
        speaker="SPEAKER_00",
        start=0.0,
        end=1.2345,
        text="héllo",
        label=None,
        scores=None,
        label_set="meld7",
        modalities={"text": True, "audio": True, "visual": False},
        provisional=False,
        model=None,
        latency_ms={"segment": 400.0, "asr": 120.0, "total": 530.5},
        emitted_at=utc_timestamp(),
    )
    validate_document(event.to_document())
    status = StatusEvent("s/1", "online", None, "meld7", utc_timestamp())
    validate_document(status.to_document())


def test_required_fields_match_the_protocol() -> None:
    assert set(EMOTION_SCHEMA["required"]) == set(PROTOCOL_EMOTION)
    # the optional additions (README, "The stream"): per-utterance errors, the heads' scores
    assert set(EMOTION_SCHEMA["properties"]) == set(PROTOCOL_EMOTION) | {"errors", "heads"}


def test_heads_are_optional_and_checked() -> None:
    scores = PROTOCOL_EMOTION["scores"]
    validate_document(emotion(heads={"audio": scores, "visual": scores}))
    with pytest.raises(SchemaError):
        validate_document(emotion(heads={"smell": scores}))
    with pytest.raises(SchemaError):
        validate_document(emotion(heads={"audio": {"joy": 1.5}}))


def test_errors_and_load_are_optional_and_checked() -> None:
    from realtime_erc.events import Fault, LoadReport

    event = EmotionEvent(
        session_id="s", utterance_id=0, speaker="S1", start=0.0, end=1.0, text="", label=None,
        scores=None, label_set="meld7", modalities={"text": False, "audio": True, "visual": False},
        provisional=False, model=None, latency_ms={"total": 1.0}, emitted_at=utc_timestamp(),
        faults=(Fault("asr", "RuntimeError: decoder crashed"),),
    )  # fmt: skip
    doc = event.to_document()
    validate_document(doc)
    assert doc["errors"] == [{"stage": "asr", "message": "RuntimeError: decoder crashed"}]
    doc["errors"] = [{"stage": "asr"}]
    with pytest.raises(SchemaError):
        validate_document(doc)
    status = StatusEvent("s", "online", None, "meld7", utc_timestamp(),
                         LoadReport(4, ("provisional",), 9000.0, {}))  # fmt: skip
    validate_document(status.to_document())
    bad = status.to_document()
    bad["load"]["level"] = -1
    with pytest.raises(SchemaError):
        validate_document(bad)


def test_extra_field_is_rejected() -> None:
    with pytest.raises(SchemaError, match="'confidence'") as info:
        validate_document(emotion(confidence=0.9))
    assert info.value.field == "confidence"


def test_extra_nested_field_is_rejected() -> None:
    doc = emotion()
    doc["modalities"]["smell"] = False
    with pytest.raises(SchemaError) as info:
        validate_document(doc)
    assert info.value.field == "modalities/smell"


@pytest.mark.parametrize("field", sorted(PROTOCOL_EMOTION))
def test_every_missing_field_is_rejected_and_named(field: str) -> None:
    doc = emotion()
    del doc[field]
    with pytest.raises(SchemaError, match=f"'{field}'") as info:
        validate_document(doc)
    assert info.value.field in (field, "schema")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("utterance_id", "12"),
        ("utterance_id", 1.5),
        ("utterance_id", -1),
        ("utterance_id", True),
        ("speaker", 7),
        ("speaker", ""),
        ("start", "41.2"),
        ("end", None),
        ("text", None),
        ("label", 3),
        ("provisional", "no"),
        ("provisional", 0),
        ("model", 1),
        ("modalities", ["text"]),
        ("latency_ms", 690.3),
        ("emitted_at", "2026-11-22 10:00:43"),
        ("emitted_at", "2026-11-22T10:00:43.741+01:00"),
        ("emitted_at", 1234.5),
        ("session_id", ""),
    ],
)
def test_wrong_type_is_rejected_and_named(field: str, value: object) -> None:
    with pytest.raises(SchemaError, match=f"'{field}") as info:
        validate_document(emotion(**{field: value}))
    assert info.value.field.split("/")[0] == field


@pytest.mark.parametrize(
    "scores",
    [{"joy": 1.5}, {"joy": -0.1}, {"joy": "0.7"}, {"joy": None}, {}, [0.7, 0.3], "joy"],
)
def test_bad_scores_are_rejected(scores: object) -> None:
    with pytest.raises(SchemaError, match="scores"):
        validate_document(emotion(scores=scores))


def test_modalities_need_all_three_booleans() -> None:
    doc = emotion(modalities={"text": True, "audio": False})
    with pytest.raises(SchemaError) as info:
        validate_document(doc)
    assert info.value.field == "modalities/visual"
    with pytest.raises(SchemaError, match="modalities/text"):
        validate_document(emotion(modalities={"text": 1, "audio": True, "visual": True}))


def test_latency_needs_total_and_non_negative_numbers() -> None:
    with pytest.raises(SchemaError) as info:
        validate_document(emotion(latency_ms={"asr": 3.0}))
    assert info.value.field == "latency_ms/total"
    with pytest.raises(SchemaError, match="latency_ms/asr"):
        validate_document(emotion(latency_ms={"asr": -3.0, "total": 5.0}))
    with pytest.raises(SchemaError, match="latency_ms/total"):
        validate_document(emotion(latency_ms={"total": float("nan")}))


def test_status_document_is_checked() -> None:
    with pytest.raises(SchemaError, match="'state'"):
        validate_document({**PROTOCOL_STATUS, "state": "paused"})
    with pytest.raises(SchemaError, match="'at'"):
        validate_document({**PROTOCOL_STATUS, "at": "yesterday"})
    with pytest.raises(SchemaError, match="'label'"):
        validate_document({**PROTOCOL_STATUS, "label": "joy"})


def test_unknown_or_missing_schema_and_non_objects_are_rejected() -> None:
    with pytest.raises(SchemaError, match="erc.emotion/2"):
        validate_document(emotion(schema="erc.emotion/2"))
    with pytest.raises(SchemaError, match="known: erc.emotion/1, erc.status/1"):
        validate_document({"session_id": "x"})
    with pytest.raises(SchemaError, match="JSON object"):
        validate_document([PROTOCOL_EMOTION])


def test_encode_document_is_one_line_of_utf8_json() -> None:
    doc = emotion(text='line one\nline "two" — ünïcode')
    wire = encode_document(doc)
    assert "\n" not in wire and "ünïcode" in wire
    assert json.loads(wire) == doc
    with pytest.raises(SchemaError, match="latency_ms/total"):
        encode_document(emotion(latency_ms={"total": float("inf")}))
