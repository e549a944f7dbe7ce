"""Live cuts for the speech head: every training clip again, as the live segmenter hands it over.

The head was trained on whole RAVDESS clips: a studio's near-silent floor, the speech's quiet
onset and tail intact. Live, it hears what the segmenter cut from a microphone's stream: over a
noise floor, from the onset less the pre-roll to a hangover after the last window the VAD
still called speech (a quiet last word can fall outside it, and a pause inside a clip can split
it). On the dev sessions' `voice` turns the packaged head scored 0.72 on the clips and 0.57 on
the live segments of the same turns, with the true speakers.

A live cut levels the clip's voiced span to :data:`SPEECH_DBFS`, adds white noise at a floor
drawn from ``noise_dbfs``, puts :data:`LEAD_S` / :data:`TAIL_S` of that floor around it, runs
the real segmenter (:class:`~realtime_erc.speech.segmenter.SpeechTracker` over Silero behind the
webrtcvad gate, the default :class:`~realtime_erc.config.VadConfig`) and keeps the longest
segment it closes, pre-roll and tail included. Each copy is a speaker of its own for
per-speaker standardisation (:func:`~.speed_perturb.perturbed_speaker`), as the speed copies are,
so its statistics are those of its own cuts, as live. Clips are written once as FLAC under the
cache (:class:`LiveCuts`); the floor is drawn from the clip's name, so a rerun cuts the same
audio. ``realtime-erc bench speakers`` attributes the same cuts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_erc.config import VadConfig
from realtime_erc.events import SAMPLE_RATE
from realtime_erc.features.assets import cache_root
from realtime_erc.training.dev_sessions import level
from realtime_erc.training.emotion_data import SpeechClip, clip_digest, read_clip, write_clip
from realtime_erc.training.speed_perturb import perturbed_speaker

SPEECH_DBFS = -23.0
"""Voiced RMS of the clip before the floor is added (the dev sessions' turn level)."""
LEAD_S = 0.6
TAIL_S = 1.0


@dataclass(frozen=True)
class LiveCutOptions:
    noise_dbfs: tuple[float, float] = (-70.0, -45.0)
    """White-noise floor, dBFS, drawn uniformly per clip."""


class LiveCutter:
    """``cut(samples [n] 16 kHz, rng) -> [m]``: the segment the live segmenter keeps."""

    def __init__(self, options: LiveCutOptions = LiveCutOptions(), vad: VadConfig | None = None):
        from realtime_erc.speech.vad import speech_detector

        self.options = options
        self.vad = vad or VadConfig()
        self.detector = speech_detector(self.vad)

    def stream(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The clip levelled, over a noise floor, with lead and tail: what a microphone gives."""
        x = level(np.asarray(samples, dtype=np.float32), SPEECH_DBFS).astype(np.float64)
        x = np.concatenate(
            [np.zeros(int(LEAD_S * SAMPLE_RATE)), x, np.zeros(int(TAIL_S * SAMPLE_RATE))]
        )
        floor = 10 ** (rng.uniform(*self.options.noise_dbfs) / 20)
        return np.clip(x + rng.normal(0.0, floor, len(x)), -1.0, 1.0).astype(np.float32)

    def cut(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from realtime_erc.speech.segmenter import SpeechTracker
        from realtime_erc.speech.vad import WINDOW

        audio = self.stream(samples, rng)
        n = len(audio) // WINDOW
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        self.detector.reset()
        tracker = SpeechTracker(self.vad)
        segments = []
        for window, prob in zip(windows, self.detector.probabilities(windows), strict=True):
            segments += tracker.push(window, float(prob), 0.0)
        segments += tracker.flush()
        if not segments:  # the VAD heard nothing: live, no utterance; here, the whole stream
            return audio
        return max(segments, key=lambda s: len(s.samples)).samples


class LiveCuts:
    """``path(clip) -> Path``: the live cut of a clip file, made once and kept as FLAC under the
    cache (the floor is drawn from the clip's name, so a rerun cuts the same audio)."""

    def __init__(self, options: LiveCutOptions = LiveCutOptions(), out_dir: Path | None = None):
        self.options = options
        self.vad = VadConfig()  # the live default: a cut follows the segmenter's settings
        self.out_dir = out_dir or cache_root() / "live-cut"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._cutter: LiveCutter | None = None

    def path(self, clip: Path) -> Path:
        digest = clip_digest(clip, self.options, self.vad)
        path = self.out_dir / f"{digest[:16]}.flac"
        if not path.is_file():
            self._cutter = self._cutter or LiveCutter(self.options, self.vad)
            # the floor is drawn from the clip's name and the cut options alone: the same on
            # every machine and mount, and a change of [vad] re-cuts only what it changes
            seed = hashlib.sha1(f"{clip.name}|{self.options}".encode()).hexdigest()
            rng = np.random.default_rng(int(seed[:16], 16))
            write_clip(path, self._cutter.cut(read_clip(clip), rng))
        return path


def live_cut_clips(
    clips: Sequence[SpeechClip],
    copy: int,
    options: LiveCutOptions = LiveCutOptions(),
    out_dir: Path | None = None,
) -> list[SpeechClip]:
    """A live cut of each clip (same emotion, speaker ``perturbed_speaker(actor, copy)``)."""
    cuts = LiveCuts(options, out_dir)
    return [
        SpeechClip(cuts.path(c.path), perturbed_speaker(c.actor, copy), c.emotion) for c in clips
    ]
