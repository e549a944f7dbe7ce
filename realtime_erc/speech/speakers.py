"""Speaker attribution: who spoke each utterance.

Each utterance's voice is embedded by resemblyzer's VoiceEncoder (``pretrained.pt`` from the
package, 256-d, L2-normalised, CPU) and clustered online: the cosine distance to every known
speaker's running centroid is computed; the nearest speaker takes the utterance unless every
distance exceeds ``threshold``, in which case a new speaker opens (``S1``, ``S2``, ...), up to
``max_speakers`` (then the nearest one takes it). Named speakers can be enrolled beforehand from a
few seconds of reference audio each; they are matched like any other speaker. Utterances with
less than ``min_speech_s`` of voiced audio stay unattributed (None).
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realtime_erc.events import SAMPLE_RATE
from realtime_erc.features.assets import resemblyzer_weights_path

log = logging.getLogger(__name__)

EMBEDDING_DIM = 256


class SpeakerError(ValueError):
    """An enrolment file is missing or unusable; the message names it and the fix."""


@dataclass
class SpeakerOptions:
    threshold: float = 0.3
    """Cosine distance (1 - cosine similarity) above which a voice is a new speaker."""
    max_speakers: int = 8
    min_speech_s: float = 0.3
    enrol: dict[str, str] = field(default_factory=dict)
    """Speaker name → reference audio file (any format soundfile reads, any rate)."""

    @classmethod
    def from_config(cls, config) -> SpeakerOptions:  # config: SpeakersConfig
        return cls(
            threshold=config.threshold,
            max_speakers=config.max_speakers,
            min_speech_s=config.min_speech_s,
            enrol=dict(config.enrol),
        )


@dataclass
class Speaker:
    """A known speaker: its running centroid ``[256]`` (unnormalised mean) and count."""

    name: str
    total: np.ndarray
    count: int
    enrolled: bool = False

    @property
    def centroid(self) -> np.ndarray:
        c = self.total / max(self.count, 1)
        return c / max(float(np.linalg.norm(c)), 1e-9)


@dataclass(frozen=True)
class Attribution:
    """The outcome for one utterance. ``distance``: to the chosen speaker (before updating)."""

    speaker: str | None
    distance: float | None
    new: bool


class SpeakerTracker:
    """Voice embeddings + online clustering. Thread-safe (one lock around the model and state)."""

    def __init__(self, options: SpeakerOptions | None = None) -> None:
        self.options = options or SpeakerOptions()
        self.speakers: list[Speaker] = []
        self._encoder = None
        self._lock = threading.Lock()
        self._next_id = 1

    def load(self) -> None:
        """Load the encoder and enrol the configured speakers."""
        with self._lock:
            if self._encoder is None:
                with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy path
                    warnings.simplefilter("ignore", DeprecationWarning)
                    from resemblyzer import VoiceEncoder

                self._encoder = VoiceEncoder(
                    device="cpu", verbose=False, weights_fpath=resemblyzer_weights_path()
                )
        for name, path in self.options.enrol.items():
            if not any(s.name == name for s in self.speakers):
                self.enrol(name, read_audio(Path(path)))

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        """``[256]`` L2-normalised voice embedding of 16 kHz mono audio; None when it holds less
        than ``min_speech_s`` of voiced audio (resemblyzer trims silences with webrtcvad)."""
        from resemblyzer import preprocess_wav

        if self._encoder is None:
            self.load()
        x = np.asarray(samples, np.float32).reshape(-1)
        if len(x) < int(self.options.min_speech_s * SAMPLE_RATE) or not np.any(x):
            return None
        wav = preprocess_wav(x, source_sr=SAMPLE_RATE)
        if len(wav) < max(int(self.options.min_speech_s * SAMPLE_RATE), 1):
            return None
        with self._lock:
            emb = self._encoder.embed_utterance(wav)  # type: ignore[union-attr]
        return np.asarray(emb, np.float32)

    def warm_up(self) -> None:
        """Run the preprocessing and the encoder once on noise: their first call pays for lazy
        imports and allocations (seconds), which would otherwise land on the first utterance."""
        from resemblyzer import preprocess_wav

        if self._encoder is None:
            self.load()
        noise = np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE).astype(np.float32)
        preprocess_wav(0.1 * noise, source_sr=SAMPLE_RATE)
        with self._lock:
            self._encoder.embed_utterance(0.1 * noise)  # type: ignore[union-attr]

    def enrol(self, name: str, samples: np.ndarray) -> None:
        """Add (or extend) a named speaker from reference audio ``[n]`` at 16 kHz."""
        emb = self.embed(samples)
        if emb is None:
            raise SpeakerError(
                f"enrolment audio for {name!r} holds too little speech: give a few seconds "
                "of that person talking (speakers.enrol)"
            )
        with self._lock:
            for s in self.speakers:
                if s.name == name:
                    s.total = s.total + emb
                    s.count += 1
                    return
            self.speakers.append(Speaker(name, emb.astype(np.float64), 1, enrolled=True))

    def assign(self, samples: np.ndarray) -> Attribution:
        """Attribute one utterance's audio ``[n]`` (16 kHz) and update that speaker's centroid."""
        emb = self.embed(samples)
        if emb is None:
            return Attribution(None, None, False)
        return self.assign_embedding(emb)

    def assign_embedding(self, emb: np.ndarray) -> Attribution:
        """The clustering step on a ready ``[256]`` embedding."""
        with self._lock:
            dists = [1.0 - float(emb @ s.centroid) for s in self.speakers]
            nearest = int(np.argmin(dists)) if dists else -1
            full = len(self.speakers) >= self.options.max_speakers
            if nearest < 0 or (dists[nearest] > self.options.threshold and not full):
                name = self._new_name()
                self.speakers.append(Speaker(name, emb.astype(np.float64), 1))
                return Attribution(name, None, True)
            speaker = self.speakers[nearest]
            speaker.total = speaker.total + emb
            speaker.count += 1
            return Attribution(speaker.name, dists[nearest], False)

    def _new_name(self) -> str:
        taken = {s.name for s in self.speakers}
        while f"S{self._next_id}" in taken:
            self._next_id += 1
        name = f"S{self._next_id}"
        self._next_id += 1
        return name


def read_audio(path: Path) -> np.ndarray:
    """A sound file as ``[n]`` float32 mono at 16 kHz (any rate and channel count)."""
    import soundfile as sf
    import soxr

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
        raise SpeakerError(
            f"cannot read enrolment audio {path}: {e}; give a WAV/FLAC file (speakers.enrol)"
        ) from None
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    return mono
