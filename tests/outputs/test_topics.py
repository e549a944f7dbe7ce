"""Topic names and id sanitising (STREAM_PROTOCOL.md, "Topics")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime_erc.outputs.topics import (
    check_prefix,
    document_kind,
    emotion_topic,
    sanitize_id,
    state_topic,
    status_topic,
    subscription_prefix,
    topic_for,
)


@given(st.text())
def test_sanitize_id_output_is_a_safe_topic_level(raw: str) -> None:
    out = sanitize_id(raw)
    assert out
    assert not any(ch in out for ch in "/+#")
    assert not out.startswith("$")
    out.encode("utf-8")  # a valid MQTT topic string
    assert sanitize_id(raw) == out  # deterministic
    assert sanitize_id(out) == out  # safe ids are left alone


@given(
    st.text(alphabet=st.characters(blacklist_characters="/+#$", blacklist_categories=("Cc", "Cs")))
)
def test_sanitize_id_keeps_safe_ids(raw: str) -> None:
    assert sanitize_id(raw) == (raw or "_")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("demo-01", "demo-01"),
        ("a/b", "a_b"),
        ("x+y#z", "x_y_z"),
        ("$SYS", "_SYS"),
        ("$$a", "_$a"),
        ("", "_"),
        ("Alice Smith", "Alice Smith"),
        ("tab\there", "tab_here"),
        ("日本", "日本"),
    ],
)
def test_sanitize_id_is_readable(raw: str, expected: str) -> None:
    assert sanitize_id(raw) == expected


def test_topics() -> None:
    assert emotion_topic("erc", "demo-01", "A") == "erc/demo-01/A/emotion"
    assert state_topic("erc", "demo-01", "A") == "erc/demo-01/A/state"
    assert status_topic("erc", "demo-01") == "erc/demo-01/status"
    assert emotion_topic("lab/erc/", "s/1", "#") == "lab/erc/s_1/_/emotion"
    assert subscription_prefix("erc") == "erc/"
    assert subscription_prefix("erc", "demo/01") == "erc/demo_01/"


def test_topic_for_chooses_by_document_kind() -> None:
    emotion = {"schema": "erc.emotion/1", "session_id": "s 1", "speaker": "$B"}
    status = {"schema": "erc.status/1", "session_id": "s 1", "state": "online"}
    assert document_kind(emotion) == "emotion"
    assert document_kind(status) == "status"
    assert topic_for("erc", emotion) == "erc/s 1/_B/emotion"
    assert topic_for("erc", status) == "erc/s 1/status"
    with pytest.raises(ValueError, match="erc.other/1"):
        topic_for("erc", {"schema": "erc.other/1"})


def test_check_prefix() -> None:
    assert check_prefix("erc") == "erc"
    assert check_prefix("lab/erc/") == "lab/erc"
    for bad in ("", "/", "erc/#", "a+b", "$SYS", "a//b"):
        with pytest.raises(ValueError, match="topic prefix"):
            check_prefix(bad)
