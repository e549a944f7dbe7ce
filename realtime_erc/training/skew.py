"""Training/serving skew: do the live features equal what the training corpus computes?

:func:`measure_skew` builds a small session in the recording format from RAVDESS clips of the
assembled corpus's held-out actors and FER2013 ``PublicTest`` faces (rendered into video frames
with :func:`~realtime_erc.training.assembled.render_face`, as the corpus renders them), replays
it through the real pipeline (:func:`~realtime_erc.session.plan_replay` /
:func:`~realtime_erc.session.run_session`, the engine wrapped so every
:class:`~realtime_erc.events.UtteranceFeatures` the model receives is kept), and compares per
utterance, against the assembled corpus's extractors on the same clip and image:

=============  =========================================================================
``audio``      eGeMAPS functionals ``[88]`` (corpus: :class:`.AudioExtractor`, the clip cut
               by :func:`~.assembled.voiced_segment`)
``speech``     the speech head's log-probabilities ``[8]`` appended to them (corpus: the
               cross-fitted head of :class:`~.head_crossfit.SpeechScores`, per-actor
               standardisation over all of the actor's clips)
``visual``     MediaPipe face vector ``[64]`` (corpus: :class:`.VisualExtractor`, image mode)
``face``       the face head's log-probabilities ``[7]`` (corpus: :class:`.FaceScorer`)
``final``      the model's probabilities: the live final event against the same model stepped
               over the corpus features of the same utterances (text: the live transcript's
               vector on both sides, speakers: the true ones), so only audio, visual and
               speaker attribution can differ
=============  =========================================================================

Per group: max and median absolute difference (over every value of every matched utterance)
and max and median relative difference (per utterance ``‖live − corpus‖ / ‖corpus‖``), plus how
often the arg-max agrees for the scores. :func:`format_report` renders it as markdown.

Nothing derived from the data is written outside ``workdir`` (a temporary directory in the
tests); the session itself reproduces dataset content and must never be committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.events import SAMPLE_RATE, ModalityFeatures, UtteranceFeatures
from realtime_erc.training.assembled import (
    FER_OF_MELD,
    MELD7,
    AssembledOptions,
    AudioExtractor,
    FaceScorer,
    VisualExtractor,
    face_pools,
    render_face,
)
from realtime_erc.training.dev_sessions import MELD_OF_RAVDESS, STATEMENTS
from realtime_erc.training.emotion_data import DataError

log = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("audio", "speech", "visual", "face", "final")
"""Feature groups compared (see the module docstring)."""

FPS = 10.0
CREATED = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class SkewOptions:
    """The session: ``turns`` clips of ``actors`` (taking turns), each shown with a face of
    its emotion; every draw comes from ``seed``."""

    actors: tuple[int, ...] = (17, 18)
    """Held out from every speech head (the assembled corpus's test actors are 17–20)."""
    turns: int = 12
    seed: int = 0
    gap_s: float = 0.5
    """Digital silence between two clips (each clip keeps its own leading/trailing room tone)."""
    lead_in_s: float = 0.5
    video: bool = True
    fps: float = FPS
    level_db: float | None = None
    """Set every clip's voiced RMS to this level (dBFS), as ``dev_sessions`` does (−23):
    the clips then differ from the corpus's on purpose (None: the clips as they are)."""
    noise_dbfs: float | None = None
    """Gaussian noise over the whole session at this level (``dev_sessions``: −60)."""
    speech_norm: str = "actor"
    """The corpus side's speaker standardisation for the speech head
    (``AssembledOptions.speech_norm``): ``actor`` as the default model's corpus, ``running``
    as a corpus built to match live (the session's turns are one dialogue)."""
    lossless_video: bool = True
    """``video.avi`` in FFV1 (the frames replay bit-exact), else ``video.mp4`` in mp4v as
    :class:`~realtime_erc.sources.recording.RecordingWriter` writes it (``run --record``,
    ``dev_sessions``): lossy, so the faces MediaPipe sees differ from the corpus's renders."""


@dataclass(frozen=True)
class SkewTurn:
    """One utterance of the session: ``clip`` (relative to ``ravdess/``) by ``actor``, spoken
    as ``speaker``; ``face``: the FER2013 row shown while it plays; ``start``/``end``: the clip's
    span on the session clock."""

    speaker: str
    actor: int
    clip: str
    emotion: int
    """0-based RAVDESS class."""
    face: int
    start: float = 0.0
    end: float = 0.0


@dataclass
class CorpusUtterance:
    """What the assembled corpus computes for one turn (vectors as the model sees them)."""

    audio: np.ndarray
    """``[88 + 8]``: eGeMAPS functionals then the speech head's log-probabilities."""
    audio_present: bool
    visual: np.ndarray
    """``[64 + 7]``: the face vector then the face head's log-probabilities."""
    visual_present: bool


@dataclass
class LiveUtterance:
    """What the model received live for one utterance, and what it answered."""

    features: UtteranceFeatures
    scores: dict[str, float]
    turn: int | None = None
    """Index of the turn it overlaps most (None: none)."""


@dataclass
class GroupStats:
    n: int
    abs_max: float
    abs_median: float
    rel_max: float
    rel_median: float
    argmax_agree: float | None = None

    def row(self) -> list[str]:
        agree = "" if self.argmax_agree is None else f"{self.argmax_agree:.0%}"
        return [
            str(self.n),
            f"{self.abs_max:.4g}",
            f"{self.abs_median:.4g}",
            f"{self.rel_max:.3g}",
            f"{self.rel_median:.3g}",
            agree,
        ]


@dataclass
class SkewReport:
    turns: list[SkewTurn]
    live: list[LiveUtterance]
    groups: dict[str, GroupStats]
    matched: int
    """Turns with exactly one live utterance (the only ones compared)."""
    split: int
    """Turns cut into several live utterances."""
    missed: int
    """Turns with no live utterance."""
    speaker_purity: float
    """Share of matched turns whose live speaker is the majority live speaker of their actor,
    with distinct actors on distinct live speakers."""
    speech_right: tuple[int, int] = (0, 0)
    """Matched turns whose RAVDESS emotion is the speech scores' arg-max: live, corpus."""
    live_labels: list[str | None] = field(default_factory=list)
    corpus_labels: list[str | None] = field(default_factory=list)
    true_labels: list[str] = field(default_factory=list)
    per_utterance: list[dict[str, Any]] = field(default_factory=list)
    corpus: list[CorpusUtterance] = field(default_factory=list)
    """The corpus side per turn (faces included even when the session has no video)."""
    stages: list[Any] = field(default_factory=list)
    """The pipeline's stages after the run (the analysis stage holds the heads)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {k: asdict(v) for k, v in self.groups.items()},
            "matched": self.matched,
            "split": self.split,
            "missed": self.missed,
            "speaker_purity": self.speaker_purity,
            "speech_right": list(self.speech_right),
            "live_labels": self.live_labels,
            "corpus_labels": self.corpus_labels,
            "true_labels": self.true_labels,
            "per_utterance": self.per_utterance,
        }


# ----------------------------------------------------------------------------- the session


def plan_turns(data_dir: Path, options: SkewOptions) -> list[SkewTurn]:
    """Turns alternating between ``options.actors``, each a distinct clip of that actor (drawn
    from ``seed``) with a face of the assembled test split's pool, of the clip's emotion."""
    from realtime_erc.training.emotion_data import load_fer, ravdess_clips

    root = Path(data_dir) / "ravdess"
    rng = np.random.default_rng([options.seed, 1913])
    clips = ravdess_clips(root)
    decks = {}
    for actor in options.actors:
        own = [c for c in clips if c.actor == actor]
        if not own:
            raise DataError(f"{root}: no clips of actor {actor}")
        decks[actor] = [own[i] for i in rng.permutation(len(own))]
    fer = load_fer(Path(data_dir) / "fer2013")
    if not len(fer.usage):
        raise DataError(f"{fer.source}: needs the 'usage' array (Training / PublicTest)")
    pools = face_pools(fer.labels, fer.usage, fer.images, AssembledOptions(head_scores=True))
    faces = pools["test"]
    turns = []
    for j in range(options.turns):
        actor = options.actors[j % len(options.actors)]
        clip = decks[actor][j // len(options.actors) % len(decks[actor])]
        rows = faces[FER_OF_MELD[MELD_OF_RAVDESS[clip.emotion]]]
        face = int(rows[int(rng.integers(len(rows)))])
        speaker = chr(ord("A") + options.actors.index(actor))
        turns.append(
            SkewTurn(speaker, actor, clip.path.relative_to(root).as_posix(), clip.emotion, face)
        )
    return turns


def write_session(
    data_dir: Path, turns: Sequence[SkewTurn], out: Path, options: SkewOptions
) -> list[SkewTurn]:
    """Write the session to ``out`` (the recording format); returns the turns with their spans.

    Audio: each whole clip (its own room tone included, bit-exact unless ``level_db``) after
    ``gap_s`` of digital silence; video: the turn's face rendered as the corpus renders it for
    the whole clip, a blank grey frame in the gaps."""
    import soundfile as sf

    from realtime_erc.sources.recording import Annotation, RecordingWriter, Speaker

    root = Path(data_dir) / "ravdess"
    audio_parts, placed = [np.zeros(round(options.lead_in_s * SAMPLE_RATE), np.float32)], []
    cursor = len(audio_parts[0])
    for turn in turns:
        x, rate = sf.read(str(root / turn.clip), dtype="float32", always_2d=False)
        if rate != SAMPLE_RATE or x.ndim != 1:
            raise DataError(f"{root / turn.clip}: expected 16 kHz mono (the bundle's format)")
        if options.level_db is not None:
            from realtime_erc.training.dev_sessions import level

            x = level(x, options.level_db)
        placed.append(
            replace(turn, start=cursor / SAMPLE_RATE, end=(cursor + len(x)) / SAMPLE_RATE)
        )
        audio_parts.append(x)
        gap = np.zeros(round(options.gap_s * SAMPLE_RATE), np.float32)
        audio_parts.append(gap)
        cursor += len(x) + len(gap)
    audio = np.concatenate(audio_parts)
    if options.noise_dbfs is not None:
        rng = np.random.default_rng([options.seed, 7])
        audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * np.float32(
            10 ** (options.noise_dbfs / 20)
        )
    fer = _fer_images(data_dir)
    speakers = sorted({t.speaker for t in turns})
    actor_of = {t.speaker: t.actor for t in turns}
    mp4 = options.video and not options.lossless_video
    with RecordingWriter(
        out,
        "skew",
        fps=options.fps if mp4 else None,
        speakers=[Speaker(s, f"RAVDESS actor {actor_of[s]}") for s in speakers],
        label_set="meld7",
        source="realtime-erc skew session (realtime_erc/training/skew.py): RAVDESS clips "
        "(CC BY-NC-SA 4.0) and FER2013 faces (research use only); never commit it",
        created=CREATED,
    ) as writer:
        block = SAMPLE_RATE // 2
        for i in range(0, len(audio), block):
            writer.write_audio(audio[i : i + block])
        if mp4:
            for t, frame in _frames(placed, fer, len(audio) / SAMPLE_RATE, options.fps):
                writer.write_frame(frame, t)
        for i, turn in enumerate(placed):
            meld = MELD_OF_RAVDESS[turn.emotion]
            writer.write_annotation(
                Annotation(
                    i,
                    turn.speaker,
                    round(turn.start, 3),
                    round(turn.end, 3),
                    _statement(turn.clip),
                    MELD7[meld],
                )
            )
    if options.video and options.lossless_video:
        _write_lossless_video(out, _frames(placed, fer, len(audio) / SAMPLE_RATE, options.fps))
    (out / "skew_turns.json").write_text(json.dumps([asdict(t) for t in placed], indent=1))
    return placed


def _frames(
    placed: Sequence[SkewTurn], fer: np.ndarray, duration_s: float, fps: float
) -> Iterator[tuple[float, np.ndarray]]:
    """``(time, frame)``: the face of the turn playing at that time, rendered as the corpus
    renders it, else a blank grey frame."""
    corpus = AssembledOptions()
    blank = np.full((*corpus.face_canvas, 3), 110, np.uint8)
    rendered: dict[int, np.ndarray] = {}
    for i in range(int(duration_s * fps) + 1):
        t = i / fps
        turn = next((p for p in placed if p.start <= t < p.end), None)
        if turn is None:
            yield t, blank
            continue
        if turn.face not in rendered:
            rendered[turn.face] = render_face(fer[turn.face], corpus.face_canvas, corpus.face_side)
        yield t, rendered[turn.face]


def _write_lossless_video(out: Path, frames: Iterator[tuple[float, np.ndarray]]) -> None:
    """``video.avi`` (FFV1, lossless) with ``video_times.csv``, declared in ``session.json``."""
    import cv2

    from realtime_erc.sources.recording import SESSION_FILE, TIMES_FILE

    writer = None
    times = []
    try:
        for t, frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(
                    str(out / "video.avi"), cv2.VideoWriter.fourcc(*"FFV1"), 30.0, (w, h)
                )
                if not writer.isOpened():
                    raise RuntimeError("OpenCV cannot write FFV1 video (lossless_video=False)")
            writer.write(np.ascontiguousarray(frame))
            times.append(f"{t:.6f}\n")
    finally:
        if writer is not None:
            writer.release()
    (out / TIMES_FILE).write_text("".join(times))
    meta = json.loads((out / SESSION_FILE).read_text())
    meta["video"] = {"file": "video.avi", "fps": None}
    (out / SESSION_FILE).write_text(json.dumps(meta, indent=1))


def _statement(clip: str) -> str:
    """What a RAVDESS clip says (its file name's statement code)."""
    return STATEMENTS[int(Path(clip).stem.split("-")[4])]


_FER_CACHE: dict[str, np.ndarray] = {}


def _fer_images(data_dir: Path) -> np.ndarray:
    from realtime_erc.training.emotion_data import load_fer

    key = str(Path(data_dir).resolve())
    if key not in _FER_CACHE:
        _FER_CACHE[key] = load_fer(Path(data_dir) / "fer2013").images
    return _FER_CACHE[key]


# ----------------------------------------------------------------------------- live side


class CapturingEngine:
    """Wraps an :class:`~realtime_erc.engine.Engine`: every ``step`` is delegated, and the
    features it received and the prediction it returned are kept in :attr:`steps`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.steps: list[tuple[UtteranceFeatures, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def step(self, session_id: str, utterance: UtteranceFeatures) -> Any:
        prediction = self.engine.step(session_id, utterance)
        self.steps.append((utterance, prediction))
        return prediction


@dataclass
class LiveRun:
    utterances: list[LiveUtterance]
    stages: list[Any]
    """The pipeline's stages after the run (the analysis stage keeps its heads' state)."""


def replay_live(
    session_dir: Path,
    overrides: Sequence[str] = (),
    prepare: Callable[[list[Any]], None] | None = None,
) -> LiveRun:
    """Replay ``session_dir`` through the real pipeline (as fast as possible, no outputs but
    the capture); ``overrides``: ``section.key=value`` settings; ``prepare(stages)`` may adjust
    the built stages before the run (e.g. swap a head to measure a fix)."""
    from realtime_erc.config import load_config
    from realtime_erc.inference import InferenceStage
    from realtime_erc.pipeline import find_stage
    from realtime_erc.session import plan_replay, run_session

    config = load_config(
        # the model trained on the corpus's features, as it is (the default is text + fusion)
        overrides=[
            "replay.speed=max",
            "output.zmq.enabled=false",
            "model.checkpoint=assembled",
            "fusion.mode=off",
            *overrides,
        ],  # fmt: skip
    )
    plan = plan_replay(Path(session_dir), config)
    inference = find_stage(plan.stages, InferenceStage)
    if inference.engine is None:
        raise ValueError("the skew check needs a model (model.checkpoint is none)")
    capture = CapturingEngine(inference.engine)
    inference.engine = capture
    if prepare is not None:
        prepare(plan.stages)
    asyncio.run(run_session(plan, config))
    live = [LiveUtterance(feats, dict(prediction.scores)) for feats, prediction in capture.steps]
    return LiveRun(live, plan.stages)


# ----------------------------------------------------------------------------- corpus side


def corpus_features(
    data_dir: Path,
    turns: Sequence[SkewTurn],
    features_config: Any = None,
    speech_norm: str = "actor",
) -> list[CorpusUtterance]:
    """Per turn, the assembled corpus's vectors (``features.heads = "scores"``) of its clip and
    image: the extractors and heads of :mod:`.assembled` and :mod:`.head_crossfit`
    (``speech_norm``: as ``AssembledOptions.speech_norm``, the turns being one dialogue)."""
    from realtime_erc.config import FeaturesConfig
    from realtime_erc.features.head_scores import HEAD_CLASSES, appended_scores
    from realtime_erc.training.emotion_data import load_fer

    config = features_config or FeaturesConfig()
    data_dir = Path(data_dir)
    options = AssembledOptions(head_scores=True)
    fer = load_fer(data_dir / "fer2013")
    audio_x = AudioExtractor(config.audio, data_dir / "ravdess")
    visual_x = VisualExtractor(config.visual, options, fer.images, fer.source)
    scorer = FaceScorer(config.visual, options, fer.images, fer.source)
    actors = tuple(sorted({t.actor for t in turns}))
    if speech_norm == "running":
        per_turn = dict(enumerate(running_speech_scores(data_dir, turns)))
    else:
        by_clip = speech_scores(data_dir, actors)
        per_turn = {k: by_clip[t.clip] for k, t in enumerate(turns)}
    out = []
    try:
        for k, turn in enumerate(turns):
            a = audio_x(turn.clip)
            v = visual_x(str(turn.face))
            f = scorer(str(turn.face))
            p = per_turn[k]
            audio = np.concatenate([a.pooled, appended_scores(a.present, p, HEAD_CLASSES["audio"])])
            face_probs = f.pooled if f.present else None
            visual = np.concatenate(
                [v.pooled, appended_scores(v.present, face_probs, HEAD_CLASSES["visual"])]
            )
            out.append(CorpusUtterance(audio, a.present, visual, v.present))
    finally:
        visual_x.close()
        scorer.close()
    return out


def speech_scores(data_dir: Path, actors: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The assembled corpus's speech-head probabilities for the clips of held-out ``actors``
    (the head fitted on all training actors; per-actor standardisation over all their clips)."""
    from realtime_erc.training.head_crossfit import SpeechScores

    options = AssembledOptions(head_scores=True)
    scores = SpeechScores(
        Path(data_dir) / "ravdess", options.train_actors, actors, options.crossfit_folds
    )
    return scores.compute(eval_only=True)


def running_speech_scores(data_dir: Path, turns: Sequence[SkewTurn]) -> list[np.ndarray]:
    """The speech-head probabilities a corpus built with ``speech_norm = "running"`` gives the
    turns taken as one dialogue (true speakers, in order)."""
    from realtime_erc.training.head_crossfit import SpeechScores

    options = AssembledOptions(head_scores=True)
    actors = tuple(sorted({t.actor for t in turns}))
    scores = SpeechScores(
        Path(data_dir) / "ravdess", options.train_actors, actors, options.crossfit_folds
    )
    dialogue = (
        "skew",
        [t.speaker for t in turns],
        [t.actor for t in turns],
        [t.clip for t in turns],
    )
    return scores.running_scores([dialogue])["skew"]


# ----------------------------------------------------------------------------- comparison


def match_turns(live: Sequence[LiveUtterance], turns: Sequence[SkewTurn]) -> None:
    """Set each live utterance's ``turn``: the turn whose clip it overlaps most."""
    for utt in live:
        best, best_overlap = None, 0.0
        for k, turn in enumerate(turns):
            overlap = min(utt.features.end, turn.end) - max(utt.features.start, turn.start)
            if overlap > best_overlap:
                best, best_overlap = k, overlap
        utt.turn = best


def corpus_steps(
    engine: Any,
    live: Sequence[LiveUtterance],
    turns: Sequence[SkewTurn],
    corpus: Sequence[CorpusUtterance],
) -> list[dict[str, float]]:
    """The model stepped over the live utterances in order with each matched one's audio and
    visual vectors replaced by the corpus's and its speaker by the true one (text stays the
    live transcript's): what the model would have said had the live features been the
    corpus's."""
    from realtime_erc.engine import Engine

    fresh = Engine(engine.model, engine.device)  # its own sessions, the same weights
    session = "skew-corpus"
    fresh.end_session(session)
    out = []
    for utt in live:
        f = utt.features
        if utt.turn is not None:
            c, turn = corpus[utt.turn], turns[utt.turn]
            f = UtteranceFeatures(
                utterance_id=f.utterance_id,
                speaker=turn.speaker,
                start=f.start,
                end=f.end,
                text=f.text,
                audio=_modality(c.audio, c.audio_present),
                visual=_modality(c.visual, c.visual_present),
                extracted_at=0.0,
            )
        out.append(dict(fresh.step(session, f).scores))
    fresh.end_session(session)
    return out


def _modality(pooled: np.ndarray, present: bool) -> ModalityFeatures:
    vec = pooled.astype(np.float32) if present else np.zeros_like(pooled, np.float32)
    return ModalityFeatures(vec, None, None, present=present)


def compare(
    turns: Sequence[SkewTurn],
    live: Sequence[LiveUtterance],
    corpus: Sequence[CorpusUtterance],
    corpus_scores: Sequence[dict[str, float]],
    audio_dim: int = 88,
    visual_dim: int = 64,
) -> SkewReport:
    """Per feature group, the differences between live and corpus on the matched turns."""
    per_turn: dict[int, list[int]] = {}
    for i, utt in enumerate(live):
        if utt.turn is not None:
            per_turn.setdefault(utt.turn, []).append(i)
    matched = _matched(live)
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {g: [] for g in GROUPS}
    rows = []
    for k, i in sorted(matched.items()):
        f, c = live[i].features, corpus[k]
        row: dict[str, Any] = {
            "turn": k,
            "clip": turns[k].clip,
            "speaker": turns[k].speaker,
            "live_speaker": f.speaker,
            "cut": [round(f.start - turns[k].start, 3), round(f.end - turns[k].start, 3)],
            "present": {
                "audio": [bool(f.audio.present), c.audio_present],
                "visual": [bool(f.visual.present), c.visual_present],
            },
        }
        audio = f.audio.present or c.audio_present
        visual = f.visual.present or c.visual_present
        groups = {
            "audio": (f.audio.pooled[:audio_dim], c.audio[:audio_dim], audio),
            "speech": (f.audio.pooled[audio_dim:], c.audio[audio_dim:], audio),
            "visual": (f.visual.pooled[:visual_dim], c.visual[:visual_dim], visual),
            "face": (f.visual.pooled[visual_dim:], c.visual[visual_dim:], visual),
        }
        for name, (a, b, either) in groups.items():
            if not either:  # absent on both sides: nothing to compare
                continue
            pairs[name].append((np.asarray(a, np.float64), np.asarray(b, np.float64)))
            row[name] = _rel(a, b)
        labels = list(live[i].scores)
        a = np.array([live[i].scores[x] for x in labels])
        b = np.array([corpus_scores[i][x] for x in labels])
        pairs["final"].append((a, b))
        row["final"] = _rel(a, b)
        rows.append(row)
    stats = {g: _stats(pairs[g], argmax=g in ("speech", "face", "final")) for g in GROUPS}
    purity = _purity(live, turns, matched)
    live_labels = [_argmax(live[i].scores) for _, i in sorted(matched.items())]
    corpus_labels = [_argmax(corpus_scores[i]) for _, i in sorted(matched.items())]
    true_labels = [MELD7[MELD_OF_RAVDESS[turns[k].emotion]] for k in sorted(matched)]
    speech_right = tuple(
        sum(
            int(np.argmax(vec[k][audio_dim:])) == turns[k].emotion and present[k]
            for k in sorted(matched)
        )
        for vec, present in (
            ({k: live[i].features.audio.pooled for k, i in matched.items()},
             {k: live[i].features.audio.present for k, i in matched.items()}),
            ({k: corpus[k].audio for k in matched}, {k: corpus[k].audio_present for k in matched}),
        )
    )  # fmt: skip
    return SkewReport(
        list(turns),
        list(live),
        stats,
        matched=len(matched),
        split=sum(1 for v in per_turn.values() if len(v) > 1),
        missed=len(turns) - len(per_turn),
        speaker_purity=purity,
        speech_right=speech_right,  # type: ignore[arg-type]
        live_labels=live_labels,
        corpus_labels=corpus_labels,
        true_labels=true_labels,
        per_utterance=rows,
    )


def _argmax(scores: dict[str, float]) -> str | None:
    return max(scores, key=scores.__getitem__) if scores else None


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-9))


def _stats(pairs: list[tuple[np.ndarray, np.ndarray]], argmax: bool) -> GroupStats:
    if not pairs:
        return GroupStats(0, float("nan"), float("nan"), float("nan"), float("nan"))
    diffs = np.concatenate([np.abs(a - b) for a, b in pairs])
    rel = np.array([_rel(a, b) for a, b in pairs])
    agree = None
    if argmax:
        agree = float(np.mean([int(np.argmax(a)) == int(np.argmax(b)) for a, b in pairs]))
    return GroupStats(
        len(pairs),
        float(diffs.max()),
        float(np.median(diffs)),
        float(rel.max()),
        float(np.median(rel)),
        agree,
    )


def _purity(
    live: Sequence[LiveUtterance], turns: Sequence[SkewTurn], matched: dict[int, int]
) -> float:
    """Share of matched turns attributed to their actor's majority live speaker (a live speaker
    that is the majority of two actors counts for one of them only)."""
    if not matched:
        return 0.0
    by_actor: dict[int, list[str]] = {}
    for k, i in matched.items():
        by_actor.setdefault(turns[k].actor, []).append(live[i].features.speaker)
    used: set[str] = set()
    right = 0
    for names in sorted(by_actor.values(), key=len, reverse=True):
        counts = {n: names.count(n) for n in set(names) - used}
        if counts:
            best = max(counts, key=counts.__getitem__)
            used.add(best)
            right += counts[best]
    return right / len(matched)


# ----------------------------------------------------------------------------- entry point


def measure_skew(
    data_dir: Path,
    workdir: Path,
    options: SkewOptions | None = None,
    overrides: Sequence[str] = (),
    prepare: Callable[[list[Any]], None] | None = None,
    corpus: list[CorpusUtterance] | None = None,
) -> SkewReport:
    """Build the session under ``workdir``, replay it, compute the corpus side and compare.

    ``corpus`` reuses corpus features computed before for the same turns (they do not depend
    on the live pipeline)."""
    options = options or SkewOptions()
    data_dir = Path(data_dir)
    turns = plan_turns(data_dir, options)
    session = Path(workdir) / "session"
    if session.exists():
        import shutil

        shutil.rmtree(session)
    turns = write_session(data_dir, turns, session, options)
    run = replay_live(session, overrides, prepare)
    match_turns(run.utterances, turns)
    if corpus is None:
        corpus = corpus_features(data_dir, turns, speech_norm=options.speech_norm)
    seen = corpus
    if not options.video:  # no camera: the corpus's utterances without a face
        seen = [replace(c, visual=np.zeros_like(c.visual), visual_present=False) for c in corpus]
    emit_engine = engine_of(run.stages)
    scores = corpus_steps(emit_engine, run.utterances, turns, seen)
    report = compare(turns, run.utterances, seen, scores)
    report.corpus = corpus
    report.stages = run.stages
    return report


def engine_of(stages: list[Any]) -> Any:
    """The inference stage's engine (unwrapped from its :class:`CapturingEngine`)."""
    from realtime_erc.inference import InferenceStage
    from realtime_erc.pipeline import find_stage

    engine = find_stage(stages, InferenceStage).engine
    return engine.engine if isinstance(engine, CapturingEngine) else engine


def speech_breakdown(data_dir: Path, report: SkewReport) -> dict[str, GroupStats]:
    """The live speech scores' difference from the corpus's, taken apart: each row recomputes
    the matched turns' scores offline from the run's own segments, changing one cause at a
    time (and compares them with the corpus's as :func:`compare` does):

    - ``live``: what the model received;
    - ``replica``: the live head with a fresh running normaliser over the live utterances in
      order, under their attributed speakers (equals ``live`` unless something else differs);
    - ``true speakers``: the same under the true speakers (attribution's share);
    - ``true speakers, whole clip``: and on the whole clip instead of the live segment (the
      segmenter's cut's share; what stays is the causal normalisation's);
    - ``actor stats, live segment``: standardised over all of the actor's clips, as the
      corpus, on the live segment;
    - ``packaged head, actor stats, clip`` and ``live head, actor stats, clip``: the corpus's
      own computation with either head (the latter is the corpus when the live head is the
      corpus's).
    """
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.features.head_scores import HEAD_CLASSES
    from realtime_erc.features.speech_emotion import SpeakerNormalizer, SpeechEmotionHead
    from realtime_erc.pipeline import find_stage
    from realtime_erc.training.emotion_data import ravdess_clips
    from realtime_erc.training.speech_trainer import clip_features

    analysis = find_stage(report.stages, AnalysisStage)
    head = analysis.scores_speech_head or analysis.speech_head
    packaged = SpeechEmotionHead.load()
    turns, live, corpus = report.turns, report.live, report.corpus
    n = HEAD_CLASSES["audio"]
    root = Path(data_dir) / "ravdess"
    actors = sorted({t.actor for t in turns})
    clips = [c for c in ravdess_clips(root) if c.actor in actors]
    raw = clip_features(clips, head.feature_options)
    # the packaged head may read other features than the corpus's (eGeMAPS): its own then
    raw_packaged = (
        raw
        if packaged.feature_options == head.feature_options
        else clip_features(clips, packaged.feature_options)
    )
    of_actor = np.array([c.actor for c in clips])
    row = {c.path.relative_to(root).as_posix(): i for i, c in enumerate(clips)}

    def actor_stats(x: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {a: (x[of_actor == a].mean(0), np.maximum(x[of_actor == a].std(0), 1e-6))
                for a in actors}  # fmt: skip

    stats, stats_packaged = actor_stats(raw), actor_stats(raw_packaged)
    segments = [head.extractor.features(u.features.utterance.segment.samples) for u in live]

    def log_scores(h: SpeechEmotionHead, z: np.ndarray) -> np.ndarray:
        p = h.predict_normalized(np.asarray(z, np.float32)[None])[0]
        return np.log(np.clip(p, 1e-4, 1.0))

    def running(speaker_of: Callable[[int], str], inputs: Callable[[int], np.ndarray]) -> dict:
        prior = head.normalizer
        norm = SpeakerNormalizer(prior.prior_mean, np.sqrt(prior.prior_var), prior.prior_count)
        return {
            i: log_scores(head, norm.normalize(speaker_of(i), inputs(i))) for i in range(len(live))
        }

    def actor_std(h: SpeechEmotionHead, i: int, x: np.ndarray, by_actor=stats) -> np.ndarray:
        mean, std = by_actor[turns[live[i].turn].actor]  # type: ignore[index]
        return log_scores(h, (x - mean) / std)

    true = {i: turns[u.turn].speaker if u.turn is not None else u.features.speaker
            for i, u in enumerate(live)}  # fmt: skip
    clip_of = {i: raw[row[turns[u.turn].clip]] if u.turn is not None else segments[i]
               for i, u in enumerate(live)}  # fmt: skip
    variants: dict[str, dict[int, np.ndarray]] = {
        "live": {i: np.asarray(u.features.audio.pooled[-n:]) for i, u in enumerate(live)},
        "replica": running(lambda i: live[i].features.speaker, lambda i: segments[i]),
        "true speakers": running(true.__getitem__, lambda i: segments[i]),
        "true speakers, whole clip": running(true.__getitem__, clip_of.__getitem__),
    }
    matched = _matched(live)
    variants["actor stats, live segment"] = {
        i: actor_std(head, i, segments[i]) for i in matched.values()
    }
    variants["packaged head, actor stats, clip"] = {
        i: actor_std(packaged, i, raw_packaged[row[turns[k].clip]], stats_packaged)
        for k, i in matched.items()
    }
    variants["live head, actor stats, clip"] = {
        i: actor_std(head, i, clip_of[i]) for i in matched.values()
    }
    return {
        name: _stats(
            [
                (np.asarray(v[i], np.float64), corpus[k].audio[-n:].astype(np.float64))
                for k, i in sorted(matched.items())
                if corpus[k].audio_present
            ],
            argmax=True,
        )  # fmt: skip
        for name, v in variants.items()
    }


def _matched(live: Sequence[LiveUtterance]) -> dict[int, int]:
    """Turn → index of its live utterance, for turns with exactly one."""
    per_turn: dict[int, list[int]] = {}
    for i, utt in enumerate(live):
        if utt.turn is not None:
            per_turn.setdefault(utt.turn, []).append(i)
    return {k: v[0] for k, v in per_turn.items() if len(v) == 1}


def format_stats(stats: dict[str, GroupStats], first: str = "group") -> str:
    """A markdown table of :class:`GroupStats` rows."""
    lines = [
        f"| {first} | n | abs max | abs median | rel max | rel median | arg-max agrees |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join([name, *s.row()]) + " |" for name, s in stats.items()]
    return "\n".join(lines)


def format_report(report: SkewReport, title: str = "") -> str:
    """The per-group table (markdown) and the segmentation/attribution counts."""
    lines = [f"### {title}", ""] if title else []
    lines.append(format_stats(report.groups))
    correct_live = sum(a == t for a, t in zip(report.live_labels, report.true_labels, strict=True))
    correct_corpus = sum(
        a == t for a, t in zip(report.corpus_labels, report.true_labels, strict=True)
    )
    lines += [
        "",
        f"turns {len(report.turns)}: matched {report.matched}, split {report.split}, "
        f"missed {report.missed}; speaker purity {report.speaker_purity:.0%}; speech scores "
        f"right (8 classes) live {report.speech_right[0]}/{report.matched}, corpus "
        f"{report.speech_right[1]}/{report.matched}; final label right (meld7) live "
        f"{correct_live}/{report.matched}, on corpus features {correct_corpus}/{report.matched}",
    ]
    return "\n".join(lines)
