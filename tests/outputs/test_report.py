"""Session reports: a real matplotlib PNG / HTML from a JSONL stream."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from matplotlib import image as mpimg

from realtime_erc.outputs.report import ReportError, read_session, write_report


def _emotion(i: int, speaker: str, label: str | None, provisional: bool = False) -> dict:
    scores = (
        None
        if label is None
        else {"neutral": 0.2, label: 0.8}
        if label != "neutral"
        else {"neutral": 1.0}
    )
    return {
        "schema": "erc.emotion/1", "session_id": "demo-01", "utterance_id": i,
        "speaker": speaker, "start": 2.0 * i, "end": 2.0 * i + 1.5,
        "text": "" if provisional else f"line {i} <b>", "label": label, "scores": scores,
        "label_set": "meld7", "modalities": {"text": True, "audio": True, "visual": False},
        "provisional": provisional, "model": None, "latency_ms": {"total": 300.0 + i},
        "emitted_at": "2026-11-22T10:00:00.000Z",
    }  # fmt: skip


@pytest.fixture
def stream(tmp_path):
    docs = [{"schema": "erc.status/1", "session_id": "demo-01", "state": "online"}]
    docs += [_emotion(0, "A", "neutral", provisional=True), _emotion(0, "A", "joy")]
    docs += [_emotion(1, "B", "anger"), _emotion(2, "A", "sadness"), _emotion(3, "B", None)]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")  # bad lines: refused
    return path


def test_read_session_keeps_final_documents(stream):
    data = read_session(stream)
    assert [u["utterance_id"] for u in data.utterances] == [0, 1, 2, 3]
    assert data.utterances[0]["label"] == "joy"  # the final replaced the provisional
    summary = {s.speaker: s for s in data.summaries()}
    assert summary["A"].utterances == 2 and summary["B"].utterances == 2
    assert summary["A"].speaking_s == pytest.approx(3.0)
    assert summary["B"].labels["no label"] == 1


def test_png_is_not_blank(stream, tmp_path):
    out = write_report(stream, tmp_path / "r.png")
    pixels = mpimg.imread(io.BytesIO(out.read_bytes()))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # drawn, not one colour
    # the label colours are in the picture: joy's yellow (#f5c518) somewhere
    yellow = np.array([0xF5, 0xC5, 0x18]) / 255
    assert (np.abs(rgb - yellow).max(axis=-1) < 0.12).sum() > 50


def test_html_embeds_figure_table_and_escaped_transcript(stream, tmp_path):
    out = write_report(stream, tmp_path / "r.html")
    page = out.read_text()
    assert "data:image/png;base64," in page
    assert "<td>A</td><td>2</td>" in page
    assert "line 1 &lt;b&gt;" in page and "line 1 <b>" not in page


def test_bad_inputs_are_one_clear_error(tmp_path, stream):
    with pytest.raises(ReportError, match="cannot read"):
        write_report(tmp_path / "missing.jsonl", tmp_path / "r.png")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(ReportError, match="no erc.emotion/1 documents"):
        write_report(empty, tmp_path / "r.png")
    with pytest.raises(ReportError, match=".png or .html"):
        write_report(stream, tmp_path / "r.pdf")


def test_cli_report(run_cli, stream, tmp_path):
    result = run_cli("report", str(stream), "-o", str(tmp_path / "r.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.png").stat().st_size > 10_000
    bad = run_cli("report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r.png"))
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
