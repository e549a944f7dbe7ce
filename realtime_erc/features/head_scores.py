"""The emotion heads' scores as ERC features (``features.heads = "scores"``).

Each head's log-probabilities are appended to its modality's pooled vector:

    audio'  = [audio  ‖ log p_speech]   [D_a + 8]   (RAVDESS classes)
    visual' = [visual ‖ log p_face]     [D_v + 7]   (FER2013 classes)

Scores rather than the heads' penultimate embeddings, because a model trained on them must see
scores from a head that never trained on the same clips or faces: the assembled corpus cross-fits
the speech head over its training actors, and the hidden units of separately trained heads are
not the same features, whereas their class scores are. An absent modality stays all zeros; a
present one without a head score (the head failed or found no face crop) gets the uniform
distribution, "no evidence".
"""

from __future__ import annotations

import numpy as np

from realtime_erc.events import ModalityFeatures
from realtime_erc.features.face_expression import FER_LABELS
from realtime_erc.features.speech_emotion import RAVDESS_LABELS

HEAD_CLASSES: dict[str, int] = {"audio": len(RAVDESS_LABELS), "visual": len(FER_LABELS)}
"""Modality → number of scores its head appends."""

MIN_PROB = 1e-4
"""Probabilities are clipped here before the log, so a confident head gives finite features."""


def resolve_heads(setting: str, trained_with: str | None) -> str:
    """``auto`` → what the checkpoint was trained with (its ``features.heads``; ``none`` when it
    does not say); ``none`` and ``scores`` stand."""
    if setting == "auto":
        return "scores" if trained_with == "scores" else "none"
    return setting


def log_scores(probs: np.ndarray | None, n: int) -> np.ndarray:
    """``log(clip(p))`` ``[n]``; None → the uniform distribution's."""
    if probs is None:
        return np.full(n, -np.log(n), np.float32)
    p = np.asarray(probs, np.float64)
    if p.shape != (n,):
        raise ValueError(f"expected {n} head scores, got shape {p.shape}")
    return np.log(np.clip(p, MIN_PROB, 1.0)).astype(np.float32)


def appended_scores(present: bool, probs: np.ndarray | None, n: int) -> np.ndarray:
    """What a modality gets appended: its head's log-probabilities, zeros when it is absent."""
    return log_scores(probs, n) if present else np.zeros(n, np.float32)


def with_scores(features: ModalityFeatures, probs: np.ndarray | None, n: int) -> ModalityFeatures:
    """``features`` with :func:`appended_scores` appended to its pooled vector."""
    extra = appended_scores(features.present, probs, n)
    pooled = np.concatenate([np.asarray(features.pooled, np.float32), extra])
    return ModalityFeatures(pooled, features.sequence, features.mask, present=features.present)
