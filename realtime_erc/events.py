"""Typed, frozen events that flow between pipeline stages.

Times named ``start``/``end``/``time`` are seconds on the *session clock* (0 = first audio
sample). Times named ``*_at`` are ``time.perf_counter()`` readings taken when something happened
in this process; differences between them are the per-hop latencies reported on the stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Literal

import numpy as np

SAMPLE_RATE = 16_000
"""The pipeline's audio rate: every source resamples to 16 kHz mono float32."""


def now() -> float:
    """Monotonic clock used for every ``*_at`` field."""
    return time.perf_counter()


@dataclass(frozen=True, slots=True, eq=False)
class AudioChunk:
    """A block of mono float32 audio at ``SAMPLE_RATE``.

    ``samples``: ``[n]`` float32 in [-1, 1]. ``start``: session time of the first sample.
    ``received_at``: when the block entered the pipeline (the mic callback or the replay clock).
    """

    samples: np.ndarray
    start: float
    received_at: float = field(default_factory=now)

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True, slots=True, eq=False)
class VideoFrame:
    """One camera frame. ``image``: ``[H, W, 3]`` uint8 BGR (OpenCV order)."""

    image: np.ndarray
    index: int
    time: float
    received_at: float = field(default_factory=now)


CloseReason = Literal["silence", "max_length", "end_of_stream"]


@dataclass(frozen=True, slots=True, eq=False)
class SpeechSegment:
    """A closed stretch of speech found by the segmenter.

    ``start``/``end``: speech onset and end of the last speech window (session seconds).
    ``samples``: ``[n]`` float32 at ``SAMPLE_RATE``; sample 0 is at ``audio_start`` (the onset
    minus the pre-roll), and the audio runs a short tail past ``end``.
    ``last_audio_at``: when the chunk holding the segment's last speech sample entered the
    pipeline; ``closed_at``: when the segmenter decided the segment had ended. Their difference is
    the end-of-speech hangover as the user experiences it.
    """

    segment_id: int
    start: float
    end: float
    samples: np.ndarray
    last_audio_at: float
    closed_at: float
    reason: CloseReason = "silence"
    audio_start: float = -1.0
    """Session time of ``samples[0]``; defaults to ``start`` (no pre-roll)."""

    def __post_init__(self) -> None:
        if self.audio_start < 0:
            object.__setattr__(self, "audio_start", self.start)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True, slots=True, eq=False)
class Utterance:
    """A transcribed speech segment. ``speaker`` is None until speaker attribution assigns one."""

    utterance_id: int
    segment: SpeechSegment
    text: str
    words: tuple[Word, ...] = ()
    language: str = "en"
    speaker: str | None = None
    transcribed_at: float = field(default_factory=now)
    faults: tuple[Fault, ...] = ()
    """Work that failed or was shed for this utterance (e.g. the transcription)."""

    @property
    def start(self) -> float:
        return self.segment.start

    @property
    def end(self) -> float:
        return self.segment.end


MODALITIES = ("text", "audio", "visual")
"""The modalities in the order every tensor and presence mask uses."""


@dataclass(frozen=True, slots=True, eq=False)
class ModalityFeatures:
    """One modality of one utterance.

    ``pooled``: ``[D]`` float32, the utterance-level vector. ``sequence``: ``[T, D_seq]`` float32
    (tokens, audio frames, video frames) or None; ``mask``: ``[T]`` bool, True = valid step (None
    = all valid). ``present`` is False when the modality is missing (no face in view, no speech
    recognised); the vectors are then zeros and models must ignore them.
    """

    pooled: np.ndarray
    sequence: np.ndarray | None = None
    mask: np.ndarray | None = None
    present: bool = True

    @classmethod
    def absent(cls, dim: int, seq_dim: int | None = None) -> ModalityFeatures:
        seq = None if seq_dim is None else np.zeros((1, seq_dim), np.float32)
        mask = None if seq_dim is None else np.zeros(1, bool)
        return cls(np.zeros(dim, np.float32), seq, mask, present=False)


@dataclass(frozen=True, slots=True, eq=False)
class UtteranceFeatures:
    """Everything the ERC models see of one utterance (dims fixed by the config/checkpoint)."""

    utterance_id: int
    speaker: str
    start: float
    end: float
    text: ModalityFeatures
    audio: ModalityFeatures
    visual: ModalityFeatures
    utterance: Utterance | None = None
    analysis: SegmentAnalysis | None = None
    """What the analysis found (speaker, heads' scores, faults), when it ran."""
    faults: tuple[Fault, ...] = ()
    """Work that failed while assembling (the text encoding)."""
    extracted_at: float = field(default_factory=now)

    def modality(self, name: str) -> ModalityFeatures:
        return getattr(self, name)

    @property
    def present(self) -> tuple[bool, bool, bool]:
        return (self.text.present, self.audio.present, self.visual.present)


@dataclass(frozen=True, slots=True)
class Fault:
    """Work that failed for one utterance (``stage``: asr, speakers, audio, visual, text, model);
    the utterance's event still goes out, without what that work would have added."""

    stage: str
    message: str

    def to_document(self) -> dict:
        return {"stage": self.stage, "message": self.message[:500]}


@dataclass(frozen=True, slots=True, eq=False)
class SegmentAnalysis:
    """What is known of a closed speech segment before its transcript.

    ``speaker``: the attributed speaker (None without attribution); ``audio``/``visual``: the
    segment's features; ``head_scores``: per modality, the emotion head's probabilities over the
    head's own labels (empty when no head ran); ``faults``: work that failed; ``shed``: work
    skipped by the overload policy.
    """

    segment: SpeechSegment
    speaker: str | None
    audio: ModalityFeatures
    visual: ModalityFeatures
    head_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()
    shed: tuple[str, ...] = ()
    analysed_at: float = field(default_factory=now)

    @property
    def segment_id(self) -> int:
        return self.segment.segment_id

    def modality(self, name: str) -> ModalityFeatures | None:
        """``audio`` or ``visual`` (None for other names: the text comes later)."""
        return {"audio": self.audio, "visual": self.visual}.get(name)


@dataclass(frozen=True, slots=True, eq=False)
class Inference:
    """The model's decision on one utterance: ``scores`` over its labels (None without a model,
    or when it failed: ``faults`` say why), fused with the heads' where a fusion applies;
    ``heads``: each head's scores on the model's labels; ``modalities``: what informed it."""

    features: UtteranceFeatures
    scores: dict[str, float] | None
    modalities: dict[str, bool]
    heads: dict[str, dict[str, float]] | None = None
    faults: tuple[Fault, ...] = ()
    decided_at: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class EmotionEvent:
    """One ``erc.emotion/1`` document (see STREAM_PROTOCOL.md).

    ``label``/``scores`` are None until an emotion model is configured: the event then carries
    speaker, timing, transcript and latency only.
    """

    session_id: str
    utterance_id: int
    speaker: str
    start: float
    end: float
    text: str
    label: str | None
    scores: dict[str, float] | None
    label_set: str
    modalities: dict[str, bool]
    provisional: bool
    model: str | None
    latency_ms: dict[str, float]
    emitted_at: str
    faults: tuple[Fault, ...] = ()
    heads: dict[str, dict[str, float]] | None = None
    """Each emotion head's distribution mapped onto ``label_set`` (``{"audio": {...},
    "visual": {...}}``): what the voice and the face say on their own."""

    def to_document(self) -> dict:
        document = {
            "schema": "erc.emotion/1",
            "session_id": self.session_id,
            "utterance_id": self.utterance_id,
            "speaker": self.speaker,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "label": self.label,
            "scores": self.scores,
            "label_set": self.label_set,
            "modalities": self.modalities,
            "provisional": self.provisional,
            "model": self.model,
            "latency_ms": self.latency_ms,
            "emitted_at": self.emitted_at,
        }
        if self.faults:
            document["errors"] = [f.to_document() for f in self.faults]
        if self.heads:
            document["heads"] = self.heads
        return document


StatusState = Literal["online", "offline", "lost"]


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One ``erc.status/1`` document: the session's lifecycle."""

    session_id: str
    state: StatusState
    model: str | None
    label_set: str
    at: str
    load: LoadReport | None = None
    context: Resumption | None = None

    def to_document(self) -> dict:
        document = {
            "schema": "erc.status/1",
            "session_id": self.session_id,
            "state": self.state,
            "model": self.model,
            "label_set": self.label_set,
            "at": self.at,
        }
        if self.load is not None:
            document["load"] = self.load.to_document()
        if self.context is not None:
            document["context"] = self.context.to_document()
        return document


@dataclass(frozen=True, slots=True)
class Resumption:
    """Where a session goes on after its server lost it: its audio resumes at session time
    ``at`` and its next utterance is ``next_utterance_id``; ``kept`` / ``lost``: the parts of
    its context that survived and those that start afresh."""

    at: float
    next_utterance_id: int
    kept: tuple[str, ...]
    lost: tuple[str, ...]

    def to_document(self) -> dict:
        return {
            "resumed_at": round(self.at, 3),
            "next_utterance_id": self.next_utterance_id,
            "kept": list(self.kept),
            "lost": list(self.lost),
        }


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The overload policy's state (see ``realtime_erc/load.py``): ``level`` 0 = nothing shed;
    ``shedding``: what is skipped now; ``lag_ms``: how far behind real time the work is;
    ``shed_counts``: how often each kind of work has been skipped so far this session."""

    level: int
    shedding: tuple[str, ...]
    lag_ms: float
    shed_counts: dict[str, int]

    def to_document(self) -> dict:
        return {
            "level": self.level,
            "shedding": list(self.shedding),
            "lag_ms": round(self.lag_ms, 1),
            "shed_counts": dict(self.shed_counts),
        }


Event = (
    AudioChunk
    | VideoFrame
    | SpeechSegment
    | Utterance
    | SegmentAnalysis
    | UtteranceFeatures
    | Inference
    | EmotionEvent
    | StatusEvent
)
"""Anything that travels on a pipeline queue."""


def utc_timestamp(epoch: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix, as the stream protocol writes times."""
    from datetime import datetime

    t = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
