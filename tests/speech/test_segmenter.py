"""Segmentation: the tracker on made-up probability sequences, the stage on real espeak speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from realtime_erc.config import VadConfig
from realtime_erc.events import SAMPLE_RATE, AudioChunk, SpeechSegment, VideoFrame
from realtime_erc.speech.segmenter import Segmenter, SpeechTracker
from realtime_erc.speech.vad import WINDOW

W_S = WINDOW / SAMPLE_RATE  # 32 ms


def pattern(*runs: tuple[float, float]) -> list[float]:
    """Probabilities per window from ``(seconds, probability)`` runs."""
    probs: list[float] = []
    for seconds, prob in runs:
        probs += [prob] * round(seconds / W_S)
    return probs


def run(tracker: SpeechTracker, probs: list[float]) -> list[tuple[int, SpeechSegment]]:
    """Push time-coded windows (sample value = index / 1e6); ``received_at`` = window index.

    Returns (index of the window whose push closed it, segment) pairs, then the flushed ones.
    """
    out: list[tuple[int, SpeechSegment]] = []
    for i, prob in enumerate(probs):
        window = (np.arange(i * WINDOW, (i + 1) * WINDOW) / 1e6).astype(np.float32)
        out += [(i, s) for s in tracker.push(window, prob, received_at=float(i))]
    return out + [(len(probs), s) for s in tracker.flush()]


def first_sample_index(segment: SpeechSegment) -> int:
    return round(float(segment.samples[0]) * 1e6)


def config(**overrides: float) -> VadConfig:
    base = dict(hangover_ms=400, pre_roll_ms=200, min_utterance_ms=250, max_utterance_s=15.0)
    return VadConfig(**{**base, **overrides})


def test_speech_pause_speech_gives_two_segments() -> None:
    probs = pattern((1, 0.02), (1, 0.9), (1, 0.02), (1.5, 0.9), (1, 0.02))
    closed = run(SpeechTracker(config()), probs)
    assert [s.segment_id for _, s in closed] == [0, 1]
    assert [s.reason for _, s in closed] == ["silence", "silence"]
    (i0, a), (i1, b) = closed
    assert a.start == pytest.approx(1.0, abs=0.1)  # speech onset
    assert a.audio_start == pytest.approx(1.0 - 0.2, abs=0.1)  # onset minus pre-roll
    assert a.end == pytest.approx(2.0, abs=0.1)
    assert b.start == pytest.approx(3.0, abs=0.1)
    assert b.audio_start == pytest.approx(3.0 - 0.2, abs=0.1)
    assert b.end == pytest.approx(4.5, abs=0.1)
    # closed once the hangover had passed, not before
    assert (i0 + 1) * W_S - a.end == pytest.approx(0.4, abs=W_S)
    assert (i1 + 1) * W_S - b.end == pytest.approx(0.4, abs=W_S)
    # last_audio_at is the received_at of the last speech window
    assert a.last_audio_at == pytest.approx(a.end / W_S - 1)
    assert a.closed_at <= b.closed_at


def test_a_resumed_session_numbers_its_segments_on_from_where_it_was() -> None:
    probs = pattern((1, 0.02), (1, 0.9), (1, 0.02), (1.5, 0.9), (1, 0.02))
    closed = run(SpeechTracker(config(), origin=40.0, first_id=13), probs)
    assert [s.segment_id for _, s in closed] == [13, 14]
    assert closed[0][1].start == pytest.approx(41.0, abs=0.1)  # on the session clock


def test_samples_line_up_with_times_and_keep_a_tail() -> None:
    (_, seg), *_ = run(SpeechTracker(config()), pattern((1, 0.0), (1, 0.9), (1, 0.0)))
    assert first_sample_index(seg) == round(seg.audio_start * SAMPLE_RATE)
    last = round(float(seg.samples[-1]) * 1e6)
    assert last + 1 == round(seg.end * SAMPLE_RATE) + 100 * SAMPLE_RATE // 1000
    np.testing.assert_allclose(np.diff(seg.samples.astype(np.float64)) * 1e6, 1.0, atol=0.05)


def test_pause_shorter_than_hangover_does_not_split() -> None:
    probs = pattern((0.5, 0.0), (1, 0.9), (0.3, 0.02), (1, 0.9), (1, 0.0))
    closed = run(SpeechTracker(config(hangover_ms=400)), probs)
    assert len(closed) == 1
    assert closed[0][1].end == pytest.approx(2.8, abs=0.1)


def test_hysteresis_keeps_ambiguous_windows_in_speech() -> None:
    # 0.4 lies between threshold - 0.15 and threshold: it continues speech, never starts a pause
    probs = pattern((0.5, 0.0), (1, 0.9), (0.6, 0.4), (1, 0.9), (1, 0.0))
    assert len(run(SpeechTracker(config()), probs)) == 1
    probs = pattern((0.5, 0.0), (1, 0.9), (0.6, 0.3), (1, 0.9), (1, 0.0))
    assert len(run(SpeechTracker(config()), probs)) == 2


def test_short_bursts_are_discarded() -> None:
    probs = pattern((0.5, 0.0), (0.16, 0.9), (1, 0.0), (1, 0.9), (1, 0.0))
    closed = run(SpeechTracker(config(min_utterance_ms=250)), probs)
    assert len(closed) == 1
    assert closed[0][1].segment_id == 0
    assert closed[0][1].start == pytest.approx(1.66, abs=0.1)


def test_pre_roll_is_clipped_at_the_start_of_the_session() -> None:
    closed = run(SpeechTracker(config(), origin=5.0), pattern((0.064, 0.0), (1, 0.9), (1, 0.0)))
    seg = closed[0][1]
    assert seg.audio_start == pytest.approx(5.0)
    assert seg.start == pytest.approx(5.064, abs=0.04)
    assert first_sample_index(seg) == 0


def test_long_monologue_is_split_at_pauses() -> None:
    runs: list[tuple[float, float]] = [(0.5, 0.0)]
    while sum(r[0] for r in runs) < 40.5:
        runs += [(2.4, 0.95), (0.256, 0.05)]
    runs[-1] = (1.0, 0.0)
    probs = pattern(*runs)
    pauses = [i * W_S for i in range(1, len(probs)) if probs[i] < 0.5 <= probs[i - 1]]
    closed = [s for _, s in run(SpeechTracker(config(split_pause_ms=150)), probs)]

    assert len(closed) >= 3
    assert [s.reason for s in closed[:-1]] == ["max_length"] * (len(closed) - 1)
    assert closed[-1].reason == "silence"
    assert [s.segment_id for s in closed] == list(range(len(closed)))
    for seg in closed:
        assert seg.duration <= 15.0
        assert min(abs(seg.end - p) for p in pauses) < 1e-6  # every cut is at a pause
        assert first_sample_index(seg) == round(seg.audio_start * SAMPLE_RATE)
    for prev, nxt in zip(closed, closed[1:], strict=False):
        assert prev.end < nxt.audio_start < prev.end + 0.256  # next piece's audio: in the pause
        assert nxt.start == pytest.approx(prev.end + 0.256, abs=0.04)  # its speech: after it
        assert prev.duration > 7.5  # balanced pieces: cut in the second half
    assert closed[0].start == pytest.approx(0.5, abs=0.1)
    assert closed[0].audio_start == pytest.approx(0.3, abs=0.1)
    assert closed[-1].end == pytest.approx(len(probs) * W_S - 1.0, abs=0.05)


def test_longest_pause_wins() -> None:
    probs = pattern((0.5, 0.0), (9, 0.9), (0.35, 0.0), (2, 0.9), (0.2, 0.0), (5, 0.9), (1, 0.0))
    closed = [s for _, s in run(SpeechTracker(config(split_pause_ms=150)), probs)]
    assert closed[0].reason == "max_length"
    assert closed[0].end == pytest.approx(0.5 + 9, abs=0.05)
    assert closed[1].start >= closed[0].end


def test_monologue_without_pauses_is_cut_at_the_limit() -> None:
    probs = pattern((0.5, 0.0), (40, 0.95), (1, 0.0))
    closed = [s for _, s in run(SpeechTracker(config(max_utterance_s=15.0)), probs)]
    assert [s.reason for s in closed] == ["max_length", "max_length", "silence"]
    assert closed[0].end - closed[0].audio_start == pytest.approx(15.0)
    assert closed[1].start == closed[0].end
    assert closed[2].start == closed[1].end
    assert closed[2].end == pytest.approx(40.5, abs=0.05)
    assert sum(len(s.samples) for s in closed[:2]) == 30 * SAMPLE_RATE


def test_flush_closes_the_open_segment() -> None:
    tracker = SpeechTracker(config())
    closed = run(tracker, pattern((0.5, 0.0), (1, 0.9), (0.1, 0.0)))
    assert len(closed) == 1
    seg = closed[0][1]
    assert seg.reason == "end_of_stream"
    assert seg.end == pytest.approx(1.5, abs=0.05)
    assert round(float(seg.samples[-1]) * 1e6) + 1 == tracker.samples_seen  # never past received
    assert tracker.flush() == []
    assert not tracker.in_speech


# --- the stage on real speech ---------------------------------------------------------------

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) makes the test speech"
)


def speak(text: str, tmp: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 mono at 16 kHz."""
    import soundfile as sf
    import soxr

    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def loud_extent(audio: np.ndarray, offset: float) -> tuple[float, float]:
    """Session times of the first and last sample louder than -34 dBFS."""
    idx = np.flatnonzero(np.abs(audio) > 0.02)
    return offset + idx[0] / SAMPLE_RATE, offset + (idx[-1] + 1) / SAMPLE_RATE


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[tuple]]:
    """Silence, sentence, 1.2 s silence, sentence, silence; and each sentence's loud extent."""
    tmp = tmp_path_factory.mktemp("tts")
    one = speak("I am really happy that you could join us for dinner tonight.", tmp)
    two = speak("Please remember to close the window before you leave.", tmp)
    gap = np.zeros(int(1.2 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([gap[: SAMPLE_RATE // 2], one, gap, two, gap])
    t1 = 0.5
    t2 = t1 + (len(one) + len(gap)) / SAMPLE_RATE
    return audio, [loud_extent(one, t1), loud_extent(two, t2)]


async def feed(stage: Segmenter, audio: np.ndarray, chunk: int, extra: list | None = None) -> list:
    await stage.start()
    out: list = []
    for k, i in enumerate(range(0, len(audio), chunk)):
        event = AudioChunk(audio[i : i + chunk], start=i / SAMPLE_RATE)
        out += [e async for e in stage.process(event)]
        if extra and k == 3:
            out += [e async for e in stage.process(extra[0])]
    out += [e async for e in stage.flush()]
    await stage.close()
    return out


@needs_espeak
@pytest.mark.parametrize("chunk_ms", [20, 1000])
async def test_stage_finds_both_sentences(dialogue: tuple, chunk_ms: int) -> None:
    audio, extents = dialogue
    frame = VideoFrame(np.zeros((2, 2, 3), np.uint8), index=0, time=0.0)
    out = await feed(Segmenter(VadConfig()), audio, chunk_ms * 16, extra=[frame])
    assert frame in out  # passed through untouched
    segments = [e for e in out if isinstance(e, SpeechSegment)]
    assert [s.reason for s in segments] == ["silence", "silence"]
    for seg, (first, last) in zip(segments, extents, strict=True):
        assert seg.start == pytest.approx(first, abs=0.1)
        assert seg.audio_start == pytest.approx(seg.start - 0.2, abs=1e-6)
        assert seg.end == pytest.approx(last, abs=0.15)
        audio_s = seg.end - seg.audio_start
        assert len(seg.samples) == pytest.approx(audio_s * SAMPLE_RATE + 1600, abs=2)
        assert seg.closed_at >= seg.last_audio_at


@needs_espeak
async def test_stage_flushes_speech_cut_off_by_end_of_stream(dialogue: tuple) -> None:
    audio, extents = dialogue
    cut = int((extents[1][0] + 1.0) * SAMPLE_RATE)  # one second into the second sentence
    segments = await feed(Segmenter(VadConfig(webrtc_gate=False)), audio[:cut], 512 * 3)
    assert [s.reason for s in segments] == ["silence", "end_of_stream"]
    assert segments[1].end == pytest.approx(cut / SAMPLE_RATE, abs=0.1)
