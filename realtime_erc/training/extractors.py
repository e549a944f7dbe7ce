"""``realtime-erc train-extractor`` / ``evaluate-extractor``: the per-modality emotion heads.

``speech``: :mod:`realtime_erc.training.speech_trainer` (RAVDESS); ``face``:
:mod:`realtime_erc.training.face_trainer` (FER2013). Progress is shown with rich progress bars;
results are returned as dicts (and printed by the CLI as JSON).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from realtime_erc.errors import UserError
from realtime_erc.features.assets import cache_root
from realtime_erc.features.speech_emotion import SpeechFeatureOptions

log = logging.getLogger(__name__)

Extractor = Literal["speech", "face"]
EXTRACTORS: tuple[str, ...] = ("speech", "face")


class ProgressBars:
    """A rich progress display fed by the trainers' ``progress(phase, done, total, metrics)``."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int, metrics: dict[str, float]) -> None:
        if phase not in self.tasks or (done == 1 and phase == "train"):
            if phase in self.tasks:
                self.progress.remove_task(self.tasks[phase])
            self.tasks[phase] = self.progress.add_task(phase, total=total, metrics="")
        text = "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
        )
        self.progress.update(self.tasks[phase], completed=done, total=total, metrics=text)

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def default_checkpoint(kind: Extractor) -> Path:
    from realtime_erc.features.face_expression import DEFAULT_CHECKPOINT as FACE
    from realtime_erc.features.speech_emotion import DEFAULT_CHECKPOINT as SPEECH

    return SPEECH if kind == "speech" else FACE


def speech_feature_options(options: list[str]) -> SpeechFeatureOptions:
    """The speech head's feature options from ``KEY=VALUE`` settings: ``egemaps=true|false``,
    ``layers=1,2`` (the Whisper encoder states pooled; ``layers=`` the last one only)."""
    features = SpeechFeatureOptions()
    for setting in options:
        key, _, value = setting.partition("=")
        try:
            if key == "egemaps" and value.lower() in ("true", "false"):
                features = replace(features, egemaps=value.lower() == "true")
                continue
            if key == "layers":
                layers = tuple(int(k) for k in value.split(",") if k.strip())
                if all(k >= 0 for k in layers):
                    features = replace(features, layers=layers)
                    continue
        except ValueError:
            pass
        raise UserError(
            f"speech head option {setting!r}: the settings are egemaps=true|false and "
            "layers=I,J,... (encoder states by index, 0 after the convolutions)"
        )
    return features


def train_extractor(
    kind: Extractor,
    data_dir: Path,
    out: Path | None,
    seed: int,
    epochs: int | None,
    console: Console,
    threads: int = 0,
    device: str = "cpu",
    options: list[str] | None = None,
) -> dict[str, Any]:
    """Train one head; ``out`` defaults to the packaged checkpoint path. Returns its ``info``.

    ``device`` (face only; the speech head is a small model trained on the CPU): ``cpu``,
    ``auto`` (CUDA when there is one) or ``cuda[:N]``. ``options``: face recipe settings
    ``KEY=VALUE`` (:func:`~realtime_erc.training.face_trainer.face_recipe`); speech:
    ``egemaps=true|false``."""
    out = out or default_checkpoint(kind)
    with ProgressBars(console) as bars:
        if kind == "speech":
            from realtime_erc.training.speech_trainer import SpeechTrainOptions, train_speech

            speech = SpeechTrainOptions(seed=seed)
            if epochs:
                speech = replace(speech, steps=epochs)
            features = speech_feature_options(options or [])
            return train_speech(data_dir, out, speech, features, progress=bars)
        from realtime_erc.engine import pick_device
        from realtime_erc.training.face_trainer import (
            FaceTrainOptions,
            face_recipe,
            recipe_key,
            train_face,
        )

        face, net = face_recipe(FaceTrainOptions(seed=seed, threads=threads), options or [])
        if epochs:
            face = replace(face, epochs=epochs)
        work = cache_root() / "train" / f"face-{recipe_key(face, net)}"
        return train_face(data_dir, out, work, face, net, progress=bars, device=pick_device(device))


def evaluate_extractor(
    kind: Extractor, data: Path, checkpoint: Path | None, console: Console
) -> dict[str, Any]:
    """Score a checkpoint on a RAVDESS-layout (speech) or FER2013-layout (face) path."""
    with ProgressBars(console) as bars:
        if kind == "speech":
            from realtime_erc.features.speech_emotion import SpeechEmotionHead
            from realtime_erc.training.emotion_data import ravdess_clips
            from realtime_erc.training.speech_trainer import evaluate_speech

            head = SpeechEmotionHead.load(checkpoint)
            return evaluate_speech(head, ravdess_clips(data), progress=bars)
        from realtime_erc.features.face_expression import FaceExpressionHead
        from realtime_erc.training.emotion_data import load_fer
        from realtime_erc.training.face_trainer import evaluate_face

        head = FaceExpressionHead.load(checkpoint)
        fer = load_fer(data)
        results: dict[str, Any] = {}
        usages = sorted(set(fer.usage.tolist())) if len(fer.usage) else []
        for usage in usages:
            results[usage] = evaluate_face(head, fer.split(usage))
        if not usages:
            results["all"] = evaluate_face(head, fer)
        return results
