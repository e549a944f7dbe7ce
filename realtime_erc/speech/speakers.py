"""Speaker attribution: who spoke each utterance.

Each utterance's voice is embedded by resemblyzer's VoiceEncoder (``pretrained.pt`` from the
package, 256-d, L2-normalised, CPU), then attributed by one of two methods
(``speakers.method``, :class:`~realtime_erc.config.SpeakerOptions`):

- ``recluster`` (default): the embedding is first made emotion-robust by the packaged
  :class:`SpeakerProjection` (``assets/speaker_projection.pt``): the few directions along which
  one speaker's voice moves with emotion are removed (fitted on RAVDESS actors 1-16, so actors
  17-20 stay unseen, as for the speech head). Then all of the session's utterances so far (the last
  ``window``) are re-clustered at every utterance: spherical k-means warm-started from the
  previous partition plus ``restarts`` k-means++ starts, with one speaker more when the new
  utterance is farther than ``threshold`` from every current speaker (up to ``max_speakers``).
  Earlier utterances may move between clusters (one actor's angry and calm voices come together
  once there are enough of both); emitted labels cannot change, so each cluster keeps the name
  most of its utterances were emitted with (one-to-one) and only the current utterance's label is
  decided anew.
- ``online``: the earlier rule on raw embeddings: the nearest running centroid takes the
  utterance unless every distance exceeds ``threshold``, in which case a new speaker opens
  (``S1``, ``S2``, ...), up to ``max_speakers`` (then the nearest one takes it).

Named speakers can be enrolled beforehand from a few seconds of reference audio each; they are
matched like any other speaker (under ``recluster`` their reference voices stay in their cluster).
Utterances with less than ``min_speech_s`` of voiced audio stay unattributed (None).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.config import SpeakerOptions
from realtime_erc.errors import UserError
from realtime_erc.events import SAMPLE_RATE
from realtime_erc.features.assets import resemblyzer_weights_path

log = logging.getLogger(__name__)

EMBEDDING_DIM = 256
DEFAULT_PROJECTION = Path(__file__).resolve().parent.parent / "assets" / "speaker_projection.pt"


class SpeakerError(UserError, ValueError):
    """An enrolment file is missing or unusable; the message names it and the fix."""


@dataclass
class Speaker:
    """A known speaker: the sum ``[256]`` of its voices (raw embeddings under ``online``,
    projected ones under ``recluster``) and their count."""

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


@dataclass(frozen=True)
class SpeakerProjection:
    """Removes the nuisance directions ``basis [256, r]`` (orthonormal) from voice embeddings;
    ``mean [256]``: the fitting voices' mean, subtracted only on request (``centre``).
    ``meta``: how it was fitted."""

    mean: np.ndarray
    basis: np.ndarray
    meta: dict = field(default_factory=dict)

    def remove(self, x: np.ndarray) -> np.ndarray:
        """``[..., 256]`` → the same without the nuisance directions (not centred or normalised):
        ``apply(x) = unit(remove(x) - remove(mean))``."""
        y = np.asarray(x, np.float64)
        return y - (y @ self.basis) @ self.basis.T

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``[..., 256]`` embeddings → centred, projected ``[..., 256]`` unit vectors (float64)."""
        y = np.asarray(x, np.float64) - self.mean
        y = y - (y @ self.basis) @ self.basis.T
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-9)

    @classmethod
    def identity(cls) -> SpeakerProjection:
        return cls(np.zeros(EMBEDDING_DIM), np.zeros((EMBEDDING_DIM, 0)), {"kind": "none"})

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        speakers: np.ndarray,
        groups: np.ndarray | None,
        rank: int,
        meta: dict | None = None,
    ) -> SpeakerProjection:
        """From ``embeddings [n, 256]`` of several ``speakers [n]``: the mean voice, and the top
        ``rank`` directions of the speaker-centred embeddings' ``groups`` means (e.g. emotion ×
        intensity: how emotion moves a voice, whoever speaks), or without groups of the
        speaker-centred embeddings themselves (within-speaker PCA)."""
        x = np.asarray(embeddings, np.float64)
        speakers, mean = np.asarray(speakers), x.mean(0)
        centred = x.copy()
        for s in np.unique(speakers):
            centred[speakers == s] -= centred[speakers == s].mean(0)
        if groups is None:
            m = centred
        else:  # weighted so that a group's direction counts by its size
            groups = np.asarray(groups)
            m = np.stack(
                [
                    centred[groups == g].mean(0) * np.sqrt((groups == g).sum())
                    for g in np.unique(groups)
                ]
            )
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        info = {"rank": rank, "kind": "pca" if groups is None else "groups", **(meta or {})}
        return cls(mean, vt[:rank].T.copy(), info)

    def save(self, path: Path) -> None:
        import torch

        torch.save(
            {
                "mean": torch.from_numpy(self.mean.astype(np.float32)),
                "basis": torch.from_numpy(self.basis.astype(np.float32)),
                "meta": dict(self.meta),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> SpeakerProjection:
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return cls(
            state["mean"].double().numpy(), state["basis"].double().numpy(), dict(state["meta"])
        )


class Reclusterer:
    """The ``recluster`` method on ready (projected) vectors; no locking, no audio.

    Each :meth:`step` re-clusters the anchors (enrolled voices, names fixed) and the last
    ``window`` utterances with the new one, then names the clusters: an enrolled voice's cluster
    takes its name; the others take, one-to-one (Hungarian), the name most of their utterances
    were emitted with; a cluster without one takes a new name (``S1``, ...) or, once
    ``max_speakers`` names exist, the free name whose last centroid is nearest.
    """

    def __init__(
        self,
        threshold: float,
        max_speakers: int,
        window: int = 200,
        restarts: int = 4,
        centre: np.ndarray | None = None,
    ) -> None:
        """Vectors are compared by the cosine after subtracting ``centre`` (None: as given)."""
        self.threshold = threshold
        self.max_speakers = max(1, max_speakers)
        self.window = max(1, window)
        self.restarts = restarts
        self.centre = np.zeros(EMBEDDING_DIM) if centre is None else np.asarray(centre, float)
        self.anchors: list[tuple[str, np.ndarray]] = []
        self.vectors: list[np.ndarray] = []
        """The window's vectors as given (before centring)."""
        self.labels: list[str] = []
        """The current partition of ``vectors`` (may differ from what was emitted)."""
        self.emitted: list[str] = []
        """The name each of ``vectors`` was attributed when it arrived."""
        self.names: list[str] = []
        """Every name handed out so far, in order."""
        self._last_centroid: dict[str, np.ndarray] = {}
        self._next_id = 1
        self._steps = 0

    def add_anchor(self, name: str, vector: np.ndarray) -> None:
        self.anchors.append((name, np.asarray(vector, np.float64)))
        if name not in self.names:
            self.names.append(name)

    def step(self, vector: np.ndarray) -> Attribution:
        given = np.asarray(vector, np.float64)
        anchor_names = [a for a, _ in self.anchors]
        x = self._centred(np.stack([u for _, u in self.anchors] + self.vectors + [given]))
        v = x[-1]
        current = list(dict.fromkeys(anchor_names + self.labels))
        past = np.array([current.index(q) for q in anchor_names + self.labels], dtype=int)
        # the new utterance starts with the nearest speaker, or a new one when all are far
        k = len(current)
        if k:
            d = 1.0 - _centroids(x[:-1], past, k) @ v
            j = int(np.argmin(d))
            opens = d[j] > self.threshold and k < self.max_speakers
            start = np.append(past, k if opens else j)
            k += int(opens)
        else:
            start = np.zeros(1, dtype=int)
            k = 1
        fixed = np.zeros(len(x), dtype=bool)
        fixed[: len(self.anchors)] = True
        labels = _best_partition(x, start, k, fixed, self.restarts, self._steps)
        names = self._name_clusters(x, labels, anchor_names)
        partition = [names[c] for c in labels.tolist()]
        name = partition[-1]
        own = labels == labels[-1]
        own[-1] = False
        distance = None
        if own.any():
            c = x[own].sum(0)
            distance = 1.0 - float(v @ c) / max(float(np.linalg.norm(c)), 1e-9)
        new = name not in self.names
        if new:
            self.names.append(name)
        n = len(self.anchors)
        self.vectors = (self.vectors + [given])[-self.window :]
        self.labels = partition[n:][-self.window :]
        self.emitted = (self.emitted + [name])[-self.window :]
        self._steps += 1
        return Attribution(name, distance, new)

    def speakers(self) -> list[Speaker]:
        """The current clusters as :class:`Speaker` (enrolled ones first, then by first use)."""
        members: dict[str, list[np.ndarray]] = {}
        names = [a for a, _ in self.anchors] + self.labels
        given = [u for _, u in self.anchors] + self.vectors
        for name, u in zip(names, self._centred(np.stack(given)) if given else [], strict=True):
            members.setdefault(name, []).append(u)
        enrolled = {a for a, _ in self.anchors}
        order = sorted(members, key=self.names.index)
        return [
            Speaker(n, np.sum(members[n], axis=0), len(members[n]), n in enrolled) for n in order
        ]

    def _centred(self, x: np.ndarray) -> np.ndarray:
        y = x - self.centre
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-9)

    def _name_clusters(self, x: np.ndarray, labels: np.ndarray, anchor_names: list[str]) -> dict:
        from scipy.optimize import linear_sum_assignment

        n_anchor = len(anchor_names)
        clusters = list(dict.fromkeys(labels.tolist()))
        names: dict[int, str] = {}
        for c, a in zip(labels[:n_anchor].tolist(), anchor_names, strict=True):
            names[c] = a
        # the rest by overlap with what their utterances were emitted as
        free = [c for c in clusters if c not in names]
        emitted = self.emitted  # one per utterance in the window, the new one excluded
        candidates = [q for q in dict.fromkeys(emitted) if q not in names.values()]
        if free and candidates:
            overlap = np.zeros((len(free), len(candidates)))
            for c, q in zip(labels[n_anchor:-1].tolist(), emitted, strict=True):
                if c in free and q in candidates:
                    overlap[free.index(c), candidates.index(q)] += 1
            rows, cols = linear_sum_assignment(-overlap)
            for r, q in zip(rows, cols, strict=True):
                if overlap[r, q] > 0:
                    names[free[r]] = candidates[q]
        for c in clusters:
            if c in names:
                continue
            taken = set(names.values())
            spare = [q for q in self.names if q not in taken and q not in anchor_names]
            if len(self.names) < self.max_speakers or not spare:
                names[c] = self._new_name(taken)
            else:  # all names handed out: the free one that sounded most like this cluster
                centroid = _unit(x[labels == c].sum(0))
                names[c] = max(
                    spare, key=lambda q: float(self._last_centroid.get(q, centroid * 0) @ centroid)
                )
        for c, q in names.items():
            self._last_centroid[q] = _unit(x[labels == c].sum(0))
        return names

    def _new_name(self, taken: set[str]) -> str:
        while f"S{self._next_id}" in taken or f"S{self._next_id}" in self.names:
            self._next_id += 1
        name = f"S{self._next_id}"
        self._next_id += 1
        return name


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``[k, d]`` unit centroids of ``x [n, d]`` by ``labels`` (an empty cluster: zeros)."""
    onehot = np.zeros((len(x), k))
    onehot[np.arange(len(x)), labels] = 1.0
    c = onehot.T @ x
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-9)


def _spherical_kmeans(
    x: np.ndarray, labels: np.ndarray, k: int, fixed: np.ndarray, iters: int = 20
) -> tuple[np.ndarray, float]:
    """Lloyd iterations on the cosine from ``labels``; ``fixed`` rows keep theirs. Returns the
    labels and the objective (sum of each vector's cosine to its centroid)."""
    for _ in range(iters):
        sims = x @ _centroids(x, labels, k).T
        new = sims.argmax(1)
        new[fixed] = labels[fixed]
        if np.array_equal(new, labels):
            break
        labels = new
    sims = x @ _centroids(x, labels, k).T
    return labels, float(sims[np.arange(len(x)), labels].sum())


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on the cosine distance: labels of the nearest seed."""
    seeds = [int(rng.integers(len(x)))]
    d = 1.0 - x @ x[seeds[0]]
    for _ in range(k - 1):
        p = np.maximum(d, 0.0) ** 2
        j = int(rng.choice(len(x), p=p / p.sum())) if p.sum() > 0 else int(rng.integers(len(x)))
        seeds.append(j)
        d = np.minimum(d, 1.0 - x @ x[j])
    return (x @ x[seeds].T).argmax(1)


def _best_partition(
    x: np.ndarray, start: np.ndarray, k: int, fixed: np.ndarray, restarts: int, seed: int
) -> np.ndarray:
    """The best of k-means from ``start`` and of ``restarts`` k-means++ starts that use all
    ``k`` clusters (seeded by ``seed``: the same session gives the same labels)."""
    best, score = _spherical_kmeans(x, start, k, fixed)
    if k > 1 and len(x) > k:
        rng = np.random.default_rng(seed)  # deterministic per step
        for _ in range(restarts):
            init = _kmeans_pp(x, k, rng)
            init[fixed] = start[fixed]
            labels, s = _spherical_kmeans(x, init, k, fixed)
            if s > score + 1e-9 and len(np.unique(labels)) == k:
                best, score = labels, s
    return best


def load_voice_encoder() -> Any:
    """resemblyzer's ``VoiceEncoder`` on the CPU, from the packaged weights."""
    with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy path
        warnings.simplefilter("ignore", DeprecationWarning)
        from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False, weights_fpath=resemblyzer_weights_path())


def embed_voices(
    encoder: Any, batch: Sequence[np.ndarray], min_speech_s: float
) -> list[np.ndarray | None]:
    """``[256]`` L2-normalised voice embeddings of 16 kHz mono clips: resemblyzer's
    ``embed_utterance`` (silences trimmed with webrtcvad, 1.6 s partial windows, their mean),
    with the partial windows of every clip through the LSTM as one batch. The LSTM's 160 steps
    cost about the same for 2 windows as for 30, so a server's concurrent utterances embed
    together for little more than one. None for a clip with under ``min_speech_s`` voiced."""
    import torch
    from resemblyzer import preprocess_wav
    from resemblyzer.audio import wav_to_mel_spectrogram

    shortest = max(int(min_speech_s * SAMPLE_RATE), 1)
    windows: list[np.ndarray] = []
    counts: list[int] = []
    for samples in batch:
        x = np.asarray(samples, np.float32).reshape(-1)
        wav = preprocess_wav(x, source_sr=SAMPLE_RATE) if len(x) >= shortest and x.any() else x[:0]
        if len(wav) < shortest:
            counts.append(0)
            continue
        wav_slices, mel_slices = encoder.compute_partial_slices(len(wav), 1.3, 0.75)  # its defaults
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        mel = wav_to_mel_spectrogram(wav)
        windows += [mel[s] for s in mel_slices]
        counts.append(len(mel_slices))
    if not windows:
        return [None] * len(counts)
    with torch.inference_mode():
        partials = encoder(torch.from_numpy(np.stack(windows))).numpy()
    out: list[np.ndarray | None] = []
    for n, start in zip(counts, np.cumsum([0, *counts[:-1]]), strict=True):
        if n == 0:
            out.append(None)
            continue
        mean = partials[start : start + n].mean(axis=0)
        out.append((mean / np.linalg.norm(mean)).astype(np.float32))
    return out


class SpeakerTracker:
    """Voice embeddings + clustering (``options.method``). Thread-safe (one lock around the model
    and state)."""

    def __init__(
        self,
        options: SpeakerOptions | None = None,
        projection: SpeakerProjection | None = None,
        encoder: Any = None,
    ) -> None:
        """``options``: the ``[speakers]`` section (``enabled`` is the caller's business).
        ``projection`` replaces the one ``options.projection`` names (benchmarks fit their
        own). ``encoder``: a loaded resemblyzer ``VoiceEncoder`` to share (a server's sessions
        embed with one copy; each tracker keeps its own speakers)."""
        self.options = options or SpeakerOptions()
        self._speakers: list[Speaker] = []
        self._encoder = encoder
        self._lock = threading.Lock()
        self._next_id = 1
        self._projection = projection
        self._recluster: Reclusterer | None = None

    @property
    def speakers(self) -> list[Speaker]:
        """The known speakers (under ``recluster``: the current clusters)."""
        if self.options.method == "recluster":
            return self._reclusterer().speakers() if self._recluster is not None else []
        return self._speakers

    def load(self) -> None:
        """Load the encoder (and projection) and enrol the configured speakers."""
        with self._lock:
            if self._encoder is None:
                self._encoder = load_voice_encoder()
            if self.options.method == "recluster":
                self._reclusterer()
        for name, path in self.options.enrol.items():
            if not any(s.name == name for s in self.speakers):
                self.enrol(name, read_audio(Path(path)))

    def embed(self, samples: np.ndarray) -> np.ndarray | None:
        """``[256]`` L2-normalised voice embedding of 16 kHz mono audio; None when it holds less
        than ``min_speech_s`` of voiced audio (see :func:`embed_voices`)."""
        if self._encoder is None:
            self.load()
        return embed_voices(self._encoder, [samples], self.options.min_speech_s)[0]

    def warm_up(self) -> None:
        """Run the preprocessing and the encoder once on noise: their first call pays for lazy
        imports and allocations (seconds), which would otherwise land on the first utterance."""
        noise = np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE).astype(np.float32)
        self.embed(0.1 * noise)

    def enrol(self, name: str, samples: np.ndarray) -> None:
        """Add (or extend) a named speaker from reference audio ``[n]`` at 16 kHz."""
        emb = self.embed(samples)
        if emb is None:
            raise SpeakerError(
                f"enrolment audio for {name!r} holds too little speech: give a few seconds "
                "of that person talking (speakers.enrol)"
            )
        with self._lock:
            if self.options.method == "recluster":
                rc = self._reclusterer()
                rc.add_anchor(name, self._projection.remove(emb))  # type: ignore[union-attr]
                return
            for s in self._speakers:
                if s.name == name:
                    s.total = s.total + emb
                    s.count += 1
                    return
            self._speakers.append(Speaker(name, emb.astype(np.float64), 1, enrolled=True))

    def assign(self, samples: np.ndarray) -> Attribution:
        """Attribute one utterance's audio ``[n]`` (16 kHz) and update the speakers."""
        emb = self.embed(samples)
        if emb is None:
            return Attribution(None, None, False)
        return self.assign_embedding(emb)

    def assign_embedding(self, emb: np.ndarray) -> Attribution:
        """The clustering step on a ready ``[256]`` embedding."""
        with self._lock:
            if self.options.method == "recluster":
                rc = self._reclusterer()
                return rc.step(self._projection.remove(emb))  # type: ignore[union-attr]
            return self._assign_online(emb)

    def _reclusterer(self) -> Reclusterer:
        """The ``recluster`` state, created (with its projection) on first use."""
        if self._recluster is None:
            if self._projection is None:
                self._projection = load_projection(self.options.projection)
            o = self.options
            p = self._projection
            self._recluster = Reclusterer(
                o.threshold,
                o.max_speakers,
                o.window,
                o.restarts,
                centre=p.remove(p.mean) if o.centre else None,
            )
        return self._recluster

    def _assign_online(self, emb: np.ndarray) -> Attribution:
        dists = [1.0 - float(emb @ s.centroid) for s in self._speakers]
        nearest = int(np.argmin(dists)) if dists else -1
        full = len(self._speakers) >= self.options.max_speakers
        if nearest < 0 or (dists[nearest] > self.options.threshold and not full):
            name = self._new_name()
            self._speakers.append(Speaker(name, emb.astype(np.float64), 1))
            return Attribution(name, None, True)
        speaker = self._speakers[nearest]
        speaker.total = speaker.total + emb
        speaker.count += 1
        return Attribution(speaker.name, dists[nearest], False)

    def _new_name(self) -> str:
        taken = {s.name for s in self._speakers}
        while f"S{self._next_id}" in taken:
            self._next_id += 1
        name = f"S{self._next_id}"
        self._next_id += 1
        return name


def load_projection(spec: str) -> SpeakerProjection:
    """``default`` (the packaged file), ``none`` (identity) or a path."""
    if spec == "none":
        return SpeakerProjection.identity()
    path = DEFAULT_PROJECTION if spec == "default" else Path(spec).expanduser()
    if not path.is_file():
        raise SpeakerError(
            f"speaker projection {path} not found: reinstall the package, or set "
            'speakers.projection = "none"'
        )
    return SpeakerProjection.load(path)


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
