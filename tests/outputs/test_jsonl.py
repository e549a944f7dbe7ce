"""JSONL output: one complete document per line after every publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from realtime_erc.outputs.jsonl import JsonlWriter
from realtime_erc.outputs.publisher import OutputError, Publisher
from realtime_erc.outputs.schema import SchemaError


def doc(i: int, text: str = "hi") -> dict:
    return {"schema": "erc.status/1", "session_id": "s", "n": i, "text": text}


async def test_lines_are_complete_after_each_publish(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "out.jsonl"
    writer = JsonlWriter(path)
    assert isinstance(writer, Publisher)
    await writer.start()
    for i in range(20):
        await writer.publish("erc/s/status", doc(i, text=f"line\n{i} — ünï"))
        raw = path.read_text(encoding="utf-8")
        assert raw.endswith("\n")
        lines = raw.splitlines()
        assert [json.loads(line)["n"] for line in lines] == list(range(i + 1))
    await writer.close()
    assert writer.written == 20
    assert "erc/s/status" not in path.read_text(encoding="utf-8")  # documents only


async def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    for run in range(2):
        writer = JsonlWriter(path)
        await writer.start()
        await writer.publish("t", doc(run))
        await writer.close()
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [0, 1]


async def test_a_partial_last_line_is_terminated(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"n": 0}\n{"n": 1, "trunc')
    writer = JsonlWriter(path)
    await writer.start()
    await writer.publish("t", doc(2))
    await writer.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["n"] == 2
    assert lines[-2] == '{"n": 1, "trunc'


async def test_unencodable_document_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path)
    await writer.start()
    with pytest.raises(SchemaError):
        await writer.publish("t", {"latency_ms": {"total": float("nan")}})
    await writer.publish("t", doc(1))
    await writer.close()
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [1]


async def test_unwritable_path_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="--jsonl"):
        await JsonlWriter(blocker / "out.jsonl").start()
