"""Real test inputs for the feature extractors and speaker attribution, made at test time.

Speech comes from espeak-ng (a Debian package of the project); RAVDESS clips and FER2013 faces
are read from the data directory (``REALTIME_ERC_DATA`` or ``data.dir``) and never stored: tests
that need them skip with the reason when it is absent.
Use with ``from feature_media import ...``.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime_erc.config import Config

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (Debian package) makes the test speech"
)


def data_dir() -> Path:
    return Config().data.resolve()


ASSEMBLED_INPUTS = (
    "erc_text/meld.pkl",
    "ravdess/index.csv",
    "fer2013/fer2013_train_publictest.npz",
)
"""What the assembled corpus is built from, under the data directory."""
ASSEMBLED_MISSING = f"MELD/RAVDESS/FER2013 not found under {data_dir()} (set REALTIME_ERC_DATA)"
needs_assembled_data = pytest.mark.skipif(
    not all((data_dir() / p).exists() for p in ASSEMBLED_INPUTS), reason=ASSEMBLED_MISSING
)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"{path} is absent: point REALTIME_ERC_DATA (or data.dir) at the shared datasets"
        )
    return path


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng (Debian package) makes the test speech")


def espeak(text: str, voice: str = "en-us+f3", pitch: int = 55, speed: int = 160) -> np.ndarray:
    """``text`` voiced by espeak-ng: ``[n]`` float32 at 16 kHz (skips the test without it)."""
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        require_espeak()
        wav = Path(tmp) / "s.wav"
        cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(wav), text]
        subprocess.run(cmd, check=True)
        x, rate = sf.read(str(wav), dtype="float32")
    return soxr.resample(x, rate, 16000).astype(np.float32)


def ravdess_clips(actor: int, n: int = 3) -> list[np.ndarray]:
    """The first ``n`` clips (by file name) of one RAVDESS actor: ``[n]`` float32 at 16 kHz."""
    import soundfile as sf

    root = _need(data_dir() / "ravdess")
    with (_need(root / "index.csv")).open() as f:
        rows = sorted(
            (r for r in csv.DictReader(f) if int(r["actor"]) == actor), key=lambda r: r["path"]
        )
    return [sf.read(str(root / r["path"]), dtype="float32")[0] for r in rows[:n]]


@cache
def _fer() -> tuple[np.ndarray, np.ndarray]:
    path = _need(data_dir() / "fer2013" / "fer2013_train_publictest.npz")
    with np.load(path) as d:
        return np.asarray(d["images"][:400]), np.asarray(d["labels"][:400])


def fer_faces(indices: list[int]) -> list[np.ndarray]:
    """FER2013 ``[48, 48]`` uint8 faces (Training rows ``indices``, all < 400)."""
    images, _ = _fer()
    return [images[i] for i in indices]


def place(canvas: np.ndarray, face: np.ndarray, x: int, y: int, side: int) -> None:
    """Draw a grayscale face, upscaled to ``side`` pixels, into a BGR canvas at (x, y)."""
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    canvas[y : y + side, x : x + side] = big[..., None]


def face_frame(face: np.ndarray | None, size=(240, 320), side: int = 120) -> np.ndarray:
    """A video frame ``[H, W, 3]`` with ``face`` in the middle of a grey canvas."""
    h, w = size
    canvas = np.full((h, w, 3), 110, np.uint8)
    if face is not None:
        place(canvas, face, (w - side) // 2, (h - side) // 2, side)
    return canvas
