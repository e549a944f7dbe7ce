"""Audio features: paralinguistic descriptors of one utterance.

Two backends, chosen by ``features.audio.backend``:

- ``egemaps``: openSMILE eGeMAPSv02 — the 88 functionals as the pooled vector and the 25
  low-level descriptors per 10 ms frame as the sequence ``[T, 25]``. Both come from ONE openSMILE
  run (``assets/opensmile_sinks.conf.inc``: the descriptors through an HTK file in memory, the
  functionals through one callback), not two. openSMILE's licence is research/non-commercial.
- ``librosa``: a permissive path — per 10 ms frame (25 ms window) 20 MFCCs, log-RMS energy (dB),
  spectral centroid and 85 % roll-off (kHz), spectral flatness and zero-crossing rate: the
  sequence ``[T, 25]``; pooled ``[75]`` = per-feature mean, standard deviation and the standard
  deviation of the frame-to-frame delta.

Utterances quieter than ``min_rms_dbfs`` or shorter than 100 ms are *absent* (silence).
(Per-speaker standardisation of voice features lives in the speech-emotion head, which needs it:
:class:`~realtime_erc.features.speech_emotion.SpeakerNormalizer`.)
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from realtime_erc.config import AudioOptions
from realtime_erc.events import SAMPLE_RATE, ModalityFeatures

log = logging.getLogger(__name__)

AUDIO_DIMS: dict[str, tuple[int, int]] = {"egemaps": (88, 25), "librosa": (75, 25)}
"""Backend → (pooled dim, per-frame dim)."""

HOP_S = 0.010
"""Frame step of the sequence (both backends)."""

MIN_SAMPLES = SAMPLE_RATE // 10
"""Shorter audio (100 ms) is treated as absent: descriptors would be undefined."""

LIBROSA_N_MFCC = 20

SINKS = Path(__file__).resolve().parent.parent / "assets" / "opensmile_sinks.conf.inc"
"""openSMILE output config: descriptors to an HTK file, functionals to a callback."""

_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the HTK file never touches disk


class AudioFeatures:
    """Extract ``ModalityFeatures`` (pooled ``[dim]``, sequence ``[T, seq_dim]``) from 16 kHz mono
    float32 samples. Thread-safe: every call uses its own openSMILE instance. ``options``: the
    ``[features.audio]`` section."""

    def __init__(self, options: AudioOptions | None = None) -> None:
        self.options = options or AudioOptions()
        if self.options.backend not in AUDIO_DIMS:
            raise ValueError(f"unknown audio backend {self.options.backend!r}")
        self.dim, self.seq_dim = AUDIO_DIMS[self.options.backend]
        self._smile_paths: tuple[str, dict] | None = None

    def load(self) -> None:
        """Import the backend (openSMILE resolves its config files once)."""
        if self.options.backend == "egemaps" and self._smile_paths is None:
            import opensmile
            from opensmile.core.config import config as smile_config

            smile = opensmile.Smile(
                feature_set=opensmile.FeatureSet.eGeMAPSv02,
                feature_level=opensmile.FeatureLevel.Functionals,
            )
            root = smile.default_config_root
            options = {
                "source": os.path.join(root, smile_config.EXTERNAL_INPUT_CONFIG),
                "sink": str(SINKS),
                "sampleRate": SAMPLE_RATE,
                "nBits": 16,
            }
            self._smile_paths = (smile.config_path, options)
        elif self.options.backend == "librosa":
            import librosa  # noqa: F401

    def extract(self, samples: np.ndarray) -> ModalityFeatures:
        """``samples``: ``[n]`` float32 at 16 kHz. Silence or < 100 ms → absent."""
        x = np.asarray(samples, np.float32).reshape(-1)
        if len(x) < MIN_SAMPLES or rms_dbfs(x) < self.options.min_rms_dbfs:
            return ModalityFeatures.absent(self.dim, self.seq_dim)
        self.load()
        if self.options.backend == "egemaps":
            pooled, seq = self._egemaps(x)
        else:
            pooled, seq = _librosa_features(x)
        pooled = np.nan_to_num(pooled, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        seq = np.nan_to_num(seq, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        if len(seq) == 0:
            seq = np.zeros((1, self.seq_dim), np.float32)
        return ModalityFeatures(pooled, seq, np.ones(len(seq), bool))

    def _egemaps(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from opensmile.core.lib import OpenSMILE

        assert self._smile_paths is not None
        config_path, options = self._smile_paths
        func: list[np.ndarray] = []
        with tempfile.NamedTemporaryFile(suffix=".htk", dir=_SCRATCH) as lld_file:
            smile = OpenSMILE()
            smile.initialize(
                config_file=config_path,
                options={**options, "lldHtkOutput": lld_file.name},
                loglevel=0,
                debug=False,
            )
            try:
                smile.external_sink_set_callback("extsinkfunc", lambda d: func.append(d.copy()))
                # int16 as opensmile.Smile converts it (scale by 32768, truncate), clipped
                pcm = (np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)
                smile.external_audio_source_write_data("extsource", pcm.tobytes())
                smile.external_audio_source_set_eoi("extsource")
                smile.run()
            finally:
                smile.free()
            seq = read_htk(Path(lld_file.name).read_bytes())
        if not func:
            return np.zeros(88, np.float32), np.zeros((1, 25), np.float32)
        if len(seq) == 0:
            seq = np.zeros((1, 25), np.float32)
        return np.asarray(func[-1], np.float32).reshape(-1), seq


def read_htk(data: bytes) -> np.ndarray:
    """Frames ``[T, D]`` float32 of an HTK feature file (big-endian: a 12-byte header — frames,
    period, bytes per frame, kind — then the frames)."""
    if len(data) < 12:
        return np.zeros((0, 0), np.float32)
    frames, _, frame_bytes, _ = np.frombuffer(data[:12], ">i4,>i4,>i2,>i2")[0]
    values = np.frombuffer(data, ">f4", count=frames * (frame_bytes // 4), offset=12)
    return values.reshape(frames, frame_bytes // 4).astype(np.float32)


def rms_dbfs(x: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def _librosa_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[T, 25]`` and pooled ``[75]`` (see the module docstring)."""
    import librosa

    hop, win, n_fft = int(HOP_S * SAMPLE_RATE), 400, 512
    power = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, center=True)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=SAMPLE_RATE, n_mels=40, fmax=8000)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=LIBROSA_N_MFCC)
    rms = librosa.feature.rms(S=np.sqrt(power), frame_length=n_fft)
    log_rms = 20.0 * np.log10(np.maximum(rms, 1e-5))
    centroid = librosa.feature.spectral_centroid(S=np.sqrt(power), sr=SAMPLE_RATE) / 1000.0
    rolloff = librosa.feature.spectral_rolloff(S=np.sqrt(power), sr=SAMPLE_RATE) / 1000.0
    flatness = librosa.feature.spectral_flatness(S=np.sqrt(power))
    zcr = librosa.feature.zero_crossing_rate(x, frame_length=win, hop_length=hop)
    n = min(m.shape[1] for m in (mfcc, log_rms, centroid, rolloff, flatness, zcr))
    frames = np.concatenate(
        [m[:, :n] for m in (mfcc, log_rms, centroid, rolloff, flatness, zcr)], axis=0
    ).T  # [T, 25]
    delta = np.diff(frames, axis=0) if n > 1 else np.zeros_like(frames)
    pooled = np.concatenate([frames.mean(0), frames.std(0), delta.std(0)])
    return pooled.astype(np.float32), frames.astype(np.float32)
