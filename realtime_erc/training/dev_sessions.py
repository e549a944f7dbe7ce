"""Development sessions: recordings that go through the real pipeline (``replay`` /
``evaluate-session``), built from the datasets of the data directory (never committed).

Two disjoint halves, ``valid`` and ``test``, each with one folder per condition
(``<out>/<half>/<condition>/<session_id>/``, the recording format plus a ``dev_session.json``
recipe):

- ``voice``: two RAVDESS actors the packaged speech head never heard (valid 17–18, test 19–20)
  taking turns, each turn one of their own clips (the wording is neutral, the voice carries the
  emotion); label set ``meld7`` (RAVDESS emotions mapped by name, calm → neutral); no video.
- ``words``: MELD (``meld7``) and IEMOCAP (``iemocap6``) dialogues of the half's split (a
  contiguous window of at most ``max_utterances``), voiced by espeak-ng with one voice per
  speaker and plain prosody on every line: only the words carry the emotion; no video.
- ``words_face``: the same dialogues with a video track showing a FER2013 ``PublicTest`` face on
  part of the utterances, whose emotion matches the utterance's only with some probability.
- ``mixed``: the same MELD dialogues where some turns are spoken by a RAVDESS actor of the half
  (one per dialogue speaker) with a clip of the utterance's emotion; such a turn's text is the
  RAVDESS statement.

Valid and test are disjoint by actor, dialogue (MELD/IEMOCAP valid vs test splits) and face
image (the assembled benchmark's valid and test thirds of FER ``PublicTest``: duplicates removed,
and never seen by the packaged models, whose training used the other third). Every draw comes
from a generator seeded by ``(seed, half, condition, index)``, so a run is reproducible from its
seed and a smaller run (``limit``) is a subset of a larger one.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.events import SAMPLE_RATE
from realtime_erc.sources.recording import Annotation, RecordingWriter, Speaker
from realtime_erc.training.assembled import (
    FER_OF_MELD,
    RAVDESS_OF_MELD,
    AssembledOptions,
    face_pools,
    render_face,
    voiced_segment,
)
from realtime_erc.training.corpus import Dialogue
from realtime_erc.training.emotion_data import DataError

log = logging.getLogger(__name__)

HALVES: tuple[str, ...] = ("valid", "test")
CONDITIONS: tuple[str, ...] = ("voice", "words", "words_face", "mixed")
ACTORS: dict[str, tuple[int, int]] = {"valid": (17, 18), "test": (19, 20)}
"""RAVDESS actors per half: held out from the packaged speech head (trained on actors 1-16)."""

RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
MELD7 = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
MELD_OF_RAVDESS: dict[int, int] = {r: m for m, rs in RAVDESS_OF_MELD.items() for r in rs}
"""0-based RAVDESS class → MELD-7 class, by name (neutral and calm → neutral, happy → joy, ...):
the inverse of the assembled benchmark's :data:`RAVDESS_OF_MELD`."""

STATEMENTS: dict[int, str] = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
"""RAVDESS statement code → what is said."""

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_OF_LABEL: dict[str, dict[str, int]] = {
    "meld7": {MELD7[m]: f for m, f in FER_OF_MELD.items()},
    "iemocap6": {"happy": 3, "excited": 3, "sad": 4, "neutral": 6, "angry": 0, "frustrated": 0},
}
"""Label set → emotion name → the FER2013 class of a face that "matches" it (IEMOCAP's excited
shows happy, frustrated shows angry: FER has no closer expression)."""

# espeak-ng voice, base pitch (0-99), gender: distinct accents, variants and pitches
VOICES: tuple[tuple[str, int, str], ...] = (
    ("en-us+m3", 40, "M"),
    ("en-us+f3", 55, "F"),
    ("en-gb+m1", 45, "M"),
    ("en-gb+f4", 62, "F"),
    ("en-gb-scotland+m4", 35, "M"),
    ("en-gb-x-rp+f2", 70, "F"),
    ("en-029+m2", 50, "M"),
    ("en-us+f5", 58, "F"),
    ("en-us-nyc+m7", 30, "M"),
)
WORDS_PER_MINUTE = 155  # the demo's neutral prosody
AMPLITUDE = 55

FPS = 10.0
LEAD_IN_S = 0.6
TAIL_S = 1.0
GAP_S = (0.8, 1.5)
NOISE_DBFS = -60.0
TARGET_RMS_DB = -23.0
"""Every turn's voiced RMS is set to this level (RAVDESS turns keep up to ±6 dB of their
actor's own loudness range, so anger stays louder than sadness)."""
RAVDESS_RANGE_DB = 6.0
RAVDESS_TRIM_DB = 35.0
MAX_PAUSE_S = 0.2
SILENCE_THRESHOLD = 0.002
CREATED = "2026-01-01T00:00:00Z"
"""Fixed creation time: a run is byte-for-byte reproducible from its seed."""
RECIPE_FILE = "dev_session.json"

INPUTS: tuple[str, ...] = (
    "erc_text/meld.pkl",
    "erc_text/iemocap.pkl",
    "ravdess/index.csv",
    "fer2013/fer2013_train_publictest.npz",
)
"""What the sessions are made from, under the data directory."""


def missing_inputs(data_dir: Path) -> list[str]:
    """The :data:`INPUTS` absent from ``data_dir``, plus ``espeak-ng`` when it is not installed."""
    missing = [p for p in INPUTS if not (Path(data_dir) / p).exists()]
    return missing + ([] if shutil.which("espeak-ng") else ["espeak-ng"])


LICENCES = {
    "ravdess": "RAVDESS CC BY-NC-SA 4.0 (Livingstone & Russo 2018)",
    "meld": "MELD GPL-3.0, text from the TV series Friends (Poria et al. 2019)",
    "iemocap": "IEMOCAP transcripts, research use only, no redistribution (Busso et al. 2008)",
    "fer": "FER2013 research use only (Goodfellow et al. 2013)",
}


@dataclass(frozen=True)
class DevOptions:
    """How many sessions and how they are drawn (``limit`` caps every count)."""

    seed: int = 0
    voice_sessions: int = 10
    meld_dialogues: int = 10
    iemocap_dialogues: int = 6
    mixed_dialogues: int = 10
    max_utterances: int = 12
    """Turns per ``voice`` session; longest window of a dialogue for the others."""
    min_utterances: int = 3
    """Dialogues shorter than this are not drawn."""
    face_share: float = 0.6
    face_match: float = 0.5
    mixed_share: float = 0.4
    halves: tuple[str, ...] = HALVES
    conditions: tuple[str, ...] = CONDITIONS

    def limited(self, limit: int | None) -> DevOptions:
        if not limit:
            return self
        return replace(
            self,
            voice_sessions=min(self.voice_sessions, limit),
            meld_dialogues=min(self.meld_dialogues, limit),
            iemocap_dialogues=min(self.iemocap_dialogues, limit),
            mixed_dialogues=min(self.mixed_dialogues, limit),
        )


@dataclass(frozen=True)
class Turn:
    """One utterance of a planned session: voiced by espeak-ng (``voice``) or a RAVDESS clip
    (``clip``, relative to ``ravdess/``, spoken by ``actor``); ``face``: the FER2013 row shown
    while it is spoken (``words_face``), with its class name in ``face_emotion``."""

    speaker: str
    emotion: str
    text: str
    voice: str | None = None
    clip: str | None = None
    actor: int | None = None
    face: int | None = None
    face_emotion: str | None = None


@dataclass
class SessionPlan:
    session_id: str
    half: str
    condition: str
    label_set: str
    speakers: list[Speaker]
    turns: list[Turn]
    source: str
    recipe: dict[str, Any] = field(default_factory=dict)
    """Where it comes from: corpus, dialogue id, window, actors (in ``dev_session.json``)."""

    @property
    def video(self) -> bool:
        return self.condition == "words_face"

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "half": self.half,
            "condition": self.condition,
            "label_set": self.label_set,
            "speakers": [{"id": s.id, "name": s.name} for s in self.speakers],
            **self.recipe,
            "turns": [asdict(t) for t in self.turns],
        }


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class RavdessClip:
    path: str
    """Relative to the RAVDESS directory."""
    actor: int
    emotion: int
    """0-based RAVDESS class."""
    statement: int


@dataclass
class DevData:
    """What the plans draw from: corpora with splits, RAVDESS clips, FER face pools per half."""

    data_dir: Path
    meld: Any  # ErcCorpus
    iemocap: Any  # ErcCorpus
    clips: list[RavdessClip]
    faces: dict[str, dict[int, np.ndarray]]
    """Half → FER class → rows."""
    fer_images: np.ndarray

    @property
    def ravdess_dir(self) -> Path:
        return self.data_dir / "ravdess"


def load_dev_data(data_dir: Path) -> DevData:
    """Read the corpora, the RAVDESS index and the FER face pools from ``data_dir``."""
    from realtime_erc.training.datasets import load_text_corpus
    from realtime_erc.training.emotion_data import load_fer, ravdess_clips

    data_dir = Path(data_dir)
    meld = load_text_corpus("meld", data_dir)
    iemocap = load_text_corpus("iemocap", data_dir)
    root = data_dir / "ravdess"
    clips = []
    for c in ravdess_clips(root):
        parts = c.path.stem.split("-")
        clips.append(
            RavdessClip(c.path.relative_to(root).as_posix(), c.actor, c.emotion, int(parts[4]))
        )
    fer = load_fer(data_dir / "fer2013")
    if not len(fer.usage):
        raise DataError(f"{fer.source}: needs the 'usage' array (Training / PublicTest)")
    # The assembled benchmark's valid/test thirds of PublicTest (seed 0, as the packaged model):
    # never trained on by the face head (FER Training) nor by the conversation model.
    pools = face_pools(fer.labels, fer.usage, fer.images, AssembledOptions(head_scores=True))
    return DevData(data_dir, meld, iemocap, clips, {h: pools[h] for h in HALVES}, fer.images)


# ----------------------------------------------------------------------------- plans


def _rng(options: DevOptions, half: str, *parts: int) -> np.random.Generator:
    return np.random.default_rng([options.seed, HALVES.index(half), *parts])


def plan_sessions(data: DevData, options: DevOptions) -> list[SessionPlan]:
    """Every session of ``options`` (halves × conditions), without rendering anything."""
    plans: list[SessionPlan] = []
    for half in options.halves:
        if half not in HALVES:
            raise ValueError(f"unknown half {half!r}: use {', '.join(HALVES)}")
        words = _dialogue_plans(data, options, half)
        for condition in options.conditions:
            if condition == "voice":
                plans += _voice_plans(data, options, half)
            elif condition == "words":
                plans += words
            elif condition == "words_face":
                plans += [_with_faces(data, options, p) for p in words]
            elif condition == "mixed":
                meld = [p for p in words if p.recipe["corpus"] == "meld"]
                plans += [
                    _mixed(data, options, p, k)
                    for k, p in enumerate(meld[: options.mixed_dialogues])
                ]
            else:
                raise ValueError(f"unknown condition {condition!r}: use {', '.join(CONDITIONS)}")
    return plans


def _voice_plans(data: DevData, options: DevOptions, half: str) -> list[SessionPlan]:
    """Each actor's clips shuffled once and dealt out in order, so the sessions of a half use
    every clip before any repeats; turns alternate, the first speaker alternates by session."""
    rng = _rng(options, half, 0)
    actors = ACTORS[half]
    decks = {}
    for actor in actors:
        own = [c for c in data.clips if c.actor == actor]
        if not own:
            raise DataError(f"{data.ravdess_dir}: no clips of actor {actor}")
        decks[actor] = [own[i] for i in rng.permutation(len(own))]
    plans = []
    dealt = dict.fromkeys(actors, 0)
    for k in range(options.voice_sessions):
        order = actors if k % 2 == 0 else actors[::-1]
        ids = {actors[0]: "A", actors[1]: "B"}
        turns = []
        for j in range(options.max_utterances):
            actor = order[j % 2]
            deck = decks[actor]
            clip = deck[dealt[actor] % len(deck)]
            dealt[actor] += 1
            turns.append(_ravdess_turn(ids[actor], clip, MELD7[MELD_OF_RAVDESS[clip.emotion]]))
        session_id = f"{half}-voice-{k:02d}"
        source = (
            f"realtime-erc dev session (scripts/make_dev_sessions.py, seed {options.seed}): "
            f"condition voice, half {half}. RAVDESS actors {actors[0]} and {actors[1]} (never "
            "heard by the packaged speech head) take turns, each turn one of their own clips "
            "(neutral wording, the voice carries the emotion); labels are the clips' emotions "
            "mapped onto meld7 by name (neutral and calm -> neutral); text is the RAVDESS "
            f"statement; no video. Content: {LICENCES['ravdess']}."
        )
        speakers = [Speaker(ids[a], f"RAVDESS actor {a}") for a in actors]
        plans.append(
            SessionPlan(
                session_id,
                half,
                "voice",
                "meld7",
                speakers,
                turns,
                source,
                {"corpus": "ravdess", "actors": list(actors)},
            )
        )
    return plans


def _ravdess_turn(speaker: str, clip: RavdessClip, emotion: str) -> Turn:
    return Turn(speaker, emotion, STATEMENTS[clip.statement], clip=clip.path, actor=clip.actor)


def _dialogue_plans(data: DevData, options: DevOptions, half: str) -> list[SessionPlan]:
    """The ``words`` sessions: MELD then IEMOCAP dialogues of the half's split."""
    plans = []
    for c, (name, corpus, count) in enumerate(
        (
            ("meld", data.meld, options.meld_dialogues),
            ("iemocap", data.iemocap, options.iemocap_dialogues),
        )
    ):
        rng = _rng(options, half, 1, c)
        pool = [
            d
            for d in corpus.splits[half]
            if len(d) >= options.min_utterances and len(set(d.speakers)) >= 2
        ]
        chosen = [pool[i] for i in rng.permutation(len(pool))[:count]]
        for k, dialogue in enumerate(chosen):
            plans.append(
                _words_plan(options, half, name, corpus, dialogue, k, _rng(options, half, 2, c, k))
            )
    return plans


def _words_plan(
    options: DevOptions,
    half: str,
    name: str,
    corpus: Any,
    dialogue: Dialogue,
    position: int,
    rng: np.random.Generator,
) -> SessionPlan:
    n = len(dialogue)
    size = min(n, options.max_utterances)
    start = int(rng.integers(n - size + 1))
    window = range(start, start + size)
    order = list(dict.fromkeys(dialogue.speakers[i] for i in window))
    letters = {s: chr(ord("A") + k) for k, s in enumerate(order)}
    voice_of = _assign_voices(order, rng, gendered=name == "iemocap")
    turns = [
        Turn(
            letters[dialogue.speakers[i]],
            corpus.labels[dialogue.labels[i]],
            dialogue.texts[i],
            voice=voice_of[dialogue.speakers[i]],
        )
        for i in window
    ]
    speakers = [Speaker(letters[s], f"{name} speaker {s} ({voice_of[s]})") for s in order]
    label_set = corpus.label_set
    corpus_name = {"meld": "MELD", "iemocap": "IEMOCAP"}[name]
    source = (
        f"realtime-erc dev session (scripts/make_dev_sessions.py, seed {options.seed}): "
        f"condition words, half {half}. {corpus_name} {half} dialogue {dialogue.id}, utterances "
        f"{start}-{start + size - 1} of {n} (text repaired), voiced by espeak-ng with one voice "
        f"per speaker and the same plain (neutral) prosody on every line, so only the words "
        f"carry the emotion; labels are the corpus's ({label_set}); no video. "
        f"Content: {LICENCES[name]}."
    )
    return SessionPlan(
        f"{half}-words-{name}-{dialogue.id}",
        half,
        "words",
        label_set,
        speakers,
        turns,
        source,
        {
            "corpus": name,
            "dialogue": dialogue.id,
            "window": [start, start + size],
            "utterances": n,
            "position": position,
        },
    )


def _assign_voices(speakers: list[str], rng: np.random.Generator, gendered: bool) -> dict[str, str]:
    """One distinct espeak-ng voice per speaker (IEMOCAP's ``M``/``F`` get a voice of that
    gender); cycles only if a window has more speakers than :data:`VOICES`."""
    order = [VOICES[i] for i in rng.permutation(len(VOICES))]
    out: dict[str, str] = {}
    for k, speaker in enumerate(speakers):
        fits = [v for v in order if not gendered or speaker not in ("M", "F") or v[2] == speaker]
        free = [v for v in fits if v[0] not in out.values()]
        out[speaker] = free[0][0] if free else fits[k % len(fits)][0]
    return out


def _with_faces(data: DevData, options: DevOptions, words: SessionPlan) -> SessionPlan:
    """``words`` with a face on about ``face_share`` of the utterances, matching the utterance's
    emotion with probability ``face_match``, else another emotion drawn uniformly."""
    corpus = ("meld", "iemocap").index(words.recipe["corpus"])
    rng = _rng(options, words.half, 3, corpus, words.recipe["position"])
    pools = data.faces[words.half]
    match_of = FER_OF_LABEL[words.label_set]
    turns, shown, matched = [], 0, 0
    for turn in words.turns:
        if rng.random() >= options.face_share:
            turns.append(turn)
            continue
        target = match_of[turn.emotion]
        if rng.random() < options.face_match:
            fer_class = target
            matched += 1
        else:
            others = [c for c in range(len(FER_CLASSES)) if c != target]
            fer_class = others[int(rng.integers(len(others)))]
        rows = pools[fer_class]
        row = int(rows[int(rng.integers(len(rows)))])
        turns.append(replace(turn, face=row, face_emotion=FER_CLASSES[fer_class]))
        shown += 1
    source = words.source.replace("condition words,", "condition words_face,").replace(
        "no video.",
        f"video: a grey frame, showing one FER2013 PublicTest face (upscaled, centred) while an "
        f"utterance is spoken on about {options.face_share:.0%} of the utterances (drawn per "
        f"utterance with probability {options.face_share:g}; here {shown} of {len(turns)}); the "
        f"face's emotion matches the utterance's with probability {options.face_match:g} (here "
        f"{matched} of {shown}), else it is a random other emotion; valid and test faces are "
        f"disjoint. Faces: {LICENCES['fer']}.",
    )
    session_id = words.session_id.replace("-words-", "-words_face-")
    recipe = {**words.recipe, "faces_shown": shown, "faces_matching": matched}
    return SessionPlan(
        session_id, words.half, "words_face", words.label_set, words.speakers, turns, source, recipe
    )


def _mixed(data: DevData, options: DevOptions, words: SessionPlan, k: int) -> SessionPlan:
    """``words`` (MELD) with about ``mixed_share`` of the turns spoken by the speaker's RAVDESS
    actor (the half's actors, in a drawn order, reused when a dialogue has more speakers) with a
    clip of the utterance's emotion."""
    rng = _rng(options, words.half, 4, k)
    actors = [int(a) for a in rng.permutation(np.array(ACTORS[words.half]))]
    actor_of = {s.id: actors[i % len(actors)] for i, s in enumerate(words.speakers)}
    turns, voiced = [], 0
    for turn in words.turns:
        if rng.random() >= options.mixed_share:
            turns.append(turn)
            continue
        meld = MELD7.index(turn.emotion)
        pool = [
            c
            for c in data.clips
            if c.actor == actor_of[turn.speaker] and MELD_OF_RAVDESS[c.emotion] == meld
        ]
        if not pool:  # no clip of this emotion: the synthetic voice stays
            turns.append(turn)
            continue
        clip = pool[int(rng.integers(len(pool)))]
        turns.append(_ravdess_turn(turn.speaker, clip, turn.emotion))
        voiced += 1
    source = words.source.replace("condition words,", "condition mixed,").replace(
        "so only the words carry the emotion;",
        f"except about {options.mixed_share:.0%} of the turns (drawn per turn with probability "
        f"{options.mixed_share:g}; here {voiced} of {len(turns)}), spoken instead by a RAVDESS "
        f"actor of the half ({', '.join(map(str, ACTORS[words.half]))}; one per dialogue "
        f"speaker, reused when there are more speakers than actors) with a clip of the "
        f"utterance's emotion, whose text is then the RAVDESS statement;",
    )
    source = source.replace("Content: ", f"Content: {LICENCES['ravdess']}; ")
    session_id = words.session_id.replace("-words-", "-mixed-")
    speakers = [Speaker(s.id, f"{s.name} / RAVDESS actor {actor_of[s.id]}") for s in words.speakers]
    recipe = {
        **words.recipe,
        "actors": {s: a for s, a in actor_of.items()},
        "ravdess_turns": voiced,
    }
    return SessionPlan(
        session_id, words.half, "mixed", words.label_set, speakers, turns, source, recipe
    )


# ----------------------------------------------------------------------------- rendering


def synthesize(text: str, voice: str, workdir: Path) -> np.ndarray:
    """``text`` voiced by espeak-ng ``voice`` (a key of :data:`VOICES`) with the plain prosody;
    ``[n]`` float32 at 16 kHz, trimmed, inner pauses shortened to :data:`MAX_PAUSE_S`."""
    pitch = next(p for v, p, _ in VOICES if v == voice)
    return espeak(text, voice, WORDS_PER_MINUTE, pitch, AMPLITUDE, workdir / "line.wav")


def espeak(text: str, voice: str, speed: int, pitch: int, amplitude: int, wav: Path) -> np.ndarray:
    """``text`` voiced by espeak-ng (written to ``wav``), as ``[n]`` float32 at 16 kHz, mono,
    trimmed to its first and last sample above :data:`SILENCE_THRESHOLD`, inner pauses
    shortened (empty when espeak-ng gives silence)."""
    import soundfile as sf
    import soxr

    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude),
           "-w", str(wav), "--", text]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    voiced = np.flatnonzero(np.abs(audio) > SILENCE_THRESHOLD)
    if voiced.size == 0:
        return np.zeros(0, np.float32)
    return shorten_pauses(audio[voiced[0] : voiced[-1] + 1])


def shorten_pauses(audio: np.ndarray, max_pause_s: float = MAX_PAUSE_S) -> np.ndarray:
    """Cut espeak-ng's sentence pauses to ``max_pause_s``, so that one line stays one utterance
    for a segmenter whose end-of-speech hangover is 400 ms (as ``scripts/make_demo.py``)."""
    frame = SAMPLE_RATE // 100
    n = len(audio) // frame
    silent = np.abs(audio[: n * frame]).reshape(n, frame).max(axis=1) <= SILENCE_THRESHOLD
    keep = np.ones(len(audio), bool)
    limit = round(max_pause_s * 100)
    run = 0
    for i, quiet in enumerate(silent):
        run = run + 1 if quiet else 0
        if run > limit:
            keep[i * frame : (i + 1) * frame] = False
    return audio[keep]


def voiced_rms_db(x: np.ndarray) -> float:
    """RMS (dBFS) over the 20 ms frames within 35 dB of the loudest."""
    hop = SAMPLE_RATE // 50
    n = len(x) // hop
    if n == 0:
        return -120.0
    rms = np.sqrt(np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    db = 20 * np.log10(rms + 1e-12)
    loud = rms[db > db.max() - RAVDESS_TRIM_DB]
    return float(20 * np.log10(np.sqrt(np.mean(loud**2)) + 1e-12))


def level(x: np.ndarray, target_db: float) -> np.ndarray:
    return (x * 10 ** ((target_db - voiced_rms_db(x)) / 20)).astype(np.float32)


class TurnAudio:
    """Turn audio at the session's levels, memoised (espeak lines are shared between conditions;
    RAVDESS clips are cut to their voiced span and levelled relative to their actor)."""

    def __init__(self, ravdess_dir: Path, workdir: Path) -> None:
        self.ravdess_dir = ravdess_dir
        self.workdir = workdir
        self._lines: dict[tuple[str, str], np.ndarray] = {}
        self._actor_db: dict[int, float] = {}

    def __call__(self, turn: Turn) -> np.ndarray:
        if turn.clip is not None:
            return self._clip(turn.clip, int(turn.actor or 0))
        key = (turn.voice or VOICES[0][0], turn.text)
        if key not in self._lines:
            self._lines[key] = level(synthesize(turn.text, key[0], self.workdir), TARGET_RMS_DB)
        return self._lines[key]

    def _read(self, clip: str) -> np.ndarray:
        import soundfile as sf

        x, rate = sf.read(str(self.ravdess_dir / clip), dtype="float32", always_2d=False)
        if rate != SAMPLE_RATE or x.ndim != 1:
            raise DataError(
                f"{self.ravdess_dir / clip}: expected 16 kHz mono (the bundle's format)"
            )
        return voiced_segment(x, RAVDESS_TRIM_DB, 0.0, 0.0)

    def _clip(self, clip: str, actor: int) -> np.ndarray:
        if actor not in self._actor_db:
            actor_dir = self.ravdess_dir / f"Actor_{actor:02d}"
            levels = [
                voiced_rms_db(self._read(p.relative_to(self.ravdess_dir).as_posix()))
                for p in sorted(actor_dir.glob("*.flac"))
            ]
            self._actor_db[actor] = float(np.median(levels)) if levels else TARGET_RMS_DB
        x = self._read(clip)
        offset = np.clip(
            voiced_rms_db(x) - self._actor_db[actor], -RAVDESS_RANGE_DB, RAVDESS_RANGE_DB
        )
        return level(x, TARGET_RMS_DB + float(offset))


def render_session(
    plan: SessionPlan,
    out: Path,
    audio_of: Callable[[Turn], np.ndarray],
    fer_images: np.ndarray,
    options: DevOptions,
) -> Path:
    """Write ``plan`` as a recording in ``out`` (replacing one there) plus its recipe."""
    rng = np.random.default_rng(
        [options.seed, HALVES.index(plan.half), 5, *plan.session_id.encode()]
    )
    kept = [(t, a) for t in plan.turns if len(a := audio_of(t)) >= SAMPLE_RATE // 10]
    if not kept:
        raise DataError(f"{plan.session_id}: no turn produced audio")
    starts, cursor = [], round(LEAD_IN_S * SAMPLE_RATE)
    for _, clip in kept:
        starts.append(cursor)
        cursor += len(clip) + round(rng.uniform(*GAP_S) * SAMPLE_RATE)
    total = starts[-1] + len(kept[-1][1]) + round(TAIL_S * SAMPLE_RATE)
    speech = np.zeros(total, np.float32)
    for start, (_, clip) in zip(starts, kept, strict=True):
        speech[start : start + len(clip)] = clip
    peak = float(np.max(np.abs(speech)))
    if peak > 0.95:
        speech *= 0.95 / peak
    audio = (speech + rng.standard_normal(total) * 10 ** (NOISE_DBFS / 20)).astype(np.float32)

    if out.exists():
        shutil.rmtree(out)
    canvas, side = AssembledOptions().face_canvas, AssembledOptions().face_side
    with RecordingWriter(
        out,
        plan.session_id,
        fps=FPS if plan.video else None,
        speakers=plan.speakers,
        label_set=plan.label_set,
        source=plan.source,
        created=CREATED,
    ) as writer:
        block = SAMPLE_RATE // 2
        for i in range(0, total, block):
            writer.write_audio(audio[i : i + block])
        if plan.video:
            blank = np.full((*canvas, 3), 110, np.uint8)
            spans = [(s, s + len(a), t.face) for s, (t, a) in zip(starts, kept, strict=True)]
            for i in range(int(total / SAMPLE_RATE * FPS) + 1):
                sample = round(i / FPS * SAMPLE_RATE)
                face = next((f for s, e, f in spans if s <= sample < e), None)
                frame = blank if face is None else render_face(fer_images[face], canvas, side)
                writer.write_frame(frame, i / FPS)
        for i, (start, (turn, clip)) in enumerate(zip(starts, kept, strict=True)):
            writer.write_annotation(
                Annotation(
                    i,
                    turn.speaker,
                    round(start / SAMPLE_RATE, 3),
                    round((start + len(clip)) / SAMPLE_RATE, 3),
                    turn.text,
                    turn.emotion,
                )
            )
    recipe = plan.to_dict()
    recipe["turns"] = [asdict(t) for t, _ in kept]
    recipe["dropped_turns"] = len(plan.turns) - len(kept)
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1, ensure_ascii=False) + "\n")
    return out


def session_dir(out: Path, plan: SessionPlan) -> Path:
    return out / plan.half / plan.condition / plan.session_id


def generate(
    data_dir: Path, out: Path, options: DevOptions, progress: Callable[[str], None] | None = None
) -> list[Path]:
    """Plan and render every session of ``options`` under ``out``; writes ``out/manifest.json``."""
    missing = missing_inputs(data_dir)
    if missing:
        raise DataError(
            f"{data_dir}: missing {', '.join(missing)} (point --data or $REALTIME_ERC_DATA at the "
            "datasets; espeak-ng: apt-get install espeak-ng)"
        )
    data = load_dev_data(data_dir)
    plans = plan_sessions(data, options)
    check_disjoint(plans)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        audio_of = TurnAudio(data.ravdess_dir, Path(tmp))
        for k, plan in enumerate(plans):
            path = render_session(plan, session_dir(out, plan), audio_of, data.fer_images, options)
            written.append(path)
            if progress:
                progress(f"[{k + 1}/{len(plans)}] {path}")
    manifest = {
        "options": asdict(options),
        "data_dir": str(data_dir),
        "sessions": [str(p.relative_to(out)) for p in written],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return written


def provenance(plans: Sequence[SessionPlan | dict[str, Any]]) -> dict[str, dict[str, set]]:
    """Half → {"actors", "dialogues", "faces"} used by its sessions (plans or recipes)."""
    out: dict[str, dict[str, set]] = {}
    for plan in plans:
        d = plan.to_dict() if isinstance(plan, SessionPlan) else plan
        used = out.setdefault(d["half"], {"actors": set(), "dialogues": set(), "faces": set()})
        if "dialogue" in d:
            used["dialogues"].add(f"{d['corpus']}:{d['dialogue']}")
        for t in d["turns"]:
            if t["actor"] is not None:
                used["actors"].add(t["actor"])
            if t["face"] is not None:
                used["faces"].add(t["face"])
    return out


def check_disjoint(plans: Sequence[SessionPlan | dict[str, Any]]) -> None:
    """Raise if two halves share an actor, a dialogue or a face image."""
    used = provenance(plans)
    halves = sorted(used)
    for i, a in enumerate(halves):
        for b in halves[i + 1 :]:
            for kind in ("actors", "dialogues", "faces"):
                shared = used[a][kind] & used[b][kind]
                if shared:
                    raise DataError(f"{a} and {b} share {kind}: {sorted(shared)[:5]}")
