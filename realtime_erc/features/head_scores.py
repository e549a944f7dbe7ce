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

Which speech head scores live matters as much as how: a checkpoint's provenance names the head
that scored its corpus (``features.audio`` ends in ``+speech-head-crossfit3-<digest>`` for the
assembled corpus), and a live voice is one that head never heard, like the corpus's validation
and test voices, which the head fitted on all the training actors scored. That head is packaged
as ``assets/speech_emotion_crossfit3_<digest>.pt`` (:func:`scores_speech_head`), so the scores
the model sees live come from the same network as in its evaluation data; provisional events
keep the packaged head (trained on more actors).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from realtime_erc.events import ModalityFeatures
from realtime_erc.features.face_expression import FER_LABELS
from realtime_erc.features.speech_emotion import RAVDESS_LABELS, SpeechEmotionHead

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"

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


_SPEECH_HEAD = re.compile(r"(?:^|\+)(speech-head-crossfit(\d+)-([0-9a-f]{12}))$")


def speech_head_identity(audio_extractor: str | None) -> str | None:
    """The speech head named at the end of a checkpoint's ``features.audio`` provenance
    (``...+speech-head-crossfit3-d3be04f6e7cd``), or None."""
    match = _SPEECH_HEAD.search(audio_extractor or "")
    return match.group(1) if match else None


def scores_head_path(identity: str) -> Path:
    """Where the packaged copy of the speech head ``identity`` lives."""
    match = _SPEECH_HEAD.search(identity)
    if match is None:
        raise ValueError(f"not a cross-fitted speech head's identity: {identity!r}")
    return ASSETS / f"speech_emotion_crossfit{match.group(2)}_{match.group(3)}.pt"


def scores_speech_head(audio_extractor: str | None) -> SpeechEmotionHead | None:
    """The speech head whose scores a checkpoint trained with ``features.heads = "scores"``
    saw on voices it had not heard (see the module docstring), from its ``features.audio``
    provenance; None (with a warning when the provenance names one) if it is not packaged:
    the packaged head then scores instead, as before."""
    identity = speech_head_identity(audio_extractor)
    if identity is None:
        return None
    path = scores_head_path(identity)
    if not path.is_file():
        log.warning(
            "the model's audio scores came from %s, which is not packaged (%s): the packaged "
            "speech head scores instead (its scores differ from those the model trained on)",
            identity,
            path.name,
        )
        return None
    head = SpeechEmotionHead.load(path)
    if head.info.get("identity") != identity:
        raise ValueError(f"{path} holds {head.info.get('identity')!r}, not {identity!r}")
    return head
