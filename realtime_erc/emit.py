"""The events stage: ``erc.emotion/1`` events from analyses and inferences.

- A :class:`SegmentAnalysis` gives a *provisional* event from the emotion heads' scores mapped
  onto the label set (unless provisional events are off, shed under overload, or no head had
  an opinion).
- An :class:`Inference` gives the *final* event of the same ``utterance_id``: the model's
  (fused) scores, the transcript, the speaker, and the latency from the end of speech.

Without a model the final events carry speaker, timing, transcript and latency with ``label``
and ``scores`` null. Work that failed for an utterance (ASR, features, the model) is listed in
the event's ``errors``. A change of the overload level goes out as a status event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from realtime_erc.assemble import UNATTRIBUTED_SPEAKER
from realtime_erc.events import (
    EmotionEvent,
    Event,
    Inference,
    SegmentAnalysis,
    StatusEvent,
    now,
    utc_timestamp,
)
from realtime_erc.inference import heads_on_labels, project_scores
from realtime_erc.load import LoadMonitor
from realtime_erc.pipeline import Stage


def ms(seconds: float) -> float:
    """Seconds as milliseconds, to 0.1 ms (the events' latencies)."""
    return round(seconds * 1000, 1)


def utterance_latency_ms(inference: Inference, emitted_at: float) -> dict[str, float]:
    """Per-stage latency of one final event, in milliseconds.

    ``segment``: last speech sample in → segment closed (the end-of-speech hangover);
    ``asr``: segment closed → transcript ready; ``analysis``: segment closed → speaker, audio,
    visual and heads ready (beside the transcription; absent when nothing was analysed);
    ``features``: transcript ready → features assembled (waiting for the analysis, encoding
    the text); ``model``: features → the model's decision; ``total``: last speech sample in →
    event emitted.
    """
    features = inference.features
    utt, analysis = features.utterance, features.analysis
    assert utt is not None, "the assembler joins every final with its utterance"
    seg = utt.segment
    latency = {
        "segment": ms(seg.closed_at - seg.last_audio_at),
        "asr": ms(utt.transcribed_at - seg.closed_at),
    }
    if analysis is not None:
        latency["analysis"] = ms(analysis.analysed_at - seg.closed_at)
    latency["features"] = ms(features.extracted_at - utt.transcribed_at)
    latency["model"] = ms(inference.decided_at - features.extracted_at)
    latency["total"] = ms(emitted_at - seg.last_audio_at)
    return latency


class EventStage(Stage):
    """``SegmentAnalysis`` → provisional, ``Inference`` → final :class:`EmotionEvent`.

    ``labels``: the model's (none = no provisional events); ``model``: its id in the events;
    ``load``: the overload monitor (sheds provisional events first, reports level changes).
    """

    name = "events"

    def __init__(
        self,
        session_id: str,
        label_set: str,
        labels: Sequence[str] = (),
        model: str | None = None,
        *,
        provisional: bool = True,
        load: LoadMonitor | None = None,
    ) -> None:
        self.session_id = session_id
        self.label_set = label_set
        self.labels = tuple(labels)
        self.model = model
        self.provisional = provisional
        self.load = load
        self.faults = 0

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, SegmentAnalysis):
            provisional = self._provisional(event)
            if provisional is not None:
                yield provisional
        elif isinstance(event, Inference):
            yield self._final(event)
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
                "segment": ms(seg.closed_at - seg.last_audio_at),
                "analysis": ms(analysis.analysed_at - seg.closed_at),
                "total": ms(emitted_at - seg.last_audio_at),
            },
            emitted_at=utc_timestamp(),
            faults=analysis.faults,
            heads=heads_on_labels(analysis.head_scores, self.labels),
        )

    def _final(self, inference: Inference) -> EmotionEvent:
        features = inference.features
        utt, analysis = features.utterance, features.analysis
        assert utt is not None, "the assembler joins every final with its utterance"
        faults = (
            *utt.faults,
            *(analysis.faults if analysis is not None else ()),
            *features.faults,
            *inference.faults,
        )
        self.faults += len(faults)
        scores = inference.scores
        emitted_at = now()
        return EmotionEvent(
            session_id=self.session_id,
            utterance_id=utt.utterance_id,
            speaker=features.speaker,
            start=utt.start,
            end=utt.end,
            text=utt.text,
            label=max(scores, key=scores.__getitem__) if scores else None,
            scores=scores,
            label_set=self.label_set,
            modalities=inference.modalities,
            provisional=False,
            model=self.model,
            latency_ms=utterance_latency_ms(inference, emitted_at),
            emitted_at=utc_timestamp(),
            faults=faults,
            heads=inference.heads,
        )
