"""The utterance assembler: joins a segment's analysis and its transcript into the
:class:`UtteranceFeatures` the model takes.

Per segment the two branches before it (``analysis ‖ transcription``) deliver a
:class:`SegmentAnalysis` and an :class:`Utterance`, in either order. The analysis goes on
downstream at once (the provisional event is made from it) unless the transcript was faster,
when a provisional event would be pointless. Once both are in, the transcript is encoded (with
the turns before it as context, when the encoder reads context) and the utterance's features
leave: the text vector, and the analysis's audio and visual vectors, each in the shape the
model was trained on (the modalities it never saw are passed as absent).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from realtime_erc.batching import MicroBatcher
from realtime_erc.events import (
    MODALITIES,
    Event,
    Fault,
    ModalityFeatures,
    SegmentAnalysis,
    Utterance,
    UtteranceFeatures,
)
from realtime_erc.features.text import turn_context
from realtime_erc.models.base import FeatureDims
from realtime_erc.pipeline import Stage

if TYPE_CHECKING:
    from realtime_erc.features.text import TextEncoder

log = logging.getLogger(__name__)

UNATTRIBUTED_SPEAKER = "unknown"
"""Speaker id used until speaker attribution assigns one."""


class UtteranceAssembler(Stage):
    """``SegmentAnalysis`` + ``Utterance`` (same segment) → :class:`UtteranceFeatures`.

    ``dims``: the model's feature dims (absent modalities are zero vectors of these sizes);
    ``text``: the sentence encoder (None = text absent, e.g. without a model); ``modalities``:
    those the model was trained with; ``sequences``: whether it takes per-frame sequences;
    ``expects_analysis``: every utterance has an analysis coming, so it waits for it;
    ``batcher``: a :class:`~realtime_erc.batching.MicroBatcher` over ``text.encode_batch``
    shared by a server's sessions (their transcripts ready together encode as one batch).
    """

    name = "assembler"

    def __init__(
        self,
        dims: FeatureDims | None = None,
        text: TextEncoder | None = None,
        *,
        modalities: Sequence[str] = MODALITIES,
        sequences: bool = True,
        expects_analysis: bool = True,
        batcher: MicroBatcher[tuple[str, str], ModalityFeatures] | None = None,
    ) -> None:
        self.dims = dims or FeatureDims()
        self.batcher = batcher
        self.text = text
        self.modalities = tuple(modalities)
        self.sequences = sequences
        self.expects_analysis = expects_analysis
        self._analyses: dict[int, SegmentAnalysis] = {}
        self._utterances: dict[int, Utterance] = {}
        self._turns: deque[tuple[str, str]] = deque(maxlen=32)
        """(speaker, transcript) of the latest utterances: the text encoder's context."""

    async def start(self) -> None:
        if self.text is not None and self.batcher is None:  # a batcher's model is loaded
            await asyncio.to_thread(self.text.load)
            await asyncio.to_thread(self.text.encode, "warm up")

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, SegmentAnalysis):
            waiting = self._utterances.pop(event.segment_id, None)
            if waiting is not None:  # the transcript was faster: no point in a provisional
                yield await self.assemble(waiting, event)
            else:
                self._analyses[event.segment_id] = event
                yield event
        elif isinstance(event, Utterance):
            analysis = self._analyses.pop(event.segment.segment_id, None)
            if analysis is None and self.expects_analysis:
                self._utterances[event.segment.segment_id] = event
            else:
                yield await self.assemble(event, analysis)
        else:
            yield event

    async def flush(self) -> AsyncIterator[Event]:
        for utterance in self._utterances.values():  # only if an analysis went missing
            yield await self.assemble(utterance, None)
        self._utterances.clear()

    async def assemble(self, utt: Utterance, analysis: SegmentAnalysis | None) -> UtteranceFeatures:
        """The utterance's features (never raises: a failed encoding is a fault, text absent)."""
        speaker = (analysis.speaker if analysis else None) or utt.speaker or UNATTRIBUTED_SPEAKER
        dims, faults = self.dims, []
        text = ModalityFeatures.absent(dims.text, dims.text_seq)
        if utt.text and self.text is not None and "text" in self.modalities:
            try:
                context = self._context(speaker)
                if self.batcher is not None:
                    text = await self.batcher.submit((utt.text, context))
                else:
                    text = await asyncio.to_thread(self.text.encode, utt.text, context)
            except Exception as e:  # one utterance's failure must not end the session
                log.exception("encoding the transcript of utterance %d failed", utt.utterance_id)
                faults.append(Fault("text", f"{type(e).__name__}: {e}"))
        self._turns.append((speaker, utt.text))
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
            analysis=analysis,
            faults=tuple(faults),
            **parts,
        )

    def _context(self, speaker: str) -> str:
        """The turns before, for an encoder that reads each utterance with them."""
        if self.text is None or not self.text.context_turns:
            return ""
        speakers = [s for s, _ in self._turns] + [speaker]
        texts = [t for _, t in self._turns] + ["."]
        return turn_context(texts, speakers, len(texts) - 1, self.text.context_turns)
