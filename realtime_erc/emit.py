"""Turn analysed, transcribed utterances into ``erc.emotion/1`` events.

Per utterance the stage receives a :class:`SegmentAnalysis` (speaker, audio/visual features,
the emotion heads' scores) and then the :class:`Utterance` (transcript) of the same segment:

- on the analysis, a *provisional* event from the heads' scores mapped onto the label set
  (unless provisional events are off, shed under overload, or no head had an opinion);
- on the utterance, the transcript is encoded, joined with the analysis into
  :class:`UtteranceFeatures`, and the conversation model (:class:`~realtime_erc.engine.Engine`)
  takes one streaming step: the *final* event, same ``utterance_id``.

Without a model the final events carry speaker, timing, transcript and latency with ``label``
and ``scores`` null: the stream never shows a label nobody predicted. Work that failed for an
utterance (ASR, features, the model) is listed in the event's ``errors``; the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from realtime_erc.events import (
    MODALITIES,
    EmotionEvent,
    Event,
    Fault,
    ModalityFeatures,
    SegmentAnalysis,
    StatusEvent,
    Utterance,
    UtteranceFeatures,
    now,
    utc_timestamp,
)
from realtime_erc.features.text import turn_context
from realtime_erc.fusion import FusionParams, fuse
from realtime_erc.load import LoadMonitor
from realtime_erc.pipeline import Stage

if TYPE_CHECKING:
    from realtime_erc.engine import Engine
    from realtime_erc.features.text import TextEncoder

log = logging.getLogger(__name__)

UNATTRIBUTED_SPEAKER = "unknown"
"""Speaker id used until speaker attribution assigns one."""

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


def utterance_latency_ms(utterance: Utterance, emitted_at: float) -> dict[str, float]:
    """Per-stage latency of one utterance, in milliseconds.

    ``segment``: last speech sample in → segment closed (the end-of-speech hangover);
    ``asr``: segment closed → transcript ready (queueing and the analysis before it included);
    ``total``: last speech sample in → event emitted.
    """
    seg = utterance.segment
    return {
        "segment": round((seg.closed_at - seg.last_audio_at) * 1000, 1),
        "asr": round((utterance.transcribed_at - seg.closed_at) * 1000, 1),
        "total": round((emitted_at - seg.last_audio_at) * 1000, 1),
    }


class EmitStage(Stage):
    """``SegmentAnalysis`` / ``Utterance`` → provisional / final ``EmotionEvent``.

    ``engine``: the conversation model (None = no labels); ``text``: the sentence encoder for
    transcripts (needed with an engine); ``modalities``: those the model was trained with (the
    others are passed as absent); ``sequences``: whether it uses feature sequences;
    ``expects_analysis``: every utterance has a :class:`SegmentAnalysis` coming (in either
    order: the transcript may be faster), so an utterance waits for its analysis;
    ``fusion``: the model's fitted late fusion with the heads (:mod:`~realtime_erc.fusion`).
    """

    name = "emit"

    def __init__(
        self,
        session_id: str,
        label_set: str,
        model: str | None = None,
        *,
        engine: Engine | None = None,
        text: TextEncoder | None = None,
        provisional: bool = True,
        load: LoadMonitor | None = None,
        modalities: Sequence[str] = MODALITIES,
        sequences: bool = True,
        expects_analysis: bool = False,
        fusion: FusionParams | None = None,
    ) -> None:
        self.session_id = session_id
        self.fusion = fusion
        self.engine = engine
        self.label_set = engine.label_set if engine is not None else label_set
        self.model = engine.model_id if engine is not None else model
        self.labels: tuple[str, ...] = tuple(engine.labels) if engine is not None else ()
        self.text = text
        self.provisional = provisional
        self.load = load
        self.modalities = tuple(modalities)
        self.sequences = sequences
        self.faults = 0
        self.expects_analysis = expects_analysis
        self._analyses: dict[int, SegmentAnalysis] = {}
        self._utterances: dict[int, Utterance] = {}
        self._turns: deque[tuple[str, str]] = deque(maxlen=32)
        """(speaker, transcript) of the latest final utterances: the text encoder's context."""

    async def flush(self) -> AsyncIterator[Event]:
        for utterance in self._utterances.values():  # only if an analysis went missing
            yield await self._final(utterance, None)
        self._utterances.clear()

    async def start(self) -> None:
        if self.engine is not None and self.text is not None:
            await asyncio.to_thread(self.text.load)
            await asyncio.to_thread(self.text.encode, "warm up")

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, SegmentAnalysis):
            waiting = self._utterances.pop(event.segment_id, None)
            if waiting is not None:  # the transcript was faster: no point in a provisional
                yield await self._final(waiting, event)
            else:
                self._analyses[event.segment_id] = event
                provisional = self._provisional(event)
                if provisional is not None:
                    yield provisional
        elif isinstance(event, Utterance):
            analysis = self._analyses.pop(event.segment.segment_id, None)
            if analysis is None and self.expects_analysis:
                self._utterances[event.segment.segment_id] = event
            else:
                yield await self._final(event, analysis)
        else:
            yield event
        if self.load is not None and (report := self.load.take_change()) is not None:
            yield StatusEvent(
                self.session_id, "online", self.model, self.label_set, utc_timestamp(), report
            )

    def _provisional(self, analysis: SegmentAnalysis) -> EmotionEvent | None:
        if not (self.provisional and self.labels and analysis.head_scores):
            return None
        if self.load is not None and self.load.shed("provisional"):
            return None
        scores = project_scores(analysis.head_scores, self.labels)
        if scores is None:
            return None
        heads = self._heads(analysis)
        seg = analysis.segment
        emitted_at = now()
        return EmotionEvent(
            session_id=self.session_id,
            utterance_id=seg.segment_id,
            speaker=analysis.speaker or UNATTRIBUTED_SPEAKER,
            start=seg.start,
            end=seg.end,
            text="",
            label=max(scores, key=scores.__getitem__),
            scores=scores,
            label_set=self.label_set,
            modalities={
                "text": False,
                "audio": "audio" in analysis.head_scores,
                "visual": "visual" in analysis.head_scores,
            },
            provisional=True,
            model=f"emotion-heads/{'+'.join(sorted(analysis.head_scores))}",  # not the ERC model
            latency_ms={
                "segment": round((seg.closed_at - seg.last_audio_at) * 1000, 1),
                "analysis": round((analysis.analysed_at - seg.closed_at) * 1000, 1),
                "total": round((emitted_at - seg.last_audio_at) * 1000, 1),
            },
            emitted_at=utc_timestamp(),
            faults=analysis.faults,
            heads=heads,
        )

    def _heads(self, analysis: SegmentAnalysis | None) -> dict[str, dict[str, float]] | None:
        """Each head's scores on the model's labels (None without a head or labels)."""
        if analysis is None or not analysis.head_scores or not self.labels:
            return None
        heads = {}
        for name, given in sorted(analysis.head_scores.items()):
            mapped = project_scores({name: given}, self.labels)
            if mapped is not None:
                heads[name] = mapped
        return heads or None

    async def _final(self, utt: Utterance, analysis: SegmentAnalysis | None) -> EmotionEvent:
        faults = list(utt.faults) + list(analysis.faults if analysis is not None else ())
        label = scores = None
        modalities = {"text": bool(utt.text), "audio": False, "visual": False}
        if analysis is not None:
            modalities["audio"] = analysis.audio.present
            modalities["visual"] = analysis.visual.present
        speaker = (analysis.speaker if analysis else None) or utt.speaker or UNATTRIBUTED_SPEAKER
        heads = self._heads(analysis)
        if self.engine is not None:
            try:
                features = await self._features(utt, analysis, speaker)
                modalities = dict(zip(MODALITIES, features.present, strict=True))
                prediction = await asyncio.to_thread(self.engine.step, self.session_id, features)
                scores = {k: round(v, 6) for k, v in prediction.scores.items()}
                if self.fusion is not None and heads:
                    scores = fuse(scores, heads, self.fusion)
                    for name in heads:  # the heads' modalities inform the fused final too
                        modalities[name] = modalities[name] or self.fusion.weights.get(name, 0) > 0
                label = max(scores, key=scores.__getitem__)
            except Exception as e:  # one utterance's failure must not end the session
                log.exception("the model failed on utterance %d", utt.utterance_id)
                faults.append(Fault("model", f"{type(e).__name__}: {e}"))
        self._turns.append((speaker, utt.text))
        self.faults += len(faults)
        emitted_at = now()
        return EmotionEvent(
            session_id=self.session_id,
            utterance_id=utt.utterance_id,
            speaker=speaker,
            start=utt.start,
            end=utt.end,
            text=utt.text,
            label=label,
            scores=scores,
            label_set=self.label_set,
            modalities=modalities,
            provisional=False,
            model=self.model,
            latency_ms=utterance_latency_ms(utt, emitted_at),
            emitted_at=utc_timestamp(),
            faults=tuple(faults),
            heads=heads,
        )

    async def _features(
        self, utt: Utterance, analysis: SegmentAnalysis | None, speaker: str
    ) -> UtteranceFeatures:
        assert self.engine is not None
        dims = self.engine.model.dims
        text = ModalityFeatures.absent(dims.text, dims.text_seq)
        if utt.text and self.text is not None and "text" in self.modalities:
            context = ""
            if self.text.context_turns:
                speakers = [s for s, _ in self._turns] + [speaker]
                texts = [t for _, t in self._turns] + [utt.text]
                context = turn_context(texts, speakers, len(texts) - 1, self.text.context_turns)
            text = await asyncio.to_thread(self.text.encode, utt.text, context)
        parts = {"text": text}
        for name in ("audio", "visual"):
            given = analysis.modality(name) if analysis is not None else None
            if given is None or name not in self.modalities:
                given = ModalityFeatures.absent(dims.pooled(name), dims.seq(name))
            parts[name] = given
        if not self.sequences:
            parts = {k: ModalityFeatures(v.pooled, present=v.present) for k, v in parts.items()}
        return UtteranceFeatures(
            utterance_id=utt.utterance_id,
            speaker=speaker,
            start=utt.start,
            end=utt.end,
            utterance=utt,
            **parts,
        )
