"""Speed perturbation for the speech head: faster and slower copies of each voice, and
cross-validation that holds a voice's copies out with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from realtime_erc.training.emotion_data import SpeechClip
from realtime_erc.training.speech_trainer import SpeechTrainOptions, cross_validate, read_clip
from realtime_erc.training.speed_perturb import (
    perturbed_speaker,
    source_speaker,
    speed_perturbed_clips,
)

SR = 16000


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


def test_a_faster_copy_is_shorter_and_higher_and_keeps_the_emotion(tmp_path: Path) -> None:
    t = np.arange(2 * SR) / SR
    source = tmp_path / "tone.flac"
    sf.write(source, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), SR)
    clips = [SpeechClip(source, 7, 4)]
    fast, slow = speed_perturbed_clips(clips, (1.25, 0.8), out_dir=tmp_path / "out")
    assert (fast.actor, slow.actor) == (perturbed_speaker(7, 0), perturbed_speaker(7, 1))
    assert fast.emotion == slow.emotion == 4
    x_fast, x_slow = read_clip(fast.path), read_clip(slow.path)
    assert len(x_fast) == pytest.approx(2 * SR / 1.25, abs=8)
    assert len(x_slow) == pytest.approx(2 * SR / 0.8, abs=8)
    assert _peak_hz(x_fast) == pytest.approx(250, abs=2)
    assert _peak_hz(x_slow) == pytest.approx(160, abs=2)
    assert list(source_speaker(np.array([fast.actor, slow.actor, 7]))) == [7, 7, 7]
    # written once: a second call finds the files
    mtime = fast.path.stat().st_mtime_ns
    again = speed_perturbed_clips(clips, (1.25,), out_dir=tmp_path / "out")
    assert again[0].path == fast.path and fast.path.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="speed factors"):
        speed_perturbed_clips(clips, (3.0,), out_dir=tmp_path / "out")


def test_cross_validation_never_trains_on_a_copy_of_a_held_out_voice() -> None:
    # Random features and labels: only memorising a held-out clip's copy could score well.
    rng = np.random.default_rng(0)
    actors = np.repeat(np.arange(1, 4), 16)
    y = rng.integers(0, 8, len(actors))
    x = rng.normal(size=(len(actors), 64)).astype(np.float32)
    copies = np.concatenate([perturbed_speaker(actors, k) for k in range(2)])
    x_all = np.concatenate([x, x, x])
    y_all = np.concatenate([y, y, y])
    a_all = np.concatenate([actors, copies])
    options = SpeechTrainOptions(steps=80, dropout=0.0, label_smoothing=0.0, folds=3)
    folds = cross_validate(x_all, y_all, a_all, options)
    assert [f["actors"] for f in folds] == [[1], [2], [3]]  # never a copy's id
    assert all(f["n"] == 16 for f in folds)  # originals only are scored
    assert np.mean([f["accuracy"] for f in folds]) < 0.4
    # copies filed under another actor's id leak, and the same check sees it
    leaky = np.concatenate([actors, actors % 3 + 1, actors % 3 + 1])
    folds = cross_validate(x_all, y_all, leaky, options)
    assert np.mean([f["accuracy"] for f in folds]) > 0.6
