"""Late fusion: the conversation model's scores with the emotion heads', each trusted as far as
it has shown to be on development sessions run through the pipeline.

For labels ``l`` of the model's label set, the model's distribution ``p_m`` and each head's
distribution ``p_h`` mapped onto the labels (:func:`~realtime_erc.emit.project_scores`, one
head at a time), the final distribution is a gated log-linear pool:

    z_l = w_m · log p_m(l) + Σ_h g_h · w_h · log p_h(l),      p(l) = softmax(z)_l

    g_h = clip((c_h − τ_h) / (1 − τ_h), 0, 1)

with ``c_h`` either how much the head hears an emotion at all, ``1 − p_h(neutral)``, or its
confidence ``1 − H(p_h) / log K`` (1 for a one-hot distribution, 0 for the uniform one over the
``K`` labels). A head below its threshold ``τ_h`` adds nothing: a flat synthetic voice, which
the speech head mostly hears as neutral, leaves the words to decide; a clearly emotional voice
over neutral words moves the result (Whisper's "!" on an aroused voice makes the text model
say anger: the voice then says which emotion). The weights,
thresholds and gate signal are fitted on the valid half of the development sessions
(:func:`fit_fusion`, ``realtime-erc fit-fusion``), per model, and stored in
``assets/fusion.toml`` under the model's id; a model without an entry runs unfused.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from realtime_erc.errors import UserError
from realtime_erc.toml_writer import toml_value
from realtime_erc.training.erc_metrics import weighted_f1

FUSION_FILE = Path(__file__).resolve().parent / "assets" / "fusion.toml"
"""The fitted fusion of each packaged model, by model id."""

HEADS: tuple[str, ...] = ("audio", "visual")
NEUTRAL = "neutral"  # in meld7 and iemocap6 alike
EPS = 1e-4


class FusionError(UserError, ValueError):
    """A fusion file that cannot be used."""


class FusionParams(BaseModel):
    """One model's fitted fusion (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The model id it was fitted for (name/label_set@hash8).")
    model_weight: float = Field(1.0, ge=0)
    weights: dict[str, float] = Field(default_factory=dict, description="w_h per head.")
    gates: dict[str, float] = Field(default_factory=dict, description="τ_h per head, in [0, 1).")
    gate_on: Literal["confidence", "emotion"] = Field(
        "confidence",
        description="c_h: the head's confidence, or how much it hears an emotion at all "
        "(1 − p_h(neutral)): an emotional voice then moves neutral words, a flat voice does "
        "not move emotional ones.",
    )
    fitted_on: str = ""
    valid: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per condition: wF1 of the fused vs unfused finals."
    )


def confidence(p: Sequence[float]) -> float:
    """``1 − H(p) / log K``: 0 for the uniform distribution, 1 for a certain one."""
    k = len(p)
    if k < 2:
        return 0.0
    h = -sum(x * math.log(x) for x in p if x > 0)
    return max(0.0, 1.0 - h / math.log(k))


def fuse(
    model: Mapping[str, float], heads: Mapping[str, Mapping[str, float]], params: FusionParams
) -> dict[str, float]:
    """The fused distribution over ``model``'s labels (the model's own where no head speaks)."""
    labels = list(model)
    neutral = labels.index(NEUTRAL) if NEUTRAL in labels else 0
    z = [params.model_weight * math.log(max(model[label], EPS)) for label in labels]
    for head, scores in heads.items():
        weight = params.weights.get(head, 0.0)
        if weight <= 0 or not scores:
            continue
        p = [max(float(scores.get(label, 0.0)), 0.0) for label in labels]
        mass = sum(p)
        if mass <= 0:
            continue
        p = [x / mass for x in p]
        tau = params.gates.get(head, 0.0)
        c = confidence(p) if params.gate_on == "confidence" else 1.0 - p[neutral]
        gate = min(1.0, max(0.0, (c - tau) / (1.0 - tau)))
        if gate > 0:
            z = [zi + gate * weight * math.log(max(pi, EPS)) for zi, pi in zip(z, p, strict=True)]
    top = max(z)
    e = [math.exp(zi - top) for zi in z]
    total = sum(e)
    return {label: round(x / total, 6) for label, x in zip(labels, e, strict=True)}


def load_fusion(path: Path = FUSION_FILE) -> dict[str, FusionParams]:
    """Fitted fusions by model id (none when the file is absent)."""
    if not path.is_file():
        return {}
    try:
        raw = tomllib.loads(path.read_text())
        entries = [FusionParams(**e) for e in raw.get("fusion", [])]
    except (OSError, tomllib.TOMLDecodeError, ValueError) as e:
        raise FusionError(f"{path}: not a fusion file ({e}): refit it with `realtime-erc "
                          "fit-fusion` or set fusion.mode=off") from None  # fmt: skip
    return {e.model: e for e in entries}


def fusion_for(model_id: str, mode: str, path: Path = FUSION_FILE) -> FusionParams | None:
    """The fusion to apply to ``model_id`` under ``fusion.mode`` (``auto``: its fitted entry if
    any; ``off``: none)."""
    if mode == "off":
        return None
    return load_fusion(path).get(model_id)


def save_fusion(params: FusionParams, path: Path = FUSION_FILE) -> None:
    """Add or replace ``params``' entry (by model id) in the fusion file."""
    entries = load_fusion(path) | {params.model: params}
    blocks = []
    for e in entries.values():
        lines = ["[[fusion]]"] + [
            f"{k} = {toml_value(v)}" for k, v in e.model_dump().items() if v not in ({}, "")
        ]
        blocks.append("\n".join(lines))
    header = "# Fitted by `realtime-erc fit-fusion` on development sessions (see fusion.py).\n\n"
    path.write_text(header + "\n\n".join(blocks) + "\n")


# ---------------------------------------------------------------------------------- fitting

Row = tuple[str, str, Mapping[str, float], Mapping[str, Mapping[str, float]]]
"""(condition, true label, the model's scores, the heads' scores) of one utterance."""

WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 50.0, 100.0)
"""Up to 100: so large a weight is a switch (past its gate the head decides), which is where the
fit went once the speech head was trained on more voices."""
GATE_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8)
GATE_ON = ("confidence", "emotion")


def per_condition(rows: Sequence[Row], params: FusionParams | None) -> dict[str, float]:
    """Final weighted F1 per condition with ``params`` (None: the model alone)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for condition, truth, model, heads in rows:
        scores = fuse(model, heads, params) if params is not None else model
        t, p = out.setdefault(condition, ([], []))
        t.append(truth)
        p.append(max(scores, key=scores.__getitem__))
    return {c: weighted_f1(t, p) for c, (t, p) in out.items()}


def single_modalities(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per condition, the weighted F1 of each source alone: the model, each head."""
    out: dict[str, dict[str, tuple[list[str], list[str | None]]]] = {}
    for condition, truth, model, heads in rows:
        for source in ("model", *HEADS):
            scores = model if source == "model" else heads.get(source)
            t, p = out.setdefault(condition, {}).setdefault(source, ([], []))
            t.append(truth)
            p.append(max(scores, key=scores.__getitem__) if scores else None)
    return {c: {s: weighted_f1(t, p) for s, (t, p) in by.items()} for c, by in out.items()}


def fit_fusion(rows: Sequence[Row], model_id: str, fitted_on: str = "") -> FusionParams:
    """The weights, gates and gate signal for which the fused finals fall least below the best
    single source (the model or one head alone) in the worst condition, then have the best
    mean over conditions (each condition counts the same, whatever its size); a grid search,
    ties to the smaller weights."""
    best_single = {c: max(s.values()) for c, s in single_modalities(rows).items()}
    best, best_key = None, (-2.0, -1.0)
    grid = itertools.product(GATE_ON, WEIGHT_GRID, WEIGHT_GRID, GATE_GRID, GATE_GRID)
    for on, wa, wv, ga, gv in grid:
        if (wa == 0 and ga > 0) or (wv == 0 and gv > 0):
            continue  # a gate without a weight changes nothing
        params = FusionParams(model=model_id, weights={"audio": wa, "visual": wv},
                              gates={"audio": ga, "visual": gv}, gate_on=on)  # fmt: skip
        scores = per_condition(rows, params)
        margin = min(scores[c] - best_single[c] for c in scores)
        key = (round(margin, 6), round(sum(scores.values()) / len(scores), 6))
        if key > best_key:
            best, best_key = params, key
    assert best is not None
    before, after = per_condition(rows, None), per_condition(rows, best)
    valid = {c: {"unfused": round(before[c], 4), "fused": round(after[c], 4),
                 "best_single": round(best_single[c], 4)} for c in after}  # fmt: skip
    return best.model_copy(update={"fitted_on": fitted_on, "valid": valid})


def rows_of(report: Mapping) -> list[Row]:
    """The fitting rows of a multi-session evaluation (``evaluate-session --out`` JSON, or
    ``MultiSessionReport.to_dict()``), run with ``fusion.mode=off``: every annotated utterance
    that got a final event with scores."""
    rows: list[Row] = []
    for session in report.get("sessions", []):
        for r in session.get("per_utterance", []):
            if r.get("scores"):
                rows.append((session["condition"], r["emotion"], r["scores"], r.get("heads") or {}))
    return rows


def refuse_test_paths(paths: Sequence[Path]) -> None:
    """The fusion is fitted on the valid half only (the test half is scored once, after)."""
    if any("test" in Path(p).resolve().parts for p in paths):
        raise FusionError(
            "fit-fusion fits on the valid half only: a path under test/ was given; score "
            "the test half once with `evaluate-session` after fitting"
        )


def fit_report(report: Mapping) -> FusionParams:
    """Fit on an ``evaluate-session`` report (``MultiSessionReport.to_dict()``) that was run
    with ``fusion.mode = "off"``."""
    rows = rows_of(report)
    if not rows or not report.get("model"):
        raise FusionError(
            "no scored final events to fit on: run with a model and sessions whose label set "
            "is the model's"
        )
    paths = [s["path"] for s in report.get("sessions", []) if "per_utterance" in s]
    halves = sorted({str(Path(p).parents[1]) for p in paths})  # <half>/<condition>/<session>
    where = f"{len(paths)} sessions under {' and '.join(halves)}" if paths else "?"
    return fit_fusion(rows, report["model"], fitted_on=f"{len(rows)} utterances of {where}")
