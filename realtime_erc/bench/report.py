"""A benchmark report: figures as JSON and as a markdown table."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def machine_info() -> dict[str, str | int]:
    import os

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpus": os.cpu_count() or 0,
    }


@dataclass
class BenchReport:
    """Benchmark figures. ``rows``: one dict per measured configuration; ``columns``: the
    (key, header) pairs shown in the markdown table."""

    name: str
    title: str
    columns: list[tuple[str, str]]
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"benchmark": self.name, "machine": machine_info(), **self.meta, "rows": self.rows}

    def markdown(self) -> str:
        head = "| " + " | ".join(h for _, h in self.columns) + " |"
        sep = "|" + "|".join("---" for _ in self.columns) + "|"
        body = [
            "| " + " | ".join(_cell(row.get(k)) for k, _ in self.columns) + " |"
            for row in self.rows
        ]
        notes = [f"- {k}: {v}" for k, v in self.meta.items() if not isinstance(v, (dict, list))]
        return "\n".join([f"## {self.title}", "", *notes, "", head, sep, *body, ""])

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        js = directory / f"{self.name}.json"
        md = directory / f"{self.name}.md"
        js.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        md.write_text(self.markdown())
        return [js, md]


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
