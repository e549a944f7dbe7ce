"""Speed perturbation for the speech head: every training voice again, a little faster and slower.

Resampling a clip by a factor ``f`` (read as if recorded at ``f`` × 16 kHz) changes its tempo
and its pitch together: ``f = 1.1`` is 10 % faster and 1.65 semitones higher. The head's hard
case is a voice it never heard (held-out actors, the dev sessions', every user's), and RAVDESS
gives it 16 training voices. Each perturbed copy of a voice is a speaker of its own for
per-speaker standardisation (:func:`perturbed_speaker`), so the head learns each emotion from
three times as many voices. Cross-validation holds a voice's copies out with it
(:func:`source_speaker`). Clips are written once as FLAC under the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from realtime_erc.features.assets import cache_root
from realtime_erc.features.speech_emotion import SAMPLE_RATE
from realtime_erc.training.emotion_data import SpeechClip, clip_digest, read_clip, write_clip

PERTURBED_ID_STRIDE = 10_000
"""Copy ``k`` of speaker ``s`` is speaker ``s + (k + 1) × stride`` (real and plain ids are
below it)."""


def perturbed_speaker(speaker: int, k: int) -> int:
    return speaker + (k + 1) * PERTURBED_ID_STRIDE


def source_speaker(speakers: np.ndarray) -> np.ndarray:
    """The voice each (possibly perturbed) speaker id was made from ``[N]``."""
    return np.asarray(speakers) % PERTURBED_ID_STRIDE


def speed_perturbed_clips(
    clips: Sequence[SpeechClip], factors: Sequence[float], out_dir: Path | None = None
) -> list[SpeechClip]:
    """A copy of each clip per factor (same emotion, speaker :func:`perturbed_speaker`)."""
    import soxr

    if any(not 0.5 <= f <= 2.0 for f in factors):
        raise ValueError(f"speed factors must lie in [0.5, 2], not {list(factors)}")
    out_dir = out_dir or cache_root() / "speed-perturbed"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for k, factor in enumerate(factors):
        for clip in clips:
            path = out_dir / f"{clip_digest(clip.path, factor)[:16]}.flac"
            if not path.is_file():
                audio = soxr.resample(read_clip(clip.path), SAMPLE_RATE * factor, SAMPLE_RATE)
                write_clip(path, audio)
            out.append(SpeechClip(path, perturbed_speaker(clip.actor, k), clip.emotion))
    return out
