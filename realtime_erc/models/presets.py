"""The packaged ERC checkpoints users pick by name (``realtime-erc models``, ``--model NAME``,
``model.checkpoint = NAME``).

The registry is a data file beside the weights, ``realtime_erc/assets/models.toml``: one
``[[preset]]`` table per checkpoint, saying what it was trained on, its label set, its scores (from
the checkpoint's stored metrics), the licence of its training data and its measured cost per
utterance. Reading it needs no torch; a test checks every entry against its checkpoint file.

:func:`measure_cost` measures a preset's cost per utterance: the median CPU time, on one thread,
of encoding one transcript with the checkpoint's own text encoder (base encoder and adapter, as
the live pipeline resolves them) and taking one streaming step of the model.
"""

from __future__ import annotations

import functools
import statistics
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realtime_erc.errors import UserError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
REGISTRY = ASSETS_DIR / "models.toml"
"""The preset registry (committed beside the checkpoints it names)."""

SPECIAL_CHECKPOINTS = ("none",)
"""``model.checkpoint`` values that are neither a preset nor a path (``none``: no model)."""


class PresetError(UserError, ValueError):
    """An unknown preset name, or a registry file that cannot be read."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scores(_Record):
    """Weighted F1 and accuracy (percent) on the corpus's valid and test splits, as the
    checkpoint stores them (valid: the split the epoch was chosen on; test: scored once)."""

    valid_weighted_f1: float | None = None
    valid_accuracy: float | None = None
    test_weighted_f1: float | None = None
    test_accuracy: float | None = None


class Cost(_Record):
    """Measured cost per utterance (:func:`measure_cost`)."""

    ms_per_utterance: float = Field(gt=0)
    """CPU ms (one thread, median) of encoding the transcript plus one streaming step."""
    text_ms: float = Field(gt=0)
    """The text encoding's share."""
    measured: str
    """When and on what."""


class Preset(_Record):
    """One packaged checkpoint."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    """What users type: ``--model NAME`` or ``model.checkpoint = NAME``."""
    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.pt$")
    """The checkpoint, in ``realtime_erc/assets/``."""
    model_id: str
    """``name/label_set@hash8``: what the stream's ``model`` field will say."""
    summary: str
    trained_on: str
    """The corpus (train split; the epoch chosen on its valid split)."""
    features: str
    """What the model reads: the text encoder and adapter, the other modalities."""
    label_set: str
    labels: tuple[str, ...]
    scores: Scores
    licence: str
    """The terms of the training data, which bind the checkpoint."""
    cost: Cost | None = None
    run: str = ""
    """The run in docs/results/runs.jsonl it reproduces, where there is one."""

    @property
    def path(self) -> Path:
        return ASSETS_DIR / self.file


class _Registry(_Record):
    preset: tuple[Preset, ...]


@functools.cache
def _read(path: Path) -> tuple[Preset, ...]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PresetError(
            f"model registry {path} cannot be read ({e}): reinstall the package"
        ) from None
    try:
        presets = _Registry.model_validate(data).preset
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PresetError(f"model registry {path}: {where}: {first['msg']}") from None
    names = [p.name for p in presets]
    if len(set(names)) < len(names):
        raise PresetError(f"model registry {path}: a name is given twice ({', '.join(names)})")
    return presets


def presets(path: Path = REGISTRY) -> tuple[Preset, ...]:
    """Every packaged checkpoint, in the registry's order (the default first)."""
    return _read(path)


def preset_names(path: Path = REGISTRY) -> tuple[str, ...]:
    return tuple(p.name for p in presets(path))


def get_preset(name: str, path: Path = REGISTRY) -> Preset:
    """The preset called ``name``; :class:`PresetError` naming the valid names otherwise."""
    for preset in presets(path):
        if preset.name == name:
            return preset
    raise PresetError(
        f"unknown model {name!r}: choose one of {', '.join(preset_names(path))} "
        "(`realtime-erc models` lists them)"
    )


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(".pt") or Path(value).exists()


def resolve_checkpoint(setting: str, path: Path = REGISTRY) -> Path | None:
    """The checkpoint file ``model.checkpoint`` means: a preset name → its packaged file,
    ``none`` → None, anything that looks like a path (has a separator, ends in ``.pt`` or
    exists) → that path, unchecked. Any other word is taken for a misspelt preset name:
    :class:`PresetError` naming the valid names."""
    if setting in SPECIAL_CHECKPOINTS:
        return None
    if setting in preset_names(path):
        return get_preset(setting, path).path
    if _looks_like_path(setting):
        return Path(setting).expanduser()
    raise PresetError(
        f"model.checkpoint {setting!r} is neither a packaged model ({', '.join(preset_names(path))}"
        ", see `realtime-erc models`) nor a checkpoint file path"
    )


# ----------------------------------------------------------------------------------------------
# Cost per utterance

SAMPLE_TRANSCRIPTS: tuple[str, ...] = (
    "Hi.",
    "Where were you last night?",
    "I told you, I was at work until nine, and then the car would not start.",
    "Oh, come on!",
    "You never call when you are going to be late, and I sat here waiting for two hours.",
    "Okay, okay, I'm sorry.",
    "That is wonderful news, I can't believe you got the job!",
    "I don't know what to say.",
)
"""Transcripts of a made-up conversation, short to long, for :func:`measure_cost`."""


def measure_cost(
    checkpoint: Path,
    transcripts: Sequence[str] = SAMPLE_TRANSCRIPTS,
    rounds: int = 4,
    runs: int = 3,
    threads: int = 1,
) -> dict[str, Any]:
    """What one utterance costs ``checkpoint`` on the CPU: encoding its transcript with the text
    encoder the checkpoint was trained with, then one streaming step.

    Torch runs on ``threads`` threads (default 1: all the work is then on the calling thread,
    whose CPU time is the cost whatever else the machine is doing). One run is a conversation of
    ``rounds`` × ``transcripts`` (two speakers, after a warm-up utterance). Modalities other than
    text that the model takes get fixed vectors (their extraction is not counted). Returns the
    medians over a run's utterances, the lowest of ``runs`` runs for each: ``ms_per_utterance``
    and ``text_ms`` (CPU time of the calling thread: whole step, text encoding alone),
    ``wall_ms`` (elapsed time, which a busy machine inflates); and ``utterances`` (per run),
    ``runs``, ``threads``."""
    import numpy as np
    import torch

    from realtime_erc.engine import Engine
    from realtime_erc.events import ModalityFeatures, UtteranceFeatures
    from realtime_erc.features.text import TextEncoder, TextOptions, resolve_encoder
    from realtime_erc.features.text_adapter import resolve_adapter

    engine = Engine(checkpoint, "cpu")
    spec = engine.info.features
    encoder = TextEncoder(
        TextOptions(encoder=resolve_encoder("auto", spec.text)),
        adapter=resolve_adapter("auto", spec.text),
    )
    encoder.load()
    dims = engine.model.dims
    used, sequences = set(spec.modalities), spec.sequences
    rng = np.random.default_rng(0)
    fixed = {
        name: ModalityFeatures(rng.standard_normal(dims.pooled(name)).astype(np.float32))
        if name in used
        else ModalityFeatures.absent(dims.pooled(name))
        for name in ("audio", "visual")
    }

    def one(session: str, i: int, transcript: str) -> tuple[float, float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        text = encoder.encode(transcript)
        if "text" not in used:
            text = ModalityFeatures.absent(dims.text)
        elif not sequences:  # as the emit stage passes it
            text = ModalityFeatures(text.pooled, present=text.present)
        encoded = time.thread_time()
        features = UtteranceFeatures(
            utterance_id=i, speaker=f"S{i % 2 + 1}", start=float(i), end=i + 0.8, text=text,
            **fixed,
        )  # fmt: skip
        engine.step(session, features)
        done_cpu, done_wall = time.thread_time(), time.perf_counter()
        return (done_cpu - cpu) * 1e3, (encoded - cpu) * 1e3, (done_wall - wall) * 1e3

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        medians = []
        for run in range(runs):
            session = f"cost-{run}"
            one(session, 0, "warm up")
            times = [one(session, i, t) for i, t in enumerate(list(transcripts) * rounds, 1)]
            engine.end_session(session)
            medians.append([statistics.median(column) for column in zip(*times, strict=True)])
    finally:
        torch.set_num_threads(before)
    cpu, text, wall = (round(min(column), 2) for column in zip(*medians, strict=True))
    return {"ms_per_utterance": cpu, "text_ms": text, "wall_ms": wall,
            "utterances": len(transcripts) * rounds, "runs": runs, "threads": threads}  # fmt: skip
