"""Cross-fitted speech-head scores for the assembled corpus (``features.heads = "scores"``).

A context model trained on head scores must see, in training, scores as good as it will get at
test time: a head that had trained on the same clips is right far more often there (the packaged
speech head has heard actors 1–16, the assembled training and validation voices). So the scores
come from heads of the packaged head's recipe (features, per-actor standardisation, classifier
options) fitted here on the assembled *training* actors only:

- a training actor's clips: the head fitted on the other training actors (``folds`` groups of
  actors, each scored by the head that left its group out);
- validation and test actors' clips: the head fitted on all training actors.

No head sees a validation or test voice, and none scores a clip it was fitted on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from realtime_erc.features.speech_emotion import SpeechEmotionHead, standardize_by_group
from realtime_erc.training.emotion_data import DataError, ravdess_clips
from realtime_erc.training.progress import Progress, no_progress
from realtime_erc.training.speech_trainer import SpeechTrainOptions, clip_features, fit_net


def crossfit_groups(train_actors: tuple[int, ...], folds: int) -> list[tuple[int, ...]]:
    """``train_actors`` (sorted) in ``folds`` consecutive groups of near-equal size."""
    if folds < 2 or folds > len(train_actors):
        raise DataError(
            f"cross-fitting needs 2..{len(train_actors)} folds over the training actors, "
            f"got {folds}"
        )
    return [tuple(int(a) for a in g) for g in np.array_split(sorted(train_actors), folds)]


class SpeechScores:
    """Clip path (relative to the RAVDESS directory) → the cross-fitted head's probabilities."""

    def __init__(
        self,
        root: Path,
        train_actors: tuple[int, ...],
        eval_actors: tuple[int, ...],
        folds: int = 3,
        head: Path | None = None,
    ) -> None:
        self.root = root
        self.train_actors = tuple(sorted(train_actors))
        self.eval_actors = tuple(sorted(eval_actors))
        self.groups = crossfit_groups(self.train_actors, folds)
        packaged = SpeechEmotionHead.load(head)
        self.feature_options = packaged.feature_options
        saved = dict(packaged.info.get("options") or {})
        known = SpeechTrainOptions.__dataclass_fields__
        self.train_options = replace(
            SpeechTrainOptions(), **{k: v for k, v in saved.items() if k in known}
        )
        self.labels = packaged.labels
        self.plan: list[tuple[tuple[int, ...], tuple[int, ...]]] = [
            (g, tuple(a for a in self.train_actors if a not in g)) for g in self.groups
        ] + [(self.eval_actors, self.train_actors)]
        """(actors scored, actors the head is fitted on), one head each."""
        recipe = {
            "features": asdict(self.feature_options) | {"threads": None},  # not part of it
            "train": asdict(self.train_options),
            "groups": self.groups,
            "eval_actors": self.eval_actors,
            "labels": list(self.labels),
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        self.identity = f"speech-head-crossfit{folds}-{digest}"

    def compute(self, progress: Progress = no_progress) -> dict[str, np.ndarray]:
        wanted = set(self.train_actors) | set(self.eval_actors)
        clips = [c for c in ravdess_clips(self.root) if c.actor in wanted]
        if not clips:
            raise DataError(f"{self.root}: no RAVDESS clips of actors {sorted(wanted)}")
        x = clip_features(clips, self.feature_options, progress=progress)
        actors = np.array([c.actor for c in clips])
        y = np.array([c.emotion for c in clips])
        x = standardize_by_group(x, actors)  # per speaker, as the head was trained
        probs = np.zeros((len(clips), len(self.labels)), np.float32)
        for step, (scored, fitted) in enumerate(self.plan, 1):
            fit = np.isin(actors, fitted)
            net, _ = fit_net(x[fit], y[fit], self.train_options)
            rows = np.isin(actors, scored)
            with torch.inference_mode():
                probs[rows] = torch.softmax(net(torch.from_numpy(x[rows])), -1).numpy()
            progress("speech head (cross-fitted)", step, len(self.plan), {})
        return {c.path.relative_to(self.root).as_posix(): probs[i] for i, c in enumerate(clips)}
