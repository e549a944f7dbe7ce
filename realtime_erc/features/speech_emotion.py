"""Speech-emotion head: Whisper-encoder statistics, per-speaker standardisation, a small MLP.

Features (:class:`SpeechFeatureExtractor`): the utterance is trimmed to its voiced span and set
to a fixed loudness; the packaged Whisper encoder (CTranslate2, ``tiny.en`` by default) runs on a
window fitted to it, and its output frames are pooled (mean and standard deviation) next to the
mean and standard deviation of the 80 log-mel bands and, when ``egemaps`` is set (the packaged
head), openSMILE's 88 eGeMAPS functionals of the same audio (+2 points of cross-validated UA;
openSMILE's licence is research/non-commercial, so the permissive audio path loads
:data:`PERMISSIVE_CHECKPOINT`, which reads Whisper and the log-mel bands only). Mean-pooled
Whisper encoder states carry a lot of paralinguistic information, and RAVDESS-style acted
emotion is largely speaker-relative, so every feature is standardised per speaker
(:class:`SpeakerNormalizer`: running Welford statistics per attributed speaker, shrunk towards
the training population while a speaker has few utterances). The classifier
(:class:`SpeechEmotionNet`) is a one-hidden-layer MLP whose hidden activations are the head's
embedding.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from realtime_erc.config import AudioOptions
from realtime_erc.errors import UserError

log = logging.getLogger(__name__)

RAVDESS_LABELS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)
"""RAVDESS emotion order (class index = RAVDESS emotion code − 1); checkpoints store a copy."""

SAMPLE_RATE = 16000
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "speech_emotion.pt"
PERMISSIVE_CHECKPOINT = DEFAULT_CHECKPOINT.with_name("speech_emotion_whisper.pt")
"""The head without openSMILE's features, for ``features.audio.backend = "librosa"``."""


class SpeechEmotionError(UserError, ValueError):
    """A speech-emotion checkpoint or input is unusable; the message says what to do."""


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class SpeechFeatureOptions:
    """How an utterance becomes a feature vector (stored in checkpoints)."""

    whisper: str = "tiny.en"
    trim_db: float = 35.0  # voiced span: frames within this many dB of the loudest
    target_rms_db: float = -23.0
    mel_stats: bool = True
    egemaps: bool = True
    """Append openSMILE eGeMAPSv02's 88 functionals (checkpoints written before it read False)."""
    layers: tuple[int, ...] = (1, 2)
    """The encoder states pooled, by :class:`~.whisper_encoder.WhisperEncoder`'s index (0:
    after the convolutions, i: after block i, L + 1: the final LayerNorm), run in PyTorch;
    ``()``: the last only, from CTranslate2 in int8 (checkpoints written before it read this).
    The first two blocks hear emotion best (docs/SESSIONS.md, "Seventh pass")."""
    threads: int = 1


def trim_and_level(samples: np.ndarray, trim_db: float, target_rms_db: float) -> np.ndarray:
    """Voiced span of ``samples [n]`` (16 kHz) set to ``target_rms_db`` dBFS RMS.

    The span runs from the first to the last 20 ms frame within ``trim_db`` of the loudest,
    plus 100 ms either side; a silent input comes back unchanged (all zeros).
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    hop = SAMPLE_RATE // 50
    n = len(x) // hop
    if n == 0 or not np.any(x):
        return x
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    voiced = np.flatnonzero(db > db.max() - trim_db)
    pad = SAMPLE_RATE // 10
    x = x[max(0, voiced[0] * hop - pad) : min(len(x), (voiced[-1] + 1) * hop + pad)]
    level = np.sqrt(np.mean(x**2)) + 1e-9
    return (x * (10 ** (target_rms_db / 20) / level)).astype(np.float32)


class SpeechFeatureExtractor:
    """``features(samples [n] float32 16 kHz) -> [dim]``: Whisper-encoder + log-mel statistics.

    ``dim`` = 2 × encoder width (384 for tiny.en → 768) per pooled layer (one when ``layers``
    is empty) + 160 log-mel statistics + 88 eGeMAPS functionals, each part when enabled.
    """

    MIN_FRAMES = 100  # 1 s: the shortest window the encoder is run on
    MAX_FRAMES = 3000  # Whisper's 30 s window

    def __init__(self, options: SpeechFeatureOptions = SpeechFeatureOptions()) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.feature_extractor import FeatureExtractor

        from realtime_erc.features.assets import whisper_model_dir

        self.options = options
        self.model = None
        self.encoder = None
        if options.layers:
            from realtime_erc.features.whisper_encoder import WhisperEncoder

            # only the encoder's weights: CTranslate2's model would also load the decoder
            self.encoder = WhisperEncoder.from_ctranslate2(whisper_model_dir(options.whisper))
            if max(options.layers) > len(self.encoder.blocks) + 1:
                raise SpeechEmotionError(
                    f"Whisper {options.whisper} has encoder states 0–"
                    f"{len(self.encoder.blocks) + 1}, not {max(options.layers)}: pick layers "
                    "among those"
                )
            self.mel = FeatureExtractor(feature_size=self.encoder.conv1.in_channels)
        else:
            self.model = WhisperModel(
                str(whisper_model_dir(options.whisper)),  # type: ignore[arg-type]
                device="cpu",
                compute_type="int8",
                cpu_threads=options.threads,
            )
            self.mel = self.model.feature_extractor
        self.egemaps = None
        if options.egemaps:
            from realtime_erc.features.audio import AudioFeatures

            # levelled to -23 dBFS, only a silent input falls below the silence floor (zeros)
            self.egemaps = AudioFeatures(AudioOptions(backend="egemaps"))
            self.egemaps.load()

    def features(self, samples: np.ndarray) -> np.ndarray:
        import ctranslate2

        audio = trim_and_level(samples, self.options.trim_db, self.options.target_rms_db)
        if len(audio) < SAMPLE_RATE // 10:
            audio = np.pad(audio, (0, SAMPLE_RATE // 10 - len(audio)))
        mel = self.mel(audio, chunk_length=None)[:, :-1]  # [mels, frames]
        used = min(mel.shape[1], self.MAX_FRAMES)
        frames = min(max(-(-used // 100) * 100, self.MIN_FRAMES), self.MAX_FRAMES)
        window = np.zeros((mel.shape[0], frames), dtype=np.float32)
        window[:, :used] = mel[:, :used]
        n = max(1, -(-used // 2))  # the states of the voiced frames, not of the padding
        if self.model is not None:
            view = ctranslate2.StorageView.from_array(np.ascontiguousarray(window[None]))
            encoded = np.asarray(self.model.model.encode(view, to_cpu=True))[0]  # [frames/2, d]
            pooled = [encoded[:n]]
        else:
            with torch.inference_mode():
                hidden = self.encoder(torch.from_numpy(window[None]), max(self.options.layers))
            pooled = [hidden[k][0, :n].numpy() for k in self.options.layers]
        parts = [stat for states in pooled for stat in (states.mean(0), states.std(0))]
        if self.options.mel_stats:
            parts += [mel[:, :used].mean(1), mel[:, :used].std(1)]
        if self.egemaps is not None:
            parts.append(self.egemaps.extract(audio).pooled)
        return np.concatenate(parts).astype(np.float32)


# ----------------------------------------------------------------------------- normalisation


@dataclass
class _Running:
    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None


class SpeakerNormalizer:
    """Per-speaker standardisation with online (Welford) statistics.

    ``prior_mean``/``prior_std`` (``[D]``) are the training population's statistics of the
    per-speaker means and standard deviations; a speaker's running mean and variance are shrunk
    towards them with weight ``prior_count`` (so the first utterances of a new speaker are
    normalised sensibly and the estimate becomes the speaker's own as utterances accumulate).
    """

    def __init__(
        self, prior_mean: np.ndarray, prior_std: np.ndarray, prior_count: float = 8.0
    ) -> None:
        self.prior_mean = np.asarray(prior_mean, dtype=np.float64)
        self.prior_var = np.asarray(prior_std, dtype=np.float64) ** 2
        self.prior_count = prior_count
        self._speakers: dict[str, _Running] = {}

    def update(self, speaker: str, x: np.ndarray) -> None:
        """Add one utterance's features ``[D]`` to ``speaker``'s running statistics."""
        s = self._speakers.setdefault(speaker, _Running())
        x = np.asarray(x, dtype=np.float64)
        if s.mean is None or s.m2 is None:
            s.n, s.mean, s.m2 = 1, x.copy(), np.zeros_like(x)
            return
        s.n += 1
        delta = x - s.mean
        s.mean += delta / s.n
        s.m2 += delta * (x - s.mean)

    def stats(self, speaker: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` ``[D]`` for ``speaker``, shrunk towards the prior."""
        s = self._speakers.get(speaker)
        k = self.prior_count
        if s is None or s.mean is None or s.m2 is None:
            return self.prior_mean, np.sqrt(self.prior_var)
        mean = (s.n * s.mean + k * self.prior_mean) / (s.n + k)
        var = (s.m2 + k * self.prior_var) / (s.n + k)
        return mean, np.sqrt(np.maximum(var, 1e-12))

    def normalize(self, speaker: str, x: np.ndarray, update: bool = True) -> np.ndarray:
        """Standardise ``x [D]`` with ``speaker``'s statistics (after adding it, if ``update``)."""
        if update:
            self.update(speaker, x)
        mean, std = self.stats(speaker)
        return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)

    def speakers(self) -> list[str]:
        return list(self._speakers)


def standardize_by_group(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Offline per-speaker standardisation of ``x [N, D]`` by ``groups [N]`` (training/eval)."""
    out = np.empty_like(x, dtype=np.float32)
    for g in np.unique(groups):
        rows = groups == g
        mean, std = x[rows].mean(0), x[rows].std(0)
        out[rows] = (x[rows] - mean) / np.maximum(std, 1e-6)
    return out


# ----------------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class SpeechNetOptions:
    """Architecture of :class:`SpeechEmotionNet` (stored in checkpoints)."""

    input_dim: int = 2 * 768 + 160 + 88
    hidden: int = 64
    dropout: float = 0.5
    labels: tuple[str, ...] = field(default=RAVDESS_LABELS)


class SpeechEmotionNet(nn.Module):
    """``forward(x [B, input_dim]) -> logits [B, n_labels]``; ``embed`` → ``[B, hidden]``."""

    def __init__(self, options: SpeechNetOptions = SpeechNetOptions()) -> None:
        super().__init__()
        self.options = options
        self.hidden = nn.Sequential(
            nn.Dropout(options.dropout / 2), nn.Linear(options.input_dim, options.hidden), nn.GELU()
        )
        self.out = nn.Sequential(
            nn.Dropout(options.dropout), nn.Linear(options.hidden, len(options.labels))
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


class SpeechEmotionHead:
    """A trained speech-emotion checkpoint, ready for live use (CPU).

    ``predict(samples, speaker) -> [8]`` probabilities over :attr:`labels`; ``embed(samples,
    speaker) -> [hidden]``. Each call updates the speaker's running statistics once per
    utterance (pass ``update=False`` to score without learning, e.g. the same clip twice).
    """

    def __init__(
        self,
        net: SpeechEmotionNet,
        feature_options: SpeechFeatureOptions,
        prior_mean: np.ndarray,
        prior_std: np.ndarray,
        info: dict[str, Any] | None = None,
        prior_count: float = 8.0,
    ) -> None:
        self.net = net.eval()
        self.feature_options = feature_options
        self.normalizer = SpeakerNormalizer(prior_mean, prior_std, prior_count)
        self._prior = (prior_mean, prior_std, prior_count)
        self.info = info or {}
        self.labels = net.options.labels
        self._extractor: SpeechFeatureExtractor | None = None

    @classmethod
    def load(cls, path: Path | str | None = None) -> SpeechEmotionHead:
        """Load a checkpoint written by the speech trainer (default: the packaged one)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise SpeechEmotionError(
                f"speech-emotion checkpoint {path} does not exist: train one with "
                "`realtime-erc train-extractor speech` or pass --checkpoint"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            net = SpeechEmotionNet(SpeechNetOptions(**_tuples(state["net_options"])))
            net.load_state_dict(state["model"])
            features = SpeechFeatureOptions(
                **{"egemaps": False, "layers": (), **_tuples(state["feature_options"])}
            )
            prior_mean, prior_std = state["prior_mean"], state["prior_std"]
        except (KeyError, TypeError, RuntimeError, EOFError) as e:
            raise SpeechEmotionError(
                f"{path} is not a speech-emotion checkpoint ({e}); retrain it with "
                "`realtime-erc train-extractor speech`"
            ) from None
        return cls(
            net, features, np.asarray(prior_mean), np.asarray(prior_std), state.get("info", {})
        )

    @property
    def extractor(self) -> SpeechFeatureExtractor:
        if self._extractor is None:
            self._extractor = SpeechFeatureExtractor(self.feature_options)
        return self._extractor

    @property
    def embed_dim(self) -> int:
        return self.net.options.hidden

    def features(self, samples: np.ndarray, speaker: str, update: bool = True) -> np.ndarray:
        """Speaker-standardised features ``[input_dim]`` of one utterance."""
        return self.normalized(self.extractor.features(samples), speaker, update)

    def normalized(self, raw: np.ndarray, speaker: str, update: bool = True) -> np.ndarray:
        """Raw features ``[input_dim]`` (:meth:`SpeechFeatureExtractor.features`) standardised
        with ``speaker``'s running statistics (after adding them, if ``update``)."""
        if raw.shape != (self.net.options.input_dim,):
            raise SpeechEmotionError(
                f"features of shape {raw.shape} do not fit the checkpoint's input "
                f"({self.net.options.input_dim}); retrain with the same feature options"
            )
        return self.normalizer.normalize(speaker, raw, update=update)

    def for_session(self) -> SpeechEmotionHead:
        """A view for one more conversation: the same network and feature extractor (one copy
        in memory), its own per-speaker statistics."""
        _ = self.extractor  # built once, here, so that every view shares it
        view = copy.copy(self)
        view.normalizer = SpeakerNormalizer(*self._prior)
        return view

    def predict_raw(self, raw: np.ndarray, speaker: str = "", update: bool = True) -> np.ndarray:
        """Probabilities ``[n_labels]`` from raw features (several heads with the same
        :attr:`feature_options` can share one extraction)."""
        return self.predict_normalized(self.normalized(raw, speaker, update)[None])[0]

    def save(self, path: Path | str) -> Path:
        """Write the head as a checkpoint :meth:`load` reads (the speech trainer's format)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "net_options": asdict(self.net.options),
                "feature_options": feature_options_dict(self.feature_options),
                "model": self.net.state_dict(),
                "prior_mean": self.normalizer.prior_mean.astype(np.float32),
                "prior_std": np.sqrt(self.normalizer.prior_var).astype(np.float32),
                "info": self.info,
            },
            path,
        )
        return path

    @torch.inference_mode()
    def predict_normalized(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``[B, n_labels]`` for standardised features ``[B, input_dim]``."""
        logits = self.net(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, samples: np.ndarray, speaker: str = "", update: bool = True) -> np.ndarray:
        return self.predict_normalized(self.features(samples, speaker, update)[None])[0]

    @torch.inference_mode()
    def embed(self, samples: np.ndarray, speaker: str = "", update: bool = True) -> np.ndarray:
        x = torch.from_numpy(self.features(samples, speaker, update)[None])
        return self.net.embed(x)[0].numpy()


def speech_head_path(audio: AudioOptions) -> Path:
    """The packaged head for an audio configuration: the permissive path (``librosa``) keeps
    openSMILE out of the head too."""
    return PERMISSIVE_CHECKPOINT if audio.backend == "librosa" else DEFAULT_CHECKPOINT


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def feature_options_dict(options: SpeechFeatureOptions) -> dict[str, Any]:
    return asdict(options)
