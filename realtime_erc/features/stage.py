"""The feature stage: ``Utterance`` → ``UtteranceFeatures`` (text, audio, visual).

Video frames are analysed *as they arrive* (at most ``max_fps`` per second, on one worker thread
that owns the face landmarker), and kept in a bounded, time-indexed buffer; when an utterance
arrives only its own work is left: the sentence encoder on the transcript and the audio
descriptors on its samples, run concurrently off the event loop, plus pooling the frames inside
``[start, end]``. The stage emits :class:`UtteranceFeatures` (which carries the utterance) in
place of the utterance; every other event passes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from realtime_erc.emit import UNATTRIBUTED_SPEAKER
from realtime_erc.events import (
    Event,
    ModalityFeatures,
    SpeechSegment,
    Utterance,
    UtteranceFeatures,
    VideoFrame,
)
from realtime_erc.features.audio import AudioFeatures
from realtime_erc.features.text import TextEncoder
from realtime_erc.features.visual import FaceFeatures, FrameFaces, VisualResult
from realtime_erc.pipeline import Stage

log = logging.getLogger(__name__)


def feature_dims(config, text_dim: int | None = None):  # FeaturesConfig -> FeatureDims
    """The :class:`FeatureDims` the configured extractors produce (what a model must accept);
    ``config.heads`` must be resolved (``none`` or ``scores``; ``auto`` counts as ``none``).
    ``text_dim``: the text encoder's width where an adapter chose it (default: the configured
    ``features.text.encoder``'s)."""
    from realtime_erc.features.audio import AUDIO_DIMS
    from realtime_erc.features.text import encoder_spec, resolve_encoder
    from realtime_erc.features.visual import VISUAL_DIM
    from realtime_erc.models.base import FeatureDims

    audio, audio_seq = AUDIO_DIMS[config.audio.backend]
    visual = VISUAL_DIM
    if config.heads == "scores":
        from realtime_erc.features.head_scores import HEAD_CLASSES

        audio += HEAD_CLASSES["audio"]
        visual += HEAD_CLASSES["visual"]
    text = text_dim or encoder_spec(resolve_encoder(config.text.encoder)).dim
    return FeatureDims(
        text=text,
        audio=audio,
        visual=visual,
        text_seq=text,
        audio_seq=audio_seq,
        visual_seq=VISUAL_DIM,
    )


@dataclass
class FeatureStats:
    frames_seen: int = 0
    frames_analysed: int = 0
    frames_skipped: int = 0
    """Skipped by the ``max_fps`` cap (by design)."""
    backpressure_waits: int = 0
    """Times a frame waited for the analysis of earlier ones (compute behind real time)."""
    utterances: int = 0


class FeatureStage(Stage):
    """Extract the three modalities of each utterance. Extractors may be injected (tests, bench);
    by default they are built from ``config`` (a ``FeaturesConfig``)."""

    name = "features"

    def __init__(
        self,
        config,
        text: TextEncoder | None = None,
        audio: AudioFeatures | None = None,
        visual: FaceFeatures | None = None,
        max_pending_frames: int = 8,
    ) -> None:
        self.config = config
        self.text = text or TextEncoder(config.text)
        self.audio = audio or AudioFeatures(config.audio)
        self.visual = visual or FaceFeatures(config.visual)
        self.max_pending_frames = max_pending_frames
        self.stats = FeatureStats()
        self.last_visual: VisualResult | None = None
        """The visual result of the latest utterance (its face crop feeds the expression head)."""
        self._frames: deque[tuple[float, Future[FrameFaces]]] = deque()
        self._worker: ThreadPoolExecutor | None = None
        self._last_analysed = float("-inf")

    async def start(self) -> None:
        loads = []
        if self.config.text.enabled:
            loads.append(asyncio.to_thread(self.text.load))
        if self.config.audio.enabled:
            loads.append(asyncio.to_thread(self.audio.load))
        if self.config.visual.enabled:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="face-landmarker")
            loads.append(asyncio.wrap_future(self._worker.submit(self.visual.load)))
        await asyncio.gather(*loads)

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, VideoFrame):
            await self.add_frame(event)
            yield event
        elif isinstance(event, Utterance):
            yield await self.extract(event)
        else:
            yield event

    async def add_frame(self, frame: VideoFrame) -> None:
        """Queue the frame for face analysis unless ``max_fps`` skips it. When analysis is
        ``max_pending_frames`` behind, wait for it: the wait backpressures the source (a live
        camera then drops its newest frames and counts them; a replay slows down)."""
        self.stats.frames_seen += 1
        if self._worker is None:
            return
        if frame.time < self._last_analysed + 1.0 / self.config.visual.max_fps - 1e-6:
            self.stats.frames_skipped += 1
            return
        pending = [f for _, f in self._frames if not f.done()]
        if len(pending) >= self.max_pending_frames:
            self.stats.backpressure_waits += 1
            await asyncio.wrap_future(pending[0])
        self._last_analysed = frame.time
        future = self._worker.submit(self.visual.analyze, frame.image, frame.time, frame.index)
        self._frames.append((frame.time, future))
        self.stats.frames_analysed += 1
        while self._frames and self._frames[0][0] < frame.time - self.config.visual.buffer_s:
            self._frames.popleft()

    async def frames_ready(self) -> None:
        """Wait until every queued frame has been analysed."""
        pending = [f for _, f in self._frames if not f.done()]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in pending))

    async def extract(self, utterance: Utterance) -> UtteranceFeatures:
        """The three modalities of one utterance, computed concurrently off the event loop."""
        seg = utterance.segment
        text_job = (
            asyncio.to_thread(self.text.encode, utterance.text)
            if self.config.text.enabled
            else _absent(self.text.dim, self.text.seq_dim)
        )
        audio_job = (
            asyncio.to_thread(self.audio.extract, seg.samples)
            if self.config.audio.enabled
            else _absent(self.audio.dim, self.audio.seq_dim)
        )
        text, audio, visual = await asyncio.gather(text_job, audio_job, self._visual(utterance))
        self.stats.utterances += 1
        return UtteranceFeatures(
            utterance_id=utterance.utterance_id,
            speaker=utterance.speaker or UNATTRIBUTED_SPEAKER,
            start=utterance.start,
            end=utterance.end,
            text=text,
            audio=audio,
            visual=visual,
            utterance=utterance,
        )

    async def _visual(self, utterance: Utterance) -> ModalityFeatures:
        if self._worker is None:
            return ModalityFeatures.absent(self.visual.dim, self.visual.seq_dim)
        return (await self.summarize_visual(utterance.segment)).features

    async def summarize_visual(self, seg: SpeechSegment) -> VisualResult:
        """The visual result of the frames inside ``[seg.start, seg.end]`` (analysed already
        or awaited here)."""
        futures = [f for t, f in self._frames if seg.start <= t <= seg.end]
        frames = [await asyncio.wrap_future(f) for f in futures]
        result = await asyncio.to_thread(
            self.visual.summarize, frames, seg.samples, seg.audio_start
        )
        self.last_visual = result
        return result

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self.visual.close()
            self._worker = None


async def _absent(dim: int, seq_dim: int) -> ModalityFeatures:
    return ModalityFeatures.absent(dim, seq_dim)
