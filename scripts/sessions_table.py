"""Markdown tables of `realtime-erc evaluate-session --out` results, side by side per condition.

    python scripts/sessions_table.py "old default=valid_default.json" "new default=valid_new.json"

One table per figure (weighted F1, accuracy), a row per condition, a column per run's final
events and one for the provisional events; then each source alone (the model, each head) of
every run that has per-utterance scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime_erc.fusion import rows_of, single_modalities  # noqa: E402


def table(runs: dict[str, dict], figure: str) -> str:
    """Final events per run, then the provisional events of the first run (the heads': the
    same whatever the model)."""
    conditions = sorted({c for r in runs.values() for c in r.get("conditions", {})}) + ["all"]
    first = next(iter(runs.values()))
    lines = ["| condition | " + " | ".join(f"{name}: final" for name in runs) + " | provisional |",
             "|---" * (2 + len(runs)) + "|"]  # fmt: skip
    for c in conditions:
        cells = []
        for r, kind in [(r, "final") for r in runs.values()] + [(first, "provisional")]:
            pooled = r["all"] if c == "all" else r.get("conditions", {}).get(c)
            value = (pooled or {}).get(kind, {}).get(figure)
            cells.append("—" if value is None else f"{value:.3f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sources(name: str, report: dict) -> str:
    singles = single_modalities(rows_of(report))
    lines = [f"| condition | {name}: model alone | speech head alone | face head alone |",
             "|---|---|---|---|"]  # fmt: skip
    for c, s in sorted(singles.items()):
        lines.append(f"| {c} | {s['model']:.3f} | {s['audio']:.3f} | {s['visual']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=FILE.json")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        runs[name] = json.loads(Path(path).read_text())
    print("Weighted F1\n\n" + table(runs, "weighted_f1") + "\n")
    print("Accuracy\n\n" + table(runs, "accuracy") + "\n")
    for name, report in runs.items():
        if rows_of(report):
            print(f"Each source alone (weighted F1), {name} run with fusion off\n")
            print(sources(name, report) + "\n")


if __name__ == "__main__":
    main()
