"""Random dialogues of :class:`UtteranceFeatures` with the configured shapes: for model tests and
``bench models`` (no data needed). Missing modalities and any number of speakers included."""

from __future__ import annotations

import numpy as np

from realtime_erc.events import MODALITIES, ModalityFeatures, UtteranceFeatures
from realtime_erc.models.base import FeatureDims


def random_utterance(
    rng: np.random.Generator,
    dims: FeatureDims,
    utterance_id: int,
    speaker: str,
    p_missing: float = 0.2,
    max_seq: int = 12,
) -> UtteranceFeatures:
    """One utterance; each of audio/visual is missing with probability ``p_missing`` (text
    with half that), sequences have 1..max_seq steps."""
    feats = {}
    for name in MODALITIES:
        p = p_missing / 2 if name == "text" else p_missing
        seq_dim = dims.seq(name)
        if rng.random() < p:
            feats[name] = ModalityFeatures.absent(dims.pooled(name), seq_dim)
            continue
        seq = None
        if seq_dim is not None:
            seq = rng.standard_normal((int(rng.integers(1, max_seq + 1)), seq_dim)).astype(
                np.float32
            )
        feats[name] = ModalityFeatures(
            rng.standard_normal(dims.pooled(name)).astype(np.float32), seq
        )
    t = float(utterance_id) * 2.0
    return UtteranceFeatures(utterance_id, speaker, t, t + 1.5, **feats)


def random_dialogue(
    rng: np.random.Generator,
    dims: FeatureDims,
    length: int = 30,
    speakers: int = 3,
    p_missing: float = 0.2,
    max_seq: int = 12,
) -> list[UtteranceFeatures]:
    names = [f"S{k}" for k in range(speakers)]
    return [
        random_utterance(rng, dims, i, names[int(rng.integers(speakers))], p_missing, max_seq)
        for i in range(length)
    ]
