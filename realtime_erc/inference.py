"""The inference stage: the conversation model's streaming step on each utterance's features.

:class:`UtteranceFeatures` → :class:`Inference`: the engine steps the session's conversation
graph by one node (:class:`~realtime_erc.engine.Engine`), and where a late fusion was fitted
for the model (:mod:`~realtime_erc.fusion`) its scores are pooled with the emotion heads'.
Without a model the inference carries no scores: the stream never shows a label nobody
predicted. A step that raises becomes a :class:`Fault`; the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from realtime_erc.events import MODALITIES, Event, Fault, Inference, UtteranceFeatures
from realtime_erc.fusion import FusionParams, fuse
from realtime_erc.pipeline import Stage

if TYPE_CHECKING:
    from realtime_erc.engine import AsyncEngine, Engine

log = logging.getLogger(__name__)

_CANONICAL = {
    "joy": "happy",
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
    "fearful": "fear",
    "surprised": "surprise",
    "disgusted": "disgust",
    "calm": "neutral",
}
"""Emotion names of the heads' and the models' label sets, folded to one vocabulary."""


def canonical_emotion(name: str) -> str:
    return _CANONICAL.get(name.lower(), name.lower())


def project_scores(
    heads: Mapping[str, Mapping[str, float]], labels: Sequence[str]
) -> dict[str, float] | None:
    """Average the heads' distributions after mapping each onto ``labels`` by emotion name.

    A head's mass on emotions ``labels`` lacks is dropped and the rest renormalised; a head with
    no overlap is ignored. None when no head contributes. E.g. RAVDESS ``calm`` → ``neutral``,
    FER ``happy`` → MELD ``joy``.
    """
    index = {canonical_emotion(label): i for i, label in enumerate(labels)}
    total = [0.0] * len(labels)
    used = 0
    for scores in heads.values():
        mapped = [0.0] * len(labels)
        for name, p in scores.items():
            i = index.get(canonical_emotion(name))
            if i is not None:
                mapped[i] += float(p)
        mass = sum(mapped)
        if mass > 0:
            total = [t + m / mass for t, m in zip(total, mapped, strict=True)]
            used += 1
    if not used:
        return None
    return {label: round(t / used, 6) for label, t in zip(labels, total, strict=True)}


def heads_on_labels(
    head_scores: Mapping[str, Mapping[str, float]], labels: Sequence[str]
) -> dict[str, dict[str, float]] | None:
    """Each head's scores mapped onto ``labels`` (None without a head or labels)."""
    if not head_scores or not labels:
        return None
    heads = {}
    for name, given in sorted(head_scores.items()):
        mapped = project_scores({name: given}, labels)
        if mapped is not None:
            heads[name] = mapped
    return heads or None


class InferenceStage(Stage):
    """``UtteranceFeatures`` → ``Inference``. ``engine``: None = no model, no scores; its
    conversation state is ``session_id``'s (one engine may serve many sessions); ``batcher``:
    the engine's :class:`~realtime_erc.engine.AsyncEngine`, which runs the steps of sessions
    that are ready together as one batch."""

    name = "inference"

    def __init__(
        self,
        session_id: str,
        engine: Engine | None = None,
        fusion: FusionParams | None = None,
        *,
        batcher: AsyncEngine | None = None,
    ) -> None:
        self.session_id = session_id
        self.engine = engine
        self.batcher = batcher
        self.fusion = fusion
        self.labels: tuple[str, ...] = tuple(engine.labels) if engine is not None else ()

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, UtteranceFeatures):
            yield await self.infer(event)
        else:
            yield event

    async def infer(self, features: UtteranceFeatures) -> Inference:
        analysis = features.analysis
        heads = heads_on_labels(analysis.head_scores if analysis else {}, self.labels)
        if self.engine is None:
            utt = features.utterance
            modalities = {
                "text": bool(utt.text) if utt is not None else False,
                "audio": analysis is not None and analysis.audio.present,
                "visual": analysis is not None and analysis.visual.present,
            }
            return Inference(features, None, modalities, heads)
        modalities = dict(zip(MODALITIES, features.present, strict=True))
        try:
            if self.batcher is not None:
                prediction = await self.batcher.step(self.session_id, features)
            else:
                prediction = await asyncio.to_thread(self.engine.step, self.session_id, features)
        except Exception as e:  # one utterance's failure must not end the session
            log.exception("the model failed on utterance %d", features.utterance_id)
            return Inference(features, None, modalities, heads, (Fault("model", _say(e)),))
        scores = {k: round(v, 6) for k, v in prediction.scores.items()}
        if self.fusion is not None and heads:
            scores = fuse(scores, heads, self.fusion)
            for name in heads:  # the heads' modalities inform the fused scores too
                modalities[name] = modalities[name] or self.fusion.weights.get(name, 0) > 0
        return Inference(features, scores, modalities, heads)


def _say(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
