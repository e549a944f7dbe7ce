"""Utterance segmentation: 512-sample VAD windows in, closed :class:`SpeechSegment` out.

:class:`SpeechTracker` is the whole decision logic as a plain synchronous class (testable with a
made-up probability sequence); :class:`Segmenter` is the pipeline stage that re-frames
:class:`AudioChunk` audio into windows, scores them with the VAD and feeds the tracker.

Segment times: ``start`` is the speech onset; ``audio_start`` the session time of ``samples[0]``,
i.e. the onset minus the pre-roll (less at the very start of a session), so
``audio_start + i / SAMPLE_RATE`` is the time of sample ``i``; ``end`` is the end of the last
speech window. ``samples`` run on past ``end`` by a
short tail (:data:`TAIL_MS`, never past the audio received) so the last phoneme is not clipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from realtime_erc.config import VadConfig
from realtime_erc.events import SAMPLE_RATE, AudioChunk, CloseReason, Event, SpeechSegment, now
from realtime_erc.pipeline import Stage
from realtime_erc.speech.vad import WINDOW, SpeechDetector, speech_detector

log = logging.getLogger(__name__)

TAIL_MS = 100
"""Audio kept after the last speech window (when already received)."""

NEG_THRESHOLD_GAP = 0.15
"""Inside speech, a window counts as silence only below ``threshold - gap`` (Silero's rule)."""

THREAD_MIN_WINDOWS = 8
"""Chunks with at least this many windows (≥ 256 ms) are scored off the event loop."""


@dataclass
class _Pause:
    start: int  # sample index where the silence began (end of the last speech window)
    end: int  # sample index where speech resumed
    speech_at: float  # received_at of the last speech window before the pause


class _AudioBuffer:
    """Windows of audio addressed by absolute sample index; old audio can be dropped."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.start = 0  # absolute index of the first kept sample
        self.end = 0  # absolute index one past the last sample

    def append(self, window: np.ndarray) -> None:
        self._chunks.append(window)
        self.end += len(window)

    def drop_before(self, index: int) -> None:
        while self._chunks and self.start + len(self._chunks[0]) <= index:
            self.start += len(self._chunks.pop(0))

    def slice(self, a: int, b: int) -> np.ndarray:
        """A copy of samples ``[a, b)``, clipped to what is kept."""
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return np.zeros(0, dtype=np.float32)
        data = np.concatenate(self._chunks)  # ≤ max_utterance_s of audio, once per segment
        return data[a - self.start : b - self.start].astype(np.float32, copy=True)


class SpeechTracker:
    """Turns a stream of (window, speech probability) into closed speech segments.

    Windows are consecutive ``[512]`` float32 blocks; the first starts at session time
    ``origin``. Hysteresis: speech starts at ``prob >= threshold``; once in speech, a window is
    silence only when ``prob < threshold - 0.15``. A segment closes after ``hangover_ms`` of
    silence; one that grows past ``max_utterance_s`` is cut at its longest pause of at least
    ``split_pause_ms`` (or hard at the limit if it has none) and the rest stays open.
    """

    def __init__(self, config: VadConfig, origin: float = 0.0, first_id: int = 0) -> None:
        ms = SAMPLE_RATE // 1000
        self.threshold = config.threshold
        self.neg_threshold = max(config.threshold - NEG_THRESHOLD_GAP, 0.01)
        self.hangover = config.hangover_ms * ms
        self.pre_roll = config.pre_roll_ms * ms
        self.min_len = config.min_utterance_ms * ms
        self.max_len = int(config.max_utterance_s * SAMPLE_RATE)
        self.split_pause = config.split_pause_ms * ms
        self.tail = TAIL_MS * ms
        self.origin = origin
        self._buf = _AudioBuffer()
        self._next_id = first_id
        self._open = False
        self._seg_start = 0  # first sample of the open segment (onset minus pre-roll)
        self._onset = 0  # first speech sample of the open segment
        self._speech_end = 0  # end of the last speech window
        self._speech_at = 0.0  # received_at of the chunk holding the last speech window
        self._silence_from: int | None = None  # start of the current silence run, if any
        self._pause_at = 0.0  # received_at of the last speech window before that run
        self._pauses: list[_Pause] = []

    @property
    def in_speech(self) -> bool:
        return self._open

    @property
    def samples_seen(self) -> int:
        return self._buf.end

    def push(self, window: np.ndarray, prob: float, received_at: float) -> list[SpeechSegment]:
        """Add one window and its speech probability; return the segments it closed."""
        pos = self._buf.end
        self._buf.append(window)
        end = self._buf.end
        out: list[SpeechSegment] = []
        if not self._open:
            if prob >= self.threshold:
                self._open = True
                self._onset = pos
                self._seg_start = max(pos - self.pre_roll, self._buf.start)
                self._mark_speech(end, received_at)
                self._pauses = []
            else:
                self._buf.drop_before(end - self.pre_roll - WINDOW)
            return out

        speech = prob >= self.threshold or (
            self._silence_from is None and prob >= self.neg_threshold
        )
        if speech:
            if self._silence_from is not None:
                self._pauses.append(_Pause(self._silence_from, pos, self._pause_at))
            self._mark_speech(end, received_at)
        elif self._silence_from is None:
            self._silence_from = pos
            self._pause_at = self._speech_at

        if self._silence_from is not None and end - self._silence_from >= self.hangover:
            out += self._close("silence")
        elif end - self._seg_start > self.max_len:
            out += self._split()
        return out

    def flush(self) -> list[SpeechSegment]:
        """Close the open segment, if any, at end of stream."""
        return self._close("end_of_stream") if self._open else []

    def _mark_speech(self, end: int, received_at: float) -> None:
        self._speech_end = end
        self._speech_at = received_at
        self._silence_from = None

    def _close(self, reason: CloseReason) -> list[SpeechSegment]:
        end = self._speech_end
        seg = self._emit(self._seg_start, end, end + self.tail, self._speech_at, reason)
        self._open = False
        self._silence_from = None
        self._pauses = []
        self._buf.drop_before(self._buf.end - self.pre_roll - WINDOW)
        return seg

    def _split(self) -> list[SpeechSegment]:
        """Cut an over-long open segment; the remainder stays open (or idle, mid-pause).

        The cut goes at the longest pause of at least ``split_pause_ms``, preferring pauses in
        the second half (balanced pieces instead of a short one and a nearly full one), the
        latest among equals; with no such pause, hard at ``max_utterance_s``.
        """
        pauses = list(self._pauses)
        if self._silence_from is not None:  # the pause in progress counts too
            pauses.append(_Pause(self._silence_from, self._buf.end, self._pause_at))
        pauses = [p for p in pauses if p.end - p.start >= self.split_pause]
        late = [p for p in pauses if p.start - self._seg_start >= self.max_len // 2]
        if not pauses:
            cut = self._seg_start + self.max_len
            seg = self._emit(self._seg_start, cut, cut, self._speech_at, "max_length")
            self._seg_start = self._onset = cut
            self._pauses = []
            self._buf.drop_before(cut)
            return seg
        pause = max(late or pauses, key=lambda p: (p.end - p.start, p.start))
        if pause.end == self._buf.end:  # the pause in progress: nothing remains open
            return self._close("max_length")
        mid = (pause.start + pause.end) // 2
        audio_end = min(pause.start + self.tail, mid)
        seg = self._emit(self._seg_start, pause.start, audio_end, pause.speech_at, "max_length")
        self._seg_start = max(pause.end - self.pre_roll, mid)
        self._onset = pause.end
        self._pauses = [p for p in self._pauses if p.start >= pause.end]
        self._buf.drop_before(self._seg_start)
        return seg

    def _emit(
        self, start: int, end: int, audio_end: int, last_audio_at: float, reason: CloseReason
    ) -> list[SpeechSegment]:
        """Build the segment ``[start, end)`` with audio up to ``audio_end``; drop it if short."""
        onset = max(self._onset, start)
        if end - onset < self.min_len:
            log.debug("dropped a %d ms speech burst (< min_utterance_ms)", (end - onset) // 16)
            return []
        seg = SpeechSegment(
            segment_id=self._next_id,
            start=self.origin + onset / SAMPLE_RATE,
            end=self.origin + end / SAMPLE_RATE,
            audio_start=self.origin + start / SAMPLE_RATE,
            samples=self._buf.slice(start, audio_end),
            last_audio_at=last_audio_at,
            closed_at=now(),
            reason=reason,
        )
        self._next_id += 1
        return [seg]


class Segmenter(Stage):
    """Pipeline stage: :class:`AudioChunk` in, :class:`SpeechSegment` out (others pass through).

    Chunks of any length are re-framed into 512-sample windows (the remainder waits for the next
    chunk). VAD costs ~0.3 ms per window, so short chunks are scored on the event loop and long
    ones (≥ :data:`THREAD_MIN_WINDOWS` windows) in a worker thread.
    """

    name = "segmenter"

    def __init__(
        self,
        config: VadConfig | None = None,
        detector: SpeechDetector | None = None,
        first_id: int = 0,
    ) -> None:
        """``first_id``: the first segment's id (a resumed session goes on numbering)."""
        self.config = config or VadConfig()
        self.first_id = first_id
        self._detector = detector
        self._tracker: SpeechTracker | None = None
        self._pending = np.zeros(0, dtype=np.float32)
        self.nonfinite_samples = 0  # NaN/inf input samples replaced by 0

    async def start(self) -> None:
        if self._detector is None:
            self._detector = await asyncio.to_thread(speech_detector, self.config)

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if not isinstance(event, AudioChunk):
            yield event
            return
        for segment in await self.feed(event):
            yield segment

    async def flush(self) -> AsyncIterator[Event]:
        if self._tracker is not None:
            for segment in self._tracker.flush():
                yield segment

    def _sanitize(self, samples: np.ndarray) -> np.ndarray:
        """Guard at the pipeline's entry: NaN/inf samples (a broken driver or file) become 0 and
        are counted in :attr:`nonfinite_samples`; the rest is clipped to [-1, 1]. Without it a
        NaN reaches Silero and the ASR, and sprinkled NaNs split speech into spurious segments.
        ``samples``: ``[n]`` float32; returned as is when already clean."""
        finite = np.isfinite(samples)
        if not finite.all():
            bad = int(samples.size - np.count_nonzero(finite))
            if self.nonfinite_samples == 0:
                log.warning("audio holds NaN/inf samples; replacing them with 0 (counted)")
            self.nonfinite_samples += bad
            samples = np.where(finite, samples, np.float32(0.0))
        if samples.size and (samples.max() > 1.0 or samples.min() < -1.0):
            samples = np.clip(samples, -1.0, 1.0)
        return samples

    async def feed(self, chunk: AudioChunk) -> list[SpeechSegment]:
        """Score the chunk's whole windows and return the segments they closed."""
        if self._detector is None:
            await self.start()
        assert self._detector is not None
        if self._tracker is None:
            self._tracker = SpeechTracker(self.config, chunk.start, self.first_id)
        samples = self._sanitize(np.asarray(chunk.samples, dtype=np.float32))
        audio = np.concatenate([self._pending, samples])
        n = len(audio) // WINDOW
        self._pending = audio[n * WINDOW :]
        if n == 0:
            return []
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        if n >= THREAD_MIN_WINDOWS:
            probs = await asyncio.to_thread(self._detector.probabilities, windows)
        else:
            probs = self._detector.probabilities(windows)
        out: list[SpeechSegment] = []
        for window, prob in zip(windows, probs, strict=True):
            out += self._tracker.push(window, float(prob), chunk.received_at)
        return out
