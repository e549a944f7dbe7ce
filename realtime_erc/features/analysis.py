"""The analysis stage: everything about a closed segment that does not need its transcript.

The analysis branch beside the transcription (``analysis ‖ transcription``): ``SpeechSegment``
→ its :class:`SegmentAnalysis` (speaker, audio and visual features, the emotion heads' scores).

Video frames are analysed *as they arrive* (at most ``max_fps`` per second, on one worker
thread that owns the face landmarker) and kept in a bounded, time-indexed buffer; they go no
further. When a segment closes only its own work is left: pooling the frames inside
``[start, end]``.

Per segment, speaker attribution, the audio descriptors and the visual summary run concurrently
off the event loop; the heads follow (the speech head standardises per attributed speaker).
A piece of work that raises becomes a :class:`Fault` on the analysis (its modality is marked
absent) instead of ending the session. Under overload (``load``) video analysis, then the
audio/visual work are shed, in that order (see ``realtime_erc/load.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from realtime_erc.batching import MicroBatcher
from realtime_erc.events import (
    SAMPLE_RATE,
    Event,
    Fault,
    ModalityFeatures,
    SegmentAnalysis,
    SpeechSegment,
    VideoFrame,
    now,
)
from realtime_erc.features.audio import AudioFeatures
from realtime_erc.features.head_scores import HEAD_CLASSES, with_scores
from realtime_erc.features.visual import FaceFeatures, FrameFaces, VisualResult
from realtime_erc.load import LoadMonitor
from realtime_erc.pipeline import Stage
from realtime_erc.speech.speakers import Attribution

log = logging.getLogger(__name__)


@dataclass
class AnalysisStats:
    frames_seen: int = 0
    frames_analysed: int = 0
    frames_skipped: int = 0
    """Skipped by the ``max_fps`` cap (by design)."""
    backpressure_waits: int = 0
    """Times a frame waited for the analysis of earlier ones (compute behind real time)."""
    utterances: int = 0


class AnalysisStage(Stage):
    """Speaker, audio and visual analysis of each segment (``config``: a ``FeaturesConfig``).

    ``speakers``: a ``SpeakerTracker`` (None = no attribution); ``speech_head`` /
    ``face_head``: emotion heads giving per-modality scores (None = not run);
    ``scores_speech_head``: the speech head whose scores are appended to the audio vector
    with ``heads = "scores"`` (the one that scored the model's corpus, see
    :func:`~realtime_erc.features.head_scores.scores_speech_head`; None = ``speech_head``'s).
    Both heads share one feature extraction when their feature options agree. Extractors
    may be injected (tests, benchmarks); by default they are built from ``config``.
    ``voices``: a :class:`~realtime_erc.batching.MicroBatcher` over
    :func:`~realtime_erc.speech.speakers.embed_voices` shared by a server's sessions (their
    utterances embed as one batch; the speakers stay this session's).
    """

    name = "analysis"
    accepts = (SpeechSegment, VideoFrame)

    def __init__(
        self,
        config,
        *,
        speakers=None,  # SpeakerTracker | None
        speech_head=None,  # SpeechEmotionHead | None
        face_head=None,  # FaceExpressionHead | None
        scores_speech_head=None,  # SpeechEmotionHead | None
        load: LoadMonitor | None = None,
        audio: AudioFeatures | None = None,
        visual: FaceFeatures | None = None,
        max_pending_frames: int = 8,
        voices: MicroBatcher[np.ndarray, np.ndarray | None] | None = None,
    ) -> None:
        self.config = config
        self.audio = audio or AudioFeatures(config.audio)
        self.visual = visual or FaceFeatures(config.visual)
        self.max_pending_frames = max_pending_frames
        self.stats = AnalysisStats()
        self._frames: deque[tuple[float, Future[FrameFaces]]] = deque()
        self._worker: ThreadPoolExecutor | None = None
        self._last_analysed = float("-inf")
        self.speakers = speakers
        self.speech_head = speech_head
        self.face_head = face_head
        self.scores_speech_head = scores_speech_head if speech_head is not None else None
        self.load = load
        self.voices = voices
        self.faults = 0

    async def start(self) -> None:
        loads: list[Awaitable] = []
        if self.speakers is not None:
            loads.append(asyncio.to_thread(self._load_speakers))
        if self.speech_head is not None:
            # Builds the head's Whisper encoder and pays its first-call allocations now.
            loads.append(asyncio.to_thread(self.speech_head.extractor.features, _WARM_UP_AUDIO))
        if self.config.audio.enabled:
            loads.append(asyncio.to_thread(self.audio.load))
        if self.config.visual.enabled:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="face-landmarker")
            loads.append(asyncio.wrap_future(self._worker.submit(self.visual.load)))
        # Let every load finish before raising: a load still importing in its thread while
        # the error is handled races with the handler's own imports.
        for result in await asyncio.gather(*loads, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    def _load_speakers(self) -> None:
        self.speakers.load()
        self.speakers.warm_up()

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, VideoFrame):
            if self.load is not None and self.load.shed("video"):
                return
            await self.add_frame(event)
        elif isinstance(event, SpeechSegment):
            if self.load is not None:
                self.load.observe(now() - event.closed_at, "analysis")
            yield await self.analyze(event)
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

    async def summarize_visual(self, seg: SpeechSegment) -> VisualResult:
        """The visual result of the frames inside ``[seg.start, seg.end]`` (analysed already
        or awaited here)."""
        futures = [f for t, f in self._frames if seg.start <= t <= seg.end]
        frames = [await asyncio.wrap_future(f) for f in futures]
        return await asyncio.to_thread(self.visual.summarize, frames, seg.samples, seg.audio_start)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self.visual.close()
            self._worker = None

    async def analyze(self, seg: SpeechSegment) -> SegmentAnalysis:
        """The segment's :class:`SegmentAnalysis` (never raises: failures become faults)."""
        shed = self.load is not None and self.load.shed("features")
        faults: list[Fault] = []
        absent_audio = ModalityFeatures.absent(self.audio.dim, self.audio.seq_dim)
        absent_visual = ModalityFeatures.absent(self.visual.dim, self.visual.seq_dim)

        async def guarded(stage: str, job: Awaitable, fallback):
            try:
                return await job
            except Exception as e:  # one utterance's failure must not end the session
                log.exception("%s analysis of segment %d failed", stage, seg.segment_id)
                faults.append(Fault(stage, f"{type(e).__name__}: {e}"))
                return fallback

        speaker_job = (
            guarded("speakers", self.attribute(seg.samples), None)
            if self.speakers is not None
            else _value(None)
        )
        audio_job = (
            guarded("audio", asyncio.to_thread(self.audio.extract, seg.samples), absent_audio)
            if self.config.audio.enabled and not shed
            else _value(absent_audio)
        )
        visual_job = (
            guarded("visual", self.summarize_visual(seg), None)
            if self._worker is not None and not shed
            else _value(None)
        )
        assigned, audio, visual = await asyncio.gather(speaker_job, audio_job, visual_job)
        speaker = assigned.speaker if assigned is not None else None
        head_scores: dict[str, dict[str, float]] = {}
        model_scores: dict[str, dict[str, float]] = {}
        if not shed:
            head_scores, model_scores = await guarded(
                "heads", asyncio.to_thread(self._head_scores, seg, speaker, visual), ({}, {})
            )
        visual_features = visual.features if visual is not None else absent_visual
        if self.config.heads == "scores":
            audio, visual_features = self._with_head_scores(audio, visual_features, model_scores)
        self.stats.utterances += 1
        self.faults += len(faults)
        return SegmentAnalysis(
            segment=seg,
            speaker=speaker,
            audio=audio,
            visual=visual_features,
            head_scores=head_scores,
            faults=tuple(faults),
            shed=("features",) if shed else (),
        )

    async def attribute(self, samples: np.ndarray) -> Attribution:
        """The segment's speaker: its voice embedded (in a shared batch when ``voices`` is
        given), then this session's clustering step."""
        if self.voices is None:
            return await asyncio.to_thread(self.speakers.assign, samples)
        embedding = await self.voices.submit(samples)
        if embedding is None:
            return Attribution(None, None, False)
        return await asyncio.to_thread(self.speakers.assign_embedding, embedding)

    def _with_head_scores(
        self, audio: ModalityFeatures, visual: ModalityFeatures, scores: dict[str, dict[str, float]]
    ) -> tuple[ModalityFeatures, ModalityFeatures]:
        """Both modalities with their head's log-probabilities appended (in the head's label
        order; see :mod:`~realtime_erc.features.head_scores`)."""
        out = []
        for modality, features in (("audio", audio), ("visual", visual)):
            probs = scores.get(modality)
            vector = None if probs is None else np.array(list(probs.values()), np.float32)
            out.append(with_scores(features, vector, HEAD_CLASSES[modality]))
        return out[0], out[1]

    def _head_scores(
        self, seg: SpeechSegment, speaker: str | None, visual: VisualResult | None
    ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """Per modality, the heads' probabilities over their own labels: those of the event
        heads, and those appended for the model (the same but for ``scores_speech_head``)."""
        scores: dict[str, dict[str, float]] = {}
        model: dict[str, dict[str, float]] = {}
        if self.speech_head is not None and seg.duration > 0:
            who = speaker or ""
            raw = self.speech_head.extractor.features(seg.samples)
            probs = self.speech_head.predict_raw(raw, who)
            scores["audio"] = dict(zip(self.speech_head.labels, map(float, probs), strict=True))
            head = self.scores_speech_head
            if head is not None:
                if not _same_features(head, self.speech_head):
                    raw = head.extractor.features(seg.samples)
                probs = head.predict_raw(raw, who)
                model["audio"] = dict(zip(head.labels, map(float, probs), strict=True))
            else:
                model["audio"] = scores["audio"]
        if self.face_head is not None and visual is not None and visual.face_crop is not None:
            probs = self.face_head.predict(visual.face_crop)
            scores["visual"] = dict(zip(self.face_head.labels, map(float, probs), strict=True))
            model["visual"] = scores["visual"]
        return scores, model


def _same_features(a, b) -> bool:  # SpeechEmotionHead × 2
    """Whether two speech heads read the same features (the thread count aside)."""
    from dataclasses import replace

    return replace(a.feature_options, threads=1) == replace(b.feature_options, threads=1)


async def _value(value):
    return value


_WARM_UP_AUDIO = np.random.default_rng(0).normal(0.0, 0.05, SAMPLE_RATE).astype(np.float32)
"""One second of noise: enough for the speech head's encoder to allocate its buffers."""
