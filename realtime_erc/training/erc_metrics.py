"""ERC scores: weighted F1 (the headline), accuracy, per-class F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def scores(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Weighted F1 and accuracy in percent, per-class F1 (percent, by label name), the confusion
    matrix (as nested lists) and the number of utterances scored."""
    m = confusion(y_true, y_pred, len(labels))
    tp = np.diag(m).astype(np.float64)
    support = m.sum(1).astype(np.float64)
    predicted = m.sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    total = support.sum()
    weighted = float((f1 * support).sum() / total) if total else 0.0
    return {
        "weighted_f1": round(100 * weighted, 4),
        "accuracy": round(100 * float(tp.sum() / total), 4) if total else 0.0,
        "per_class_f1": {
            name: round(100 * float(v), 4) for name, v in zip(labels, f1, strict=True)
        },
        "confusion": m.tolist(),
        "utterances": int(total),
    }


def weighted_f1(truth: Sequence[str], pred: Sequence[str | None]) -> float:
    """Weighted F1 over label names, as a fraction: F1 per true class weighted by its support
    (``None`` predictions are always wrong). For streams scored against annotations."""
    classes = sorted(set(truth))
    total, n = 0.0, len(truth)
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(truth, pred, strict=True))
        fn = sum(t == c and p != c for t, p in zip(truth, pred, strict=True))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        total += f1 * sum(t == c for t in truth)
    return total / n if n else 0.0
