"""Assembled multimodal conversations: MELD dialogues voiced by RAVDESS actors, with FER2013 faces.

No conversational audio or video is available here (see ``docs/ASSEMBLED.md`` for what this
benchmark is and is not), so each MELD utterance gets

- text: its own MELD transcript (the dialogue context is real);
- audio: a RAVDESS clip of the *actor* its speaker is mapped to, with the utterance's emotion
  (MELD → RAVDESS: neutral → neutral or calm, surprise → surprised, fear → fearful, sadness →
  sad, joy → happy, disgust → disgust, anger → angry); each speaker of a dialogue keeps one actor;
- face: a FER2013 image of the utterance's emotion, rendered into a video frame;

and all three go through the live extractors (MiniLM pooled text, eGeMAPS audio, MediaPipe face
vectors), pooled vectors only (``sequence=None``). A face MediaPipe does not find leaves the visual
modality absent, as it would live.

Splits follow MELD's dialogue splits; actors (train 1–12, valid 13–16, test 17–20 by default, half
male and half female each) and face images (FER ``Training`` for train, ``PublicTest`` halved for
valid and test, pixel-duplicates removed) are disjoint between splits. Every choice is drawn from
a generator seeded by ``(seed, split, dialogue position)``, so the recipe is the same whatever
subset is built; it is written next to the cached features as ``recipe-<key>.json``.

Features of each unique clip and image are computed once and cached under
``<cache_root>/features/assembled/`` (append-only shards keyed by extractor identity); text
vectors share the text cache of :mod:`realtime_erc.training.text_features`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from realtime_erc.events import SAMPLE_RATE, ModalityFeatures, UtteranceFeatures
from realtime_erc.training.corpus import SPLITS, CorpusFeatures, Dialogue, ErcCorpus
from realtime_erc.training.emotion_data import DataError, SpeechClip
from realtime_erc.training.progress import Progress, no_progress

log = logging.getLogger(__name__)

VERSION = 1
"""Bump when the recipe or the feature computation changes (it is part of every cache key)."""


MELD7: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

RAVDESS_OF_MELD: dict[int, tuple[int, ...]] = {
    0: (0, 1),  # neutral → neutral, calm (calm only when options.neutral_includes_calm)
    1: (7,),  # surprise → surprised
    2: (5,),  # fear → fearful
    3: (3,),  # sadness → sad
    4: (2,),  # joy → happy
    5: (6,),  # disgust → disgust
    6: (4,),  # anger → angry
}
"""MELD-7 class → 0-based RAVDESS classes (neutral, calm, happy, sad, angry, fearful, disgust,
surprised)."""

FER_OF_MELD: dict[int, int] = {0: 6, 1: 5, 2: 2, 3: 4, 4: 3, 5: 1, 6: 0}
"""MELD-7 class → FER2013 class (angry, disgust, fear, happy, sad, surprise, neutral)."""


@dataclass(frozen=True)
class AssembledOptions:
    """How the conversations are assembled (all of it is part of the cache key)."""

    seed: int = 0
    train_actors: tuple[int, ...] = tuple(range(1, 13))
    valid_actors: tuple[int, ...] = (13, 14, 15, 16)
    test_actors: tuple[int, ...] = (17, 18, 19, 20)
    neutral_includes_calm: bool = True
    """MELD neutral draws from RAVDESS neutral and calm clips (neutral alone has 4 per actor)."""
    train_faces_per_class: int = 300
    eval_faces_per_class: int = 150
    """Face pool per FER class for valid and for test (each half of PublicTest)."""
    max_dialogues: int = 0
    """Per split, the first N dialogues only (0 = all): small builds for tests."""
    face_canvas: tuple[int, int] = (240, 320)
    face_side: int = 120
    """The 48 px face is upscaled to this side and centred on a grey ``face_canvas`` frame."""
    gap_s: float = 0.3
    """Silence between consecutive utterances on the synthetic timeline (start/end)."""
    head_scores: bool = False
    """Append the emotion heads' log-probabilities (live: ``features.heads = "scores"``). The
    speech head is cross-fitted over the training actors (:mod:`.head_crossfit`); the face head
    has trained on all of FER ``Training``, so every split's faces then come from ``PublicTest``
    (in thirds: train, valid, test), which it has not."""
    crossfit_folds: int = 3
    """Groups of training actors for the speech head's cross-fitting (with ``head_scores``)."""
    speech_norm: str = "actor"
    """How the speech head's input is standardised per speaker (with ``head_scores``):
    ``actor``, over all of the actor's clips (offline, the head's own training recipe);
    ``running``, causally along each dialogue as live (a running normaliser per dialogue
    speaker shrunk towards the population prior: the scores then vary with the utterance's
    position, as they do live; see ``realtime_erc/training/skew.py``)."""

    def actors(self, split: str) -> tuple[int, ...]:
        return {"train": self.train_actors, "valid": self.valid_actors, "test": self.test_actors}[
            split
        ]

    def recipe_dict(self) -> dict[str, Any]:
        """The options that decide the recipe (``max_dialogues`` only selects from it)."""
        d = asdict(self)
        d.pop("max_dialogues")
        if not self.head_scores:  # the recipes written before these options existed
            d.pop("head_scores")
            d.pop("crossfit_folds")
        if self.speech_norm == "actor":  # nor this one
            d.pop("speech_norm")
        return d


@dataclass(frozen=True)
class UtteranceSource:
    """Where one assembled utterance's audio and face come from."""

    actor: int
    clip: str
    """Path relative to the RAVDESS directory."""
    face: int
    """Row of the FER2013 npz."""


@dataclass
class AssembledBuild:
    """A built corpus with its features, recipe (dialogue id → sources) and statistics."""

    corpus: ErcCorpus
    features: CorpusFeatures
    recipe: dict[str, list[UtteranceSource]]
    actors: dict[str, dict[str, int]]
    """Dialogue id → speaker → actor."""
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- public entry points


def load_assembled(
    data_dir: Path,
    cache_dir: Path | None = None,
    options: AssembledOptions | None = None,
    features_config: Any = None,
    progress: Progress | None = None,
) -> tuple[ErcCorpus, CorpusFeatures]:
    """The assembled corpus (``assembled``, ``meld7``) and its live-compatible pooled features.

    ``data_dir`` holds ``erc_text/meld.pkl``, ``ravdess/`` and ``fer2013/``; ``cache_dir`` defaults
    to ``<cache_root>/features/assembled``; ``features_config`` (a ``FeaturesConfig``) defaults to
    the live defaults. The first run extracts features (minutes); later runs take seconds.
    """
    build = assemble(data_dir, cache_dir, options, features_config, progress)
    return build.corpus, build.features


def build_assembled(
    data_dir: Path,
    cache_dir: Path | None = None,
    options: AssembledOptions | None = None,
    features_config: Any = None,
    console: Any = None,
) -> dict[str, Any]:
    """Build (or re-load) the assembled corpus with rich progress bars; returns its statistics:
    dialogues/utterances per split, actors, clips and faces used, face-detection rate, seconds."""
    from rich.console import Console

    from realtime_erc.training.extractors import ProgressBars

    with ProgressBars(console or Console(stderr=True)) as bars:
        build = assemble(data_dir, cache_dir, options, features_config, bars)
    return build.stats


def assemble(
    data_dir: Path,
    cache_dir: Path | None = None,
    options: AssembledOptions | None = None,
    features_config: Any = None,
    progress: Progress | None = None,
) -> AssembledBuild:
    """Everything :func:`load_assembled` returns, plus the recipe and statistics."""
    from realtime_erc.config import FeaturesConfig
    from realtime_erc.features.assets import cache_root
    from realtime_erc.training.datasets import load_text_corpus

    options = options or AssembledOptions()
    config = features_config or FeaturesConfig()
    data_dir = Path(data_dir)
    cache_dir = (
        Path(cache_dir) if cache_dir is not None else cache_root() / "features" / "assembled"
    )
    t0 = time.perf_counter()
    _check_actors(options)
    if options.speech_norm not in ("actor", "running"):
        raise DataError(f"speech_norm must be actor or running, got {options.speech_norm!r}")

    meld = load_text_corpus("meld", data_dir)
    if meld.labels != MELD7:
        raise DataError(f"MELD labels {meld.labels} are not the meld7 set {MELD7}")
    clips = _clip_pools(data_dir, options)
    fer = _load_fer_images(data_dir)
    pools = face_pools(fer.labels, fer.usage, fer.images, options)

    splits: dict[str, list[Dialogue]] = {}
    recipe: dict[str, list[UtteranceSource]] = {}
    actor_maps: dict[str, dict[str, int]] = {}
    for s, split in enumerate(SPLITS):
        dialogues = meld.split(split)
        if options.max_dialogues:
            dialogues = dialogues[: options.max_dialogues]
        splits[split] = list(dialogues)
        for position, d in enumerate(dialogues):
            actor_maps[d.id], recipe[d.id] = _dialogue_recipe(
                d, (options.seed, s, position), options.actors(split), clips, pools[split], options
            )
    corpus = ErcCorpus(
        "assembled",
        "meld7",
        MELD7,
        splits,
        {
            "dialogues": f"MELD ({data_dir / 'erc_text' / 'meld.pkl'}), its splits and labels",
            "audio": "RAVDESS clips of one actor per speaker, matching emotion",
            "faces": "FER2013 images of the matching emotion ("
            + ("PublicTest thirds" if options.head_scores else "Training; PublicTest halves")
            + ")",
            "seed": str(options.seed),
            "version": str(VERSION),
        },
    )

    audio_x = AudioExtractor(config.audio, data_dir / "ravdess")
    visual_x = VisualExtractor(config.visual, options, fer.images, fer.source)
    used_clips = sorted({u.clip for us in recipe.values() for u in us})
    used_faces = sorted({u.face for us in recipe.values() for u in us})
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    audio = _cached(
        cache_dir / f"audio-{audio_x.key}", used_clips, audio_x, "audio clips", progress
    )
    seconds["audio"] = time.perf_counter() - t
    t = time.perf_counter()
    faces = _cached(
        cache_dir / f"visual-{visual_x.key}",
        [str(r) for r in used_faces],
        visual_x,
        "face images",
        progress,
    )
    visual_x.close()
    seconds["visual"] = time.perf_counter() - t
    t = time.perf_counter()
    text, text_identity, text_dim = _text_vectors(corpus, config.text, cache_dir, progress)
    seconds["text"] = time.perf_counter() - t

    extractor = {
        "text": text_identity,
        "audio": audio_x.identity,
        "visual": visual_x.identity,
        "sequences": "false",
        "corpus": f"assembled-v{VERSION}-seed{options.seed}",
    }
    speech = None
    if options.head_scores:
        t = time.perf_counter()
        audio, faces, heads, speech = _with_head_scores(
            data_dir, cache_dir, options, config.visual, fer, used_faces, audio, faces, progress,
            corpus, recipe,
        )  # fmt: skip
        seconds["heads"] = time.perf_counter() - t
        extractor |= {"audio": f"{audio_x.identity}+{heads['audio']}",
                      "visual": f"{visual_x.identity}+{heads['visual']}",
                      "heads": "scores"}  # fmt: skip
        if options.speech_norm == "running":
            extractor["speech_norm"] = "running"
    features = _utterance_features(corpus, recipe, text, text_dim, audio, faces, options, speech)
    build = AssembledBuild(corpus, CorpusFeatures(features, extractor), recipe, actor_maps)
    recipe_path = _write_recipe(cache_dir, build, options, extractor)
    seconds["total"] = time.perf_counter() - t0
    build.stats = _statistics(build, options, faces, seconds, recipe_path)
    return build


# ----------------------------------------------------------------------------- recipe


def _check_actors(options: AssembledOptions) -> None:
    sets = [set(options.actors(s)) for s in SPLITS]
    if not all(sets):
        raise DataError("every split needs at least one RAVDESS actor (train/valid/test_actors)")
    if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
        raise DataError(
            f"RAVDESS actors must be disjoint between splits: train {sorted(sets[0])}, "
            f"valid {sorted(sets[1])}, test {sorted(sets[2])}"
        )


def _clip_pools(data_dir: Path, options: AssembledOptions) -> dict[tuple[int, int], list[str]]:
    """(actor, MELD class) → clip paths relative to the RAVDESS directory, sorted."""
    from realtime_erc.training.emotion_data import ravdess_clips

    root = data_dir / "ravdess"
    all_clips: list[SpeechClip] = ravdess_clips(root)
    pools: dict[tuple[int, int], list[str]] = {}
    wanted = {a for s in SPLITS for a in options.actors(s)}
    for meld_class, ravdess_classes in RAVDESS_OF_MELD.items():
        classes = ravdess_classes if options.neutral_includes_calm else ravdess_classes[:1]
        for actor in wanted:
            paths = sorted(
                c.path.relative_to(root).as_posix()
                for c in all_clips
                if c.actor == actor and c.emotion in classes
            )
            if not paths:
                raise DataError(
                    f"{root}: actor {actor} has no {MELD7[meld_class]} clips: use actors the "
                    "RAVDESS directory holds (train/valid/test_actors)"
                )
            pools[(actor, meld_class)] = paths
    return pools


@dataclass(frozen=True)
class _Fer:
    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    source: Path


def _load_fer_images(data_dir: Path) -> _Fer:
    from realtime_erc.training.emotion_data import load_fer

    fer = load_fer(data_dir / "fer2013")
    if not len(fer.usage):
        raise DataError(f"{fer.source}: needs the 'usage' array (Training / PublicTest)")
    return _Fer(fer.images, fer.labels, fer.usage, fer.source)


def face_pools(
    labels: np.ndarray, usage: np.ndarray, images: np.ndarray, options: AssembledOptions
) -> dict[str, dict[int, np.ndarray]]:
    """Split → FER class → FER rows ``[n]`` (sorted) that split may use.

    All-black images and every copy of a pixel-duplicated image that crosses Training/PublicTest
    or carries conflicting labels are dropped, other duplicates keep their first copy; so no image
    (by pixels) is in two splits. Train draws from ``Training``; ``PublicTest`` is shuffled per
    class and halved (even positions valid, odd test). With ``head_scores`` all three splits
    draw from ``PublicTest``, in thirds. Each pool is then capped (seeded).
    """
    groups: dict[bytes, list[int]] = {}
    for row, img in enumerate(images):
        groups.setdefault(img.tobytes(), []).append(row)
    keep = np.zeros(len(images), bool)
    for key, rows in groups.items():
        if not any(key):  # all black
            continue
        if len({str(usage[r]) for r in rows}) > 1 or len({int(labels[r]) for r in rows}) > 1:
            continue
        keep[rows[0]] = True
    pools: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for fer_class in range(7):
        rng = np.random.default_rng([options.seed, VERSION, 7919, fer_class])
        train = np.flatnonzero(keep & (labels == fer_class) & (usage == "Training"))
        public = np.flatnonzero(keep & (labels == fer_class) & (usage == "PublicTest"))
        train = rng.permutation(train)[: options.train_faces_per_class]
        public = rng.permutation(public)
        evaluation = {"valid": public[0::2], "test": public[1::2]}
        if options.head_scores:  # the face head has trained on Training: thirds of PublicTest
            train = public[0::3][: options.train_faces_per_class]
            evaluation = {"valid": public[1::3], "test": public[2::3]}
        pools["train"][fer_class] = np.sort(train)
        for split, rows in evaluation.items():
            pools[split][fer_class] = np.sort(rows[: options.eval_faces_per_class])
    for split, by_class in pools.items():
        for fer_class, rows in by_class.items():
            if not len(rows):
                raise DataError(f"FER2013 has no usable images of class {fer_class} for {split}")
    return pools


def _dialogue_recipe(
    dialogue: Dialogue,
    seed: tuple[int, int, int],
    actors: tuple[int, ...],
    clips: dict[tuple[int, int], list[str]],
    faces: dict[int, np.ndarray],
    options: AssembledOptions,
) -> tuple[dict[str, int], list[UtteranceSource]]:
    """Speaker → actor (distinct actors while the split has enough, then reused in turn) and one
    source per utterance, all drawn from a generator seeded by ``seed``."""
    rng = np.random.default_rng([*seed, VERSION])
    order = rng.permutation(np.array(sorted(actors)))
    speakers = list(dict.fromkeys(dialogue.speakers))
    actor_of = {s: int(order[k % len(order)]) for k, s in enumerate(speakers)}
    sources = []
    for speaker, label in zip(dialogue.speakers, dialogue.labels, strict=True):
        actor = actor_of[speaker]
        pool = clips[(actor, label)]
        clip = pool[int(rng.integers(len(pool)))]
        rows = faces[FER_OF_MELD[label]]
        face = int(rows[int(rng.integers(len(rows)))])
        sources.append(UtteranceSource(actor, clip, face))
    return actor_of, sources


# ----------------------------------------------------------------------------- extraction + cache


@dataclass(frozen=True)
class _Item:
    """One cached result: pooled ``[D]``, present, duration (seconds; audio only)."""

    pooled: np.ndarray
    present: bool
    duration: float = 0.0


class AudioExtractor:
    """A RAVDESS clip cut like a live segment (voiced span, the VAD's pre-roll before it and the
    segmenter's tail after it), then the live :class:`AudioFeatures` on it."""

    TRIM_DB = 35.0  # voiced span: 20 ms frames within this many dB of the loudest

    def __init__(self, config: Any, root: Path) -> None:
        from realtime_erc.config import VadConfig
        from realtime_erc.features.audio import AudioFeatures
        from realtime_erc.speech.segmenter import TAIL_MS

        self.root = root
        self.options = config  # the [features.audio] section
        self.extractor = AudioFeatures(self.options)
        self.pre_s = VadConfig().pre_roll_ms / 1000
        self.tail_s = TAIL_MS / 1000
        self.identity = (
            f"{self.options.backend}-pooled-min{self.options.min_rms_dbfs:g}dB"
            f"-voiced{self.TRIM_DB:g}dB-pre{self.pre_s:g}-tail{self.tail_s:g}"
        )
        self.key = _short_hash(f"{self.identity}-v{VERSION}")

    def __call__(self, clip: str) -> _Item:
        import soundfile as sf

        path = self.root / clip
        try:
            x, rate = sf.read(str(path), dtype="float32", always_2d=False)
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path}: unreadable audio ({e}): re-copy the RAVDESS directory") from e
        if rate != SAMPLE_RATE or x.ndim != 1:
            raise DataError(f"{path}: expected 16 kHz mono (the data bundle's format)")
        seg = voiced_segment(x, self.TRIM_DB, self.pre_s, self.tail_s)
        feats = self.extractor.extract(seg)
        return _Item(feats.pooled.astype(np.float32), bool(feats.present), len(seg) / SAMPLE_RATE)


def voiced_segment(x: np.ndarray, trim_db: float, pre_s: float, tail_s: float) -> np.ndarray:
    """``x [n]`` cut to its voiced span (first to last 20 ms frame within ``trim_db`` of the
    loudest) with ``pre_s`` before and ``tail_s`` after, as the live segmenter cuts speech."""
    hop = SAMPLE_RATE // 50
    n = len(x) // hop
    if n == 0 or not np.any(x):
        return x
    rms = np.sqrt(np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    db = 20 * np.log10(rms + 1e-12)
    voiced = np.flatnonzero(db > db.max() - trim_db)
    start = max(0, voiced[0] * hop - int(pre_s * SAMPLE_RATE))
    end = min(len(x), (voiced[-1] + 1) * hop + int(tail_s * SAMPLE_RATE))
    return x[start:end]


class VisualExtractor:
    """A FER image rendered into a frame, then the live :class:`FaceFeatures` (analyze +
    summarize) on it, in image mode: each image is independent (no tracking across images).
    A static face repeated over an utterance's frames pools to this same vector."""

    def __init__(self, config: Any, options: AssembledOptions, images: np.ndarray, source: Path):
        from realtime_erc.features.visual import FaceFeatures

        self.images = images
        self.options = options
        visual = config  # the [features.visual] section
        self.extractor = FaceFeatures(visual, running_mode="image")
        h, w = options.face_canvas
        self.identity = (
            f"mediapipe-face_landmarker-image-conf{visual.min_confidence:g}-faces{visual.num_faces}"
            f"-{visual.speaker_face}-frame{h}x{w}-side{options.face_side}"
        )
        data = f"{source.name}:{source.stat().st_size}"
        self.key = _short_hash(f"{self.identity}-{data}-v{VERSION}")

    def __call__(self, row: str) -> _Item:
        frame = render_face(self.images[int(row)], self.options.face_canvas, self.options.face_side)
        analysed = self.extractor.analyze(frame, 0.0, 0)
        result = self.extractor.summarize([analysed])
        feats = result.features
        return _Item(feats.pooled.astype(np.float32), bool(feats.present))

    def close(self) -> None:
        self.extractor.close()


def render_face(face: np.ndarray, canvas: tuple[int, int], side: int) -> np.ndarray:
    """A ``[H, W, 3]`` uint8 BGR frame: the ``[48, 48]`` grayscale face upscaled (cubic) to
    ``side`` pixels, centred on a uniform grey background."""
    h, w = canvas
    frame = np.full((h, w, 3), 110, np.uint8)
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    y, x = (h - side) // 2, (w - side) // 2
    frame[y : y + side, x : x + side] = big[..., None]
    return frame


def _cached(
    directory: Path,
    keys: list[str],
    compute: Callable[[str], _Item],
    phase: str,
    progress: Progress | None,
    chunk: int = 200,
) -> dict[str, _Item]:
    """``keys`` → items, from append-only ``shard-*.npz`` files in ``directory``; missing ones
    are computed and saved every ``chunk`` items (an interruption keeps what was done)."""
    have = _read_shards(directory)
    todo = [k for k in keys if k not in have]
    if todo:
        log.info("%s: computing %d of %d (cache %s)", phase, len(todo), len(keys), directory)
    done: list[tuple[str, _Item]] = []
    found = 0
    for i, key in enumerate(todo, 1):
        item = compute(key)
        done.append((key, item))
        found += item.present
        if len(done) >= chunk or i == len(todo):
            _write_shard(directory, done)
            have.update(done)
            done = []
        if progress is not None:
            progress(phase, i, len(todo), {"found": found / i})
    return {k: have[k] for k in keys}


def _read_shards(directory: Path) -> dict[str, _Item]:
    out: dict[str, _Item] = {}
    for shard in sorted(directory.glob("shard-*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as d:
                for key, vec, present, dur in zip(
                    d["keys"], d["pooled"], d["present"], d["duration"], strict=True
                ):
                    out[str(key)] = _Item(vec.astype(np.float32), bool(present), float(dur))
        except (OSError, ValueError, KeyError) as e:  # a shard cut short by a crash
            log.warning("ignoring unreadable feature shard %s (%s)", shard, e)
    return out


def _write_shard(directory: Path, items: list[tuple[str, _Item]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"tmp-{uuid.uuid4().hex}.npz"
    np.savez(
        tmp,
        keys=np.array([k for k, _ in items]),
        pooled=np.stack([it.pooled for _, it in items]).astype(np.float32),
        present=np.array([it.present for _, it in items], bool),
        duration=np.array([it.duration for _, it in items], np.float64),
    )
    tmp.rename(directory / f"shard-{uuid.uuid4().hex}.npz")  # atomic: readers never see half


def _text_vectors(
    corpus: ErcCorpus, config: Any, cache_dir: Path, progress: Progress | None
) -> tuple[dict[str, np.ndarray], str, int]:
    """Text → pooled sentence vector for every non-empty transcript (the shared text cache, or
    ``<cache_dir>/text`` when ``cache_dir`` is not the default); the encoder's identity and
    width."""
    from realtime_erc.features.assets import cache_root
    from realtime_erc.features.text import resolve_encoder
    from realtime_erc.training.text_features import SentencePooled, TextFeatureCache, encode_texts

    adapter = None if config.adapter in ("auto", "none") else Path(config.adapter).expanduser()
    encoder = SentencePooled(
        max_tokens=config.max_tokens, adapter=adapter, encoder=resolve_encoder(config.encoder)
    )
    default = cache_root() / "features" / "assembled"
    root = None if cache_dir == default else cache_dir / "text"
    cache = TextFeatureCache(encoder.identity, root)
    texts = sorted({t for d in corpus.dialogues() for t in d.texts if t.strip()})
    vectors = encode_texts(texts, encoder, cache, progress=progress)
    return dict(zip(texts, vectors, strict=True)), encoder.identity, encoder.dim


def _with_head_scores(
    data_dir: Path,
    cache_dir: Path,
    options: AssembledOptions,
    visual_config: Any,
    fer: _Fer,
    used_faces: list[int],
    audio: dict[str, _Item],
    faces: dict[str, _Item],
    progress: Progress | None,
    corpus: ErcCorpus | None = None,
    recipe: dict[str, list[UtteranceSource]] | None = None,
) -> tuple[dict[str, _Item], dict[str, _Item], dict[str, str], dict[str, list[np.ndarray]] | None]:
    """``audio`` and ``faces`` with the heads' scores appended to each item, as live
    (:func:`~realtime_erc.features.head_scores.appended_scores`), and the heads' identities.
    With ``speech_norm = "running"`` the speech scores depend on the utterance, not only on
    the clip: ``audio`` then comes back without them and the last item holds them, per
    dialogue and utterance (of ``corpus`` with ``recipe``), for :func:`_utterance_features`."""
    from realtime_erc.features.head_scores import HEAD_CLASSES, appended_scores
    from realtime_erc.training.head_crossfit import SpeechScores

    speech = SpeechScores(
        data_dir / "ravdess",
        options.train_actors,
        options.valid_actors + options.test_actors,
        options.crossfit_folds,
    )
    running = None
    if options.speech_norm == "running":
        assert corpus is not None and recipe is not None
        running = speech.running_scores(
            (
                (d.id, d.speakers, [u.actor for u in recipe[d.id]], [u.clip for u in recipe[d.id]])
                for d in corpus.dialogues()
            ),
            progress or no_progress,
        )
        probs = {}
    else:
        probs = speech.compute(progress or no_progress)
    scorer = FaceScorer(visual_config, options, fer.images, fer.source)
    face_probs = _cached(
        cache_dir / f"face-head-{scorer.key}",
        [str(r) for r in used_faces],
        scorer,
        "face head",
        progress,
    )
    scorer.close()

    def appended(item: _Item, p: np.ndarray | None, n: int) -> _Item:
        pooled = np.concatenate([item.pooled, appended_scores(item.present, p, n)])
        return _Item(pooled, item.present, item.duration)

    n_audio, n_visual = HEAD_CLASSES["audio"], HEAD_CLASSES["visual"]
    if running is None:
        audio = {k: appended(a, probs.get(k), n_audio) for k, a in audio.items()}
    faces = {
        k: appended(v, face_probs[k].pooled if face_probs[k].present else None, n_visual)
        for k, v in faces.items()
    }
    return audio, faces, {"audio": speech.identity, "visual": scorer.identity}, running


class FaceScorer(VisualExtractor):
    """The packaged face head's probabilities on the live face crop of a rendered FER image
    (absent when MediaPipe finds no face)."""

    def __init__(self, config: Any, options: AssembledOptions, images: np.ndarray, source: Path):
        from realtime_erc.features.face_expression import DEFAULT_CHECKPOINT, FaceExpressionHead

        super().__init__(config, options, images, source)
        self.head = FaceExpressionHead.load()
        digest = hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest()[:12]
        self.identity = f"face-head-{digest}"
        self.key = _short_hash(f"{self.key}-{self.identity}")

    def __call__(self, row: str) -> _Item:
        frame = render_face(self.images[int(row)], self.options.face_canvas, self.options.face_side)
        result = self.extractor.summarize([self.extractor.analyze(frame, 0.0, 0)])
        if result.face_crop is None:
            return _Item(np.zeros(len(self.head.labels), np.float32), False)
        return _Item(self.head.predict(result.face_crop).astype(np.float32), True)


def _utterance_features(
    corpus: ErcCorpus,
    recipe: dict[str, list[UtteranceSource]],
    text: dict[str, np.ndarray],
    text_dim: int,
    audio: dict[str, _Item],
    faces: dict[str, _Item],
    options: AssembledOptions,
    speech: dict[str, list[np.ndarray]] | None = None,
) -> dict[str, list[UtteranceFeatures]]:
    """Per dialogue, one pooled-only :class:`UtteranceFeatures` per utterance, on a timeline of
    the clips' durations separated by ``gap_s``; ``speech``: per dialogue and utterance, the
    speech head's probabilities to append to the audio vector (when they are not per clip)."""
    from realtime_erc.features.head_scores import HEAD_CLASSES, appended_scores

    out: dict[str, list[UtteranceFeatures]] = {}
    for d in corpus.dialogues():
        feats, t = [], 0.0
        for j, (speaker, words, src) in enumerate(
            zip(d.speakers, d.texts, recipe[d.id], strict=True)
        ):
            vec = text.get(words)
            if vec is None:  # empty transcript: absent, as live
                vec, has_text = np.zeros(text_dim, np.float32), False
            else:
                has_text = True
            a, v = audio[src.clip], faces[str(src.face)]
            if speech is not None:
                scores = appended_scores(a.present, speech[d.id][j], HEAD_CLASSES["audio"])
                a = _Item(np.concatenate([a.pooled, scores]), a.present, a.duration)
            end = t + max(a.duration, 0.1)
            feats.append(
                UtteranceFeatures(
                    utterance_id=j,
                    speaker=speaker,
                    start=t,
                    end=end,
                    text=_modality(vec, has_text),
                    audio=_modality(a.pooled, a.present),
                    visual=_modality(v.pooled, v.present),
                    extracted_at=0.0,
                )
            )
            t = end + options.gap_s
        out[d.id] = feats
    return out


def _modality(pooled: np.ndarray, present: bool) -> ModalityFeatures:
    vec = pooled if present else np.zeros_like(pooled)
    return ModalityFeatures(vec, None, None, present=present)


# ----------------------------------------------------------------------------- record + stats


def _write_recipe(
    cache_dir: Path, build: AssembledBuild, options: AssembledOptions, extractor: dict[str, str]
) -> Path:
    """The recipe as JSON (options, extractors, per dialogue: split, speaker → actor, and per
    utterance ``[actor, clip, FER row]``), so a build can be audited and reproduced."""
    key = _short_hash(json.dumps([options.recipe_dict(), VERSION], sort_keys=True))
    suffix = f"-first{options.max_dialogues}" if options.max_dialogues else ""
    path = cache_dir / f"recipe-{key}{suffix}.json"
    doc = {
        "version": VERSION,
        "options": options.recipe_dict() | {"max_dialogues": options.max_dialogues},
        "extractor": extractor,
        "dialogues": {
            d.id: {
                "split": split,
                "actors": build.actors[d.id],
                "utterances": [[u.actor, u.clip, u.face] for u in build.recipe[d.id]],
            }
            for split, ds in build.corpus.splits.items()
            for d in ds
        },
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.rename(path)
    return path


def _statistics(
    build: AssembledBuild,
    options: AssembledOptions,
    faces: dict[str, _Item],
    seconds: dict[str, float],
    recipe_path: Path,
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split, dialogues in build.corpus.splits.items():
        sources = [u for d in dialogues for u in build.recipe[d.id]]
        feats = [f for d in dialogues for f in build.features.of(d)]
        shared = sum(
            1 for d in dialogues if len(set(build.actors[d.id].values())) < len(build.actors[d.id])
        )
        unique_faces = {u.face for u in sources}
        counts = np.bincount([y for d in dialogues for y in d.labels], minlength=7)
        splits[split] = {
            "dialogues": len(dialogues),
            "utterances": len(sources),
            "actors": sorted({u.actor for u in sources}),
            "clips_used": len({u.clip for u in sources}),
            "faces_used": len(unique_faces),
            "face_detection_rate_images": _rate(faces[str(r)].present for r in unique_faces),
            "visual_present": _rate(f.visual.present for f in feats),
            "audio_present": _rate(f.audio.present for f in feats),
            "dialogues_sharing_a_voice": shared,
            "labels": dict(zip(MELD7, counts.tolist(), strict=True)),
        }
    all_faces = {u.face for us in build.recipe.values() for u in us}
    return {
        "corpus": "assembled",
        "version": VERSION,
        "seed": options.seed,
        "splits": splits,
        "face_detection_rate": _rate(faces[str(r)].present for r in all_faces),
        "extractor": build.features.extractor,
        "recipe": str(recipe_path),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def _rate(flags: Iterable[bool]) -> float:
    values = list(flags)
    return round(sum(values) / len(values), 4) if values else 0.0


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
