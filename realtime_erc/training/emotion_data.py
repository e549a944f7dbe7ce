"""Readers for the RAVDESS and FER2013 bundles of the training-data directory.

The data are research datasets used for training and evaluation only; they are read from a
configurable directory (``--data PATH``, then ``$REALTIME_ERC_DATA``, then the config key
``data.dir``, default ``../shared/data`` relative to the repository root) and never copied into
the repository.

Layouts accepted (the same as the bundles, so other speakers and images can be scored too):

- RAVDESS: a directory with ``index.csv`` (column ``path`` relative to it, ``actor``,
  ``emotion_id``), or ``Actor_XX/*.flac|*.wav`` files named with the RAVDESS code
  ``MM-VV-EE-II-SS-RR-AA``; or a single such audio file. A data root holding ``ravdess/`` works too.
- FER2013: an ``.npz`` with ``images [N, 48, 48] uint8``, ``labels [N]`` and optionally ``usage``
  (``Training`` / ``PublicTest``); or a directory holding one (``fer2013/`` is looked into).
"""

from __future__ import annotations

import csv
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_erc.errors import UserError
from realtime_erc.events import SAMPLE_RATE

DATA_ENV = "REALTIME_ERC_DATA"
"""Environment variable naming the training-data directory."""

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

AUDIO_SUFFIXES = (".flac", ".wav")


class DataError(UserError, ValueError):
    """Training/evaluation data are missing or malformed; the message names the path and fix."""


def resolve_data_dir(explicit: Path | str | None = None, configured: str | None = None) -> Path:
    """The data directory: ``explicit`` (``--data``), ``$REALTIME_ERC_DATA``, ``configured``
    (the ``data.dir`` config key), else ``../shared/data``; relative config paths are taken
    from the repository root."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    path = Path(configured or "../shared/data").expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


# ----------------------------------------------------------------------------- RAVDESS


@dataclass(frozen=True)
class SpeechClip:
    """One labelled speech clip: ``emotion`` is the 0-based RAVDESS class (code − 1)."""

    path: Path
    actor: int
    emotion: int


def ravdess_clips(path: Path | str) -> list[SpeechClip]:
    """All clips under ``path`` (see the module docstring for layouts), sorted by path.

    The byte-identical pair of the bundle (Actor_07 happy/normal/"Dogs" repetitions 1 and 2) is
    counted once: clips whose index row is flagged ``byte_identical_pair`` keep only the first.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path} does not exist: pass --data with a RAVDESS directory or file "
            f"(or set {DATA_ENV})"
        )
    if path.is_dir() and (path / "ravdess").is_dir():
        path = path / "ravdess"
    if path.is_file():
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            raise DataError(f"{path}: expected a .flac or .wav file named with the RAVDESS code")
        return [_clip_from_name(path)]
    index = path / "index.csv"
    if index.is_file():
        clips = _clips_from_index(path, index)
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        clips = [_clip_from_name(p) for p in files]
    if not clips:
        raise DataError(f"{path} holds no RAVDESS clips (index.csv or Actor_XX/*.flac|*.wav)")
    return sorted(clips, key=lambda c: str(c.path))


def _clips_from_index(root: Path, index: Path) -> list[SpeechClip]:
    clips: list[SpeechClip] = []
    seen_pair = False
    with index.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if "byte_identical_pair" in (row.get("flags") or ""):
                if seen_pair:
                    continue
                seen_pair = True
            try:
                clips.append(
                    SpeechClip(root / row["path"], int(row["actor"]), int(row["emotion_id"]) - 1)
                )
            except (KeyError, ValueError) as e:
                raise DataError(f"{index}: needs columns path, actor, emotion_id ({e})") from None
    return clips


def _clip_from_name(path: Path) -> SpeechClip:
    parts = path.stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() for p in parts):
        raise DataError(
            f"{path.name}: not named with the RAVDESS code MM-VV-EE-II-SS-RR-AA "
            "(e.g. 03-01-05-01-02-01-12.flac)"
        )
    return SpeechClip(path, int(parts[6]), int(parts[2]) - 1)


# ----------------------------------------------------------------------------- FER2013


@dataclass(frozen=True)
class FaceImages:
    """``images [N, 48, 48] uint8``, ``labels [N] int64``, ``usage [N] str`` (may be empty)."""

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    source: Path

    def split(self, usage: str) -> FaceImages:
        if not len(self.usage):
            raise DataError(f"{self.source} has no 'usage' array: cannot select {usage!r}")
        keep = self.usage == usage
        return FaceImages(self.images[keep], self.labels[keep], self.usage[keep], self.source)


def fer_file(path: Path | str) -> Path:
    """The FER2013-layout ``.npz`` at or under ``path``."""
    path = Path(path)
    if path.is_dir():
        sub = path / "fer2013" if (path / "fer2013").is_dir() else path
        found = sorted(sub.glob("*.npz"))
        if not found:
            raise DataError(f"{path} holds no FER2013 .npz file: pass --data with the .npz")
        path = found[0]
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: pass --data with a FER2013-layout .npz or its directory "
            f"(or set {DATA_ENV})"
        )
    return path


def load_fer(path: Path | str) -> FaceImages:
    """Read a FER2013-layout ``.npz`` (see the module docstring)."""
    file = fer_file(path)
    try:
        with np.load(file, allow_pickle=False) as d:
            images, labels = d["images"], d["labels"].astype(np.int64)
            usage = d["usage"] if "usage" in d.files else np.array([], dtype=str)
    except (KeyError, ValueError, OSError) as e:
        raise DataError(
            f"{file}: not a FER2013-layout npz (images, labels[, usage]): {e}"
        ) from None
    if images.ndim != 3 or images.shape[1:] != (48, 48) or len(labels) != len(images):
        raise DataError(f"{file}: images must be [N, 48, 48] with one label each")
    return FaceImages(images.astype(np.uint8), labels, usage, file)


def clean_fer_training(train: FaceImages, test: FaceImages) -> tuple[FaceImages, dict[str, int]]:
    """Drop all-black images, images pixel-identical to a test image, and duplicate copies
    within ``train`` (the first copy is kept). Returns the cleaned set and the counts dropped."""
    flat = train.images.reshape(len(train.images), -1)
    black = flat.max(axis=1) == 0
    test_keys = {img.tobytes() for img in test.images}
    in_test = np.array([img.tobytes() in test_keys for img in train.images], dtype=bool)
    seen: set[bytes] = set()
    duplicate = np.zeros(len(flat), dtype=bool)
    for i, img in enumerate(train.images):
        key = img.tobytes()
        duplicate[i] = key in seen
        seen.add(key)
    keep = ~(black | in_test | duplicate)
    counts = {
        "all_black": int(black.sum()),
        "identical_to_test": int((in_test & ~black).sum()),
        "duplicate_copies": int((duplicate & ~in_test & ~black).sum()),
        "kept": int(keep.sum()),
    }
    cleaned = FaceImages(train.images[keep], train.labels[keep], train.usage[keep], train.source)
    return cleaned, counts


def read_clip(path: Path) -> np.ndarray:
    """A clip as float32 mono 16 kHz (other rates are resampled with soxr)."""
    import soundfile as sf

    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read audio ({e})") from None
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    return audio


def write_clip(path: Path, audio: np.ndarray) -> None:
    """Write a 16 kHz clip that :func:`read_clip` reads, aside and then renamed into place:
    another process filling the same cache never reads half of it."""
    import soundfile as sf

    part = path.with_suffix(f".{uuid.uuid4().hex}.part{path.suffix}")
    sf.write(part, np.asarray(audio, np.float32), SAMPLE_RATE)
    part.replace(path)


def clip_digest(path: Path, *recipe: object) -> str:
    """SHA-1 (hex) naming what is derived from the clip file at ``path`` (its path, size and
    modification time) by ``recipe``: a cache key that changes when the clip does."""
    stat = path.stat()
    key = "|".join(
        [str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), *map(str, recipe)]
    )
    return hashlib.sha1(key.encode()).hexdigest()
