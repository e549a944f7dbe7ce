"""Turn transcribed utterances into ``erc.emotion/1`` events.

Until an emotion model is configured the events carry speaker, timing, transcript and latency,
with ``label`` and ``scores`` null: the stream never shows a label nobody predicted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from realtime_erc.events import EmotionEvent, Event, Utterance, now, utc_timestamp
from realtime_erc.pipeline import Stage

UNATTRIBUTED_SPEAKER = "unknown"
"""Speaker id used until speaker attribution assigns one."""


def utterance_latency_ms(utterance: Utterance, emitted_at: float) -> dict[str, float]:
    """Per-stage latency of one utterance, in milliseconds.

    ``segment``: last speech sample in → segment closed (the end-of-speech hangover);
    ``asr``: segment closed → transcript ready (queueing included);
    ``total``: last speech sample in → event emitted.
    """
    seg = utterance.segment
    return {
        "segment": round((seg.closed_at - seg.last_audio_at) * 1000, 1),
        "asr": round((utterance.transcribed_at - seg.closed_at) * 1000, 1),
        "total": round((emitted_at - seg.last_audio_at) * 1000, 1),
    }


class EmitStage(Stage):
    """``Utterance`` → ``EmotionEvent`` (one final event per utterance)."""

    name = "emit"

    def __init__(self, session_id: str, label_set: str, model: str | None = None) -> None:
        self.session_id = session_id
        self.label_set = label_set
        self.model = model

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if not isinstance(event, Utterance):
            yield event
            return
        emitted_at = now()
        yield EmotionEvent(
            session_id=self.session_id,
            utterance_id=event.utterance_id,
            speaker=event.speaker or UNATTRIBUTED_SPEAKER,
            start=event.start,
            end=event.end,
            text=event.text,
            label=None,
            scores=None,
            label_set=self.label_set,
            modalities={"text": bool(event.text), "audio": True, "visual": False},
            provisional=False,
            model=self.model,
            latency_ms=utterance_latency_ms(event, emitted_at),
            emitted_at=utc_timestamp(),
        )
