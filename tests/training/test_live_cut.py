"""Live cuts for the speech head: a clip over a noise floor, cut by the real segmenter; and
cross-validation that scores a held-out voice's cuts without training on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from feature_media import espeak

from realtime_erc.events import SAMPLE_RATE
from realtime_erc.training.dev_sessions import voiced_rms_db
from realtime_erc.training.emotion_data import SpeechClip, read_clip
from realtime_erc.training.live_cut import (
    SPEECH_DBFS,
    LiveCutOptions,
    LiveCutter,
    live_cut_clips,
)
from realtime_erc.training.speech_trainer import SpeechTrainOptions, cross_validate
from realtime_erc.training.speed_perturb import perturbed_speaker

SR = SAMPLE_RATE


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def _dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def test_a_cut_is_the_speech_over_the_floor_as_the_segmenter_keeps_it() -> None:
    speech = espeak("The meeting starts at nine tomorrow morning.")
    clip = np.concatenate([_silence(0.8), 0.05 * speech / np.abs(speech).max(), _silence(0.8)])
    cutter = LiveCutter(LiveCutOptions(noise_dbfs=(-55.0, -55.0)))
    stream = cutter.stream(clip, np.random.default_rng(0))
    assert _dbfs(stream[: int(0.5 * SR)]) == pytest.approx(-55.0, abs=1.0)
    assert voiced_rms_db(stream) == pytest.approx(SPEECH_DBFS, abs=1.0)
    cut = cutter.cut(clip, np.random.default_rng(0))
    # the speech and no more than the pre-roll (200 ms), a hangover and a tail around it
    assert 0.8 * len(speech) < len(cut) < len(speech) + int(1.0 * SR) < len(stream)
    assert _dbfs(cut[: int(0.05 * SR)]) < -45.0  # the pre-roll is the floor, not silence...
    assert _dbfs(cut[: int(0.05 * SR)]) > -65.0
    assert voiced_rms_db(cut) == pytest.approx(SPEECH_DBFS, abs=1.5)


def test_a_pause_longer_than_the_hangover_leaves_the_longer_part() -> None:
    short = espeak("Yes.")
    long = espeak("I will bring the documents to the office this afternoon.")
    clip = np.concatenate([_silence(0.5), short, _silence(1.2), long, _silence(0.5)])
    cut = LiveCutter().cut(clip, np.random.default_rng(1))
    assert 0.8 * len(long) < len(cut) < len(long) + int(1.0 * SR)


def test_cuts_are_written_once_under_their_own_speaker(tmp_path: Path) -> None:
    source = tmp_path / "line.flac"
    speech = espeak("Dogs are sitting by the door.")
    sf.write(source, np.concatenate([_silence(0.6), speech, _silence(0.6)]), SR)
    clips = [SpeechClip(source, 7, 4)]
    (cut,) = live_cut_clips(clips, copy=2, out_dir=tmp_path / "a")
    assert (cut.actor, cut.emotion) == (perturbed_speaker(7, 2), 4)
    mtime = cut.path.stat().st_mtime_ns
    (again,) = live_cut_clips(clips, copy=2, out_dir=tmp_path / "a")
    assert again.path == cut.path and cut.path.stat().st_mtime_ns == mtime
    # the floor is drawn from the clip's recipe: another cache cuts the same audio
    (elsewhere,) = live_cut_clips(clips, copy=2, out_dir=tmp_path / "b")
    np.testing.assert_array_equal(read_clip(elsewhere.path), read_clip(cut.path))
    assert not list((tmp_path / "a").glob("*.part*"))


def test_cross_validation_scores_a_held_out_voices_cuts_and_never_trains_on_them() -> None:
    # Random features and labels: only memorising a held-out clip's copy could score well.
    rng = np.random.default_rng(0)
    actors = np.repeat(np.arange(1, 4), 16)
    y = rng.integers(0, 8, len(actors))
    x = rng.normal(size=(len(actors), 64)).astype(np.float32)
    cut = perturbed_speaker(actors, 0)
    options = SpeechTrainOptions(steps=80, dropout=0.0, label_smoothing=0.0, folds=3)
    folds = cross_validate(
        np.concatenate([x, x]), np.concatenate([y, y]), np.concatenate([actors, cut]), options, 0
    )
    assert [f["n"] for f in folds] == [16, 16, 16]  # originals scored apart from the cuts
    assert np.mean([f["live_cut_ua"] for f in folds]) < 0.4
    assert "live_cut_ua" not in cross_validate(x, y, actors, options)[0]


async def test_a_cut_is_what_the_live_segmenter_stage_hands_over() -> None:
    """The training cut and the pipeline's Segmenter stage (20 ms chunks re-framed into windows,
    the VAD's state carried from turn to turn) cut the same turns to within a window."""
    from realtime_erc.config import VadConfig
    from realtime_erc.events import AudioChunk, SpeechSegment
    from realtime_erc.speech.segmenter import Segmenter
    from realtime_erc.speech.vad import WINDOW

    lines = ["Kids are talking by the door.", "I never said she stole my money.", "Good morning."]
    cutter = LiveCutter()
    turns = [espeak(line) for line in lines]
    # one room: every turn over the same floor, as in a session (the segmenter's noise floor
    # carries from turn to turn; a cut's starts afresh at its own)
    streams = [cutter.stream(t, np.random.default_rng(7)) for t in turns]
    cuts = [cutter.cut(t, np.random.default_rng(7)) for t in turns]
    audio = np.concatenate(streams)
    stage = Segmenter(VadConfig())
    await stage.start()
    chunk = SR // 50
    out = []
    for i in range(0, len(audio), chunk):
        out += [e async for e in stage.process(AudioChunk(audio[i : i + chunk], i / SR))]
    out += [e async for e in stage.flush()]
    segments = [e for e in out if isinstance(e, SpeechSegment)]
    assert len(segments) == len(cuts)
    offset = np.cumsum([0] + [len(x) for x in streams])
    for k, (segment, cut) in enumerate(zip(segments, cuts, strict=True)):
        # a cut is a slice of its turn's stream: find where it starts (the floor is noise)
        windows = np.lib.stride_tricks.sliding_window_view(streams[k], 64)
        (cut_at,) = np.flatnonzero((windows == cut[:64]).all(axis=1))
        live_at = round(segment.audio_start * SR) - offset[k]
        assert abs(live_at - cut_at) <= WINDOW  # the onsets agree within one VAD window
        assert abs((live_at + len(segment.samples)) - (cut_at + len(cut))) <= 2 * WINDOW
