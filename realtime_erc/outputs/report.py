"""Session reports (``realtime-erc report SESSION.jsonl -o report.html|report.png``).

Reads a stream recorded as JSONL (``--jsonl`` or ``watch --jsonl``), keeps the last document per
utterance (a final one replaces its provisional one), and draws one emotion timeline per speaker
(matplotlib, Agg backend: no display needed) with a summary table per speaker: utterances,
speaking time, dominant emotion, mean latency. PNG: the figure; HTML: the figure embedded, the
table and the transcript, in one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from realtime_erc.errors import UserError
from realtime_erc.outputs.schema import (  # noqa: E402
    EMOTION_SCHEMA_ID,
    SchemaError,
    decode_json,
    validate_document,
)

log = logging.getLogger(__name__)

LABEL_COLORS = {
    "joy": "#f5c518",
    "happy": "#f5c518",
    "excited": "#f0a020",
    "surprise": "#d46be0",
    "anger": "#e5484d",
    "angry": "#e5484d",
    "frustrated": "#b5484d",
    "sadness": "#4a90e2",
    "sad": "#4a90e2",
    "fear": "#2bb3a3",
    "disgust": "#5fb34a",
    "neutral": "#9aa4ae",
}
NO_LABEL = "no label"
NO_LABEL_COLOR = "#d0d4d8"


class ReportError(UserError, ValueError):
    """The input cannot be reported on (missing, empty, not a stream); the message says why."""


@dataclass
class SpeakerSummary:
    speaker: str
    utterances: int = 0
    speaking_s: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def dominant(self) -> str:
        return self.labels.most_common(1)[0][0] if self.labels else NO_LABEL

    @property
    def mean_latency_ms(self) -> float | None:
        return sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else None


@dataclass
class SessionData:
    """The final documents of one session, in utterance order."""

    session_id: str
    utterances: list[dict[str, Any]]

    @property
    def speakers(self) -> list[str]:
        return sorted({u["speaker"] for u in self.utterances})

    def summaries(self) -> list[SpeakerSummary]:
        by: dict[str, SpeakerSummary] = {s: SpeakerSummary(s) for s in self.speakers}
        for u in self.utterances:
            s = by[u["speaker"]]
            s.utterances += 1
            s.speaking_s += max(0.0, float(u["end"]) - float(u["start"]))
            s.labels[u.get("label") or NO_LABEL] += 1
            total = (u.get("latency_ms") or {}).get("total")
            if total is not None:
                s.latencies_ms.append(float(total))
        return list(by.values())


def read_session(path: Path, session_id: str | None = None) -> SessionData:
    """The session in a JSONL stream file (the first one, or ``session_id``); raises
    :class:`ReportError` naming the file and the problem."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror}. Pass a JSONL stream file") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path} is not UTF-8 text: pass a JSONL stream file") from None
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        # A malformed line is refused, not skipped: a report silently missing utterances is
        # worse than none. (A crash can leave a partial line: delete it.)
        try:
            doc = decode_json(line)
        except ValueError as e:
            raise ReportError(
                f"{path}, line {lineno}: not a JSON document ({e}); fix or delete that line"
            ) from None
        if not isinstance(doc, dict) or doc.get("schema") != EMOTION_SCHEMA_ID:
            continue
        try:
            validate_document(doc)
        except SchemaError as e:
            raise ReportError(f"{path}, line {lineno}: {e}; fix or delete that line") from None
        sid = doc.get("session_id")
        if session_id is None:
            session_id = sid
        if sid != session_id:
            continue
        key = (sid, int(doc["utterance_id"]))
        old = latest.get(key)
        if old is None or not (doc.get("provisional") and not old.get("provisional")):
            latest[key] = doc
    if not latest:
        raise ReportError(
            f"{path} holds no erc.emotion/1 documents"
            + (f" of session {session_id!r}" if session_id else "")
            + ": record one with `realtime-erc replay DIR --jsonl FILE`"
        )
    utterances = [latest[k] for k in sorted(latest, key=lambda k: k[1])]
    return SessionData(str(session_id), utterances)


def timeline_figure(data: SessionData) -> plt.Figure:
    """One row per speaker: each utterance a bar from start to end, coloured by its label and
    as opaque as the label's probability; a summary table below."""
    speakers = data.speakers
    fig = plt.figure(figsize=(11, 1.2 + 0.7 * len(speakers) + 0.35 * (len(speakers) + 1)))
    grid = fig.add_gridspec(2, 1, height_ratios=[max(1, len(speakers)), 0.6 + 0.3 * len(speakers)])
    ax = fig.add_subplot(grid[0])
    seen: dict[str, str] = {}
    for row, speaker in enumerate(speakers):
        for u in (u for u in data.utterances if u["speaker"] == speaker):
            label = u.get("label") or NO_LABEL
            color = LABEL_COLORS.get(label.lower(), NO_LABEL_COLOR if label == NO_LABEL else "#888")
            scores = u.get("scores") or {}
            alpha = 0.35 + 0.65 * float(scores.get(label, 1.0)) if scores else 0.9
            start, end = float(u["start"]), float(u["end"])
            ax.barh(row, end - start, left=start, height=0.6, color=color, alpha=alpha,
                    edgecolor="#333", linewidth=0.5)  # fmt: skip
            seen.setdefault(label, color)
    ax.set_yticks(range(len(speakers)), speakers)
    ax.invert_yaxis()
    ax.set_xlabel("session time (s)")
    ax.set_title(f"Emotions over time — session {data.session_id}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        handles=[Patch(color=c, label=name) for name, c in seen.items()],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        frameon=False,
    )
    table_ax = fig.add_subplot(grid[1])
    table_ax.axis("off")
    rows = [
        [
            s.speaker,
            str(s.utterances),
            f"{s.speaking_s:.1f}",
            s.dominant,
            "–" if s.mean_latency_ms is None else f"{s.mean_latency_ms:.0f}",
        ]
        for s in data.summaries()
    ]
    table = table_ax.table(
        cellText=rows,
        colLabels=["speaker", "utterances", "speaking (s)", "dominant", "latency (ms)"],
        loc="center",
        cellLoc="center",
    )
    table.scale(1, 1.3)
    fig.tight_layout()
    return fig


def _png_bytes(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_html(data: SessionData, png: bytes) -> str:
    """A self-contained page: the figure, the summary table and the transcript."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(s.speaker)}</td><td>{s.utterances}</td><td>{s.speaking_s:.1f}</td>"
        f"<td>{esc(s.dominant)}</td><td>"
        f"{'–' if s.mean_latency_ms is None else f'{s.mean_latency_ms:.0f}'}</td></tr>"
        for s in data.summaries()
    )
    transcript = "".join(
        f'<li><span class="t">[{float(u["start"]):.1f}–{float(u["end"]):.1f}]</span> '
        f"<b>{esc(u['speaker'])}</b>: "
        f'<span style="color:{LABEL_COLORS.get(str(u.get("label")).lower(), "#555")}">'
        f"{esc(u['text'])}</span> <i>{esc(u.get('label') or NO_LABEL)}</i></li>"
        for u in data.utterances
    )
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>realtime-erc report — {esc(data.session_id)}</title>
<style>body{{font:15px system-ui,sans-serif;margin:24px;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}
.t{{color:#888;font-size:12px}}li{{margin:3px 0}}img{{max-width:100%}}</style></head>
<body><h1>Session {esc(data.session_id)}</h1>
<img alt="emotion timeline per speaker" src="data:image/png;base64,{image}">
<h2>Summary</h2><table><tr><th>speaker</th><th>utterances</th><th>speaking (s)</th>
<th>dominant emotion</th><th>mean latency (ms)</th></tr>{rows}</table>
<h2>Transcript</h2><ol>{transcript}</ol></body></html>
"""


def write_report(jsonl: Path, out: Path, session_id: str | None = None) -> Path:
    """Read ``jsonl`` and write ``out`` (``.png`` or ``.html``, chosen by its suffix)."""
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise ReportError(f"cannot write {out}: choose a .png or .html output (-o report.html)")
    data = read_session(jsonl, session_id)
    png = _png_bytes(timeline_figure(data))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        out.write_bytes(png)
    else:
        out.write_text(render_html(data, png), encoding="utf-8")
    return out
