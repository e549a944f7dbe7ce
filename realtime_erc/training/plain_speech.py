"""Plain-prosody speech for the speech head: many different words, no emotion in the voice.

RAVDESS gives the speech head two sentences, so it never learned that new words are not a new
emotion: on espeak-ng lines of MELD dialogues (the dev sessions' ``words`` condition, the demo)
it heard emotions the voice does not carry, and the fusion believed it (issue 19). These clips
are MELD *train* lines voiced by espeak-ng with one plain prosody per voice, labelled neutral;
each voice is a speaker of its own, so standardising per speaker leaves only what the words
change. The voices are disjoint from the dev sessions' and the demo's, which stay unheard.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from realtime_erc.features.assets import cache_root
from realtime_erc.training.emotion_data import DataError, SpeechClip, write_clip

PLAIN_VOICES: tuple[tuple[str, int], ...] = (
    ("en-us+Adam", 40),
    ("en-gb+Annie", 62),
    ("en-gb-x-gbclan+Michael", 38),
    ("en-029+Alicia", 60),
    ("en-us-nyc+Steph", 64),
    ("en-gb-scotland+Rob", 42),
    ("en-gb-x-rp+Belinda", 66),
    ("en-us+David", 44),
    ("en-gb+Andy", 45),
    ("en-gb-x-gbcwmd+Linda", 58),
    ("en-029+Paul", 48),
    ("en-us+anika", 56),
    ("en-gb+Mike", 35),
    ("en-us-nyc+Andrea", 60),
    ("en-gb-scotland+John", 38),
    ("en-us+Annie", 68),
)
"""espeak-ng voice (accent + named variant) and base pitch; none is a dev-session or demo voice."""

SPEAKER_ID_BASE = 1000
"""Plain voice ``k`` is speaker ``SPEAKER_ID_BASE + k`` (RAVDESS actors are 1–24)."""

WORDS_PER_MINUTE = (140, 170)
AMPLITUDE = 55
MIN_WORDS, MAX_WORDS = 4, 20
NEUTRAL = 0  # RAVDESS class index


def plain_speech_clips(
    data_dir: Path, voices: int, per_voice: int, seed: int = 0, out_dir: Path | None = None
) -> list[SpeechClip]:
    """``per_voice`` neutral clips for each of the first ``voices`` :data:`PLAIN_VOICES`.

    Lines are drawn (seeded, without repeats) from MELD's train split; each voice keeps one
    speaking rate. Clips are written once as FLAC under the cache, named by what they hold.
    """
    from realtime_erc.training.datasets import load_text_corpus
    from realtime_erc.training.dev_sessions import espeak

    if not 0 < voices <= len(PLAIN_VOICES):
        raise ValueError(f"voices must be 1..{len(PLAIN_VOICES)}, not {voices}")
    if shutil.which("espeak-ng") is None:
        raise DataError(
            "the speech head's plain voices are made with espeak-ng, which is not installed: "
            "run `make setup` (or `apt-get install espeak-ng`)"
        )
    out_dir = out_dir or cache_root() / "plain-speech"
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_text_corpus("meld", data_dir)
    texts = {t for d in corpus.split("train") for t in d.texts}
    lines = sorted(t for t in texts if MIN_WORDS <= len(t.split()) <= MAX_WORDS)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(lines), size=voices * per_voice, replace=False)
    speeds = rng.integers(WORDS_PER_MINUTE[0], WORDS_PER_MINUTE[1] + 1, size=voices)
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (voice, pitch) in enumerate(PLAIN_VOICES[:voices]):
            for j in range(per_voice):
                text = lines[picks[k * per_voice + j]]
                recipe = f"{voice}|{pitch}|{speeds[k]}|{AMPLITUDE}|{text}"
                path = out_dir / f"{hashlib.sha1(recipe.encode()).hexdigest()[:16]}.flac"
                if not path.is_file():
                    wav = Path(tmp) / "line.wav"
                    audio = espeak(text, voice, int(speeds[k]), pitch, AMPLITUDE, wav)
                    if not len(audio):
                        continue
                    write_clip(path, audio)
                clips.append(SpeechClip(path, SPEAKER_ID_BASE + k, NEUTRAL))
    return clips
