"""Cross-fitted speech-head scores for the assembled corpus (``features.heads = "scores"``).

A context model trained on head scores must see, in training, scores as good as it will get at
test time: a head that had trained on the same clips is right far more often there (the packaged
speech head has heard actors 1–16, the assembled training and validation voices). So the scores
come from heads of a packaged head's recipe (features, per-actor standardisation, classifier
options) fitted here on the assembled *training* actors only. That head is the one without
eGeMAPS (:data:`~realtime_erc.features.speech_emotion.PERMISSIVE_CHECKPOINT`): the corpus's audio
vector already holds the eGeMAPS functionals, and the packaged assembled model's scores head was
made with it:

- a training actor's clips: the head fitted on the other training actors (``folds`` groups of
  actors, each scored by the head that left its group out);
- validation and test actors' clips: the head fitted on all training actors.

No head sees a validation or test voice, and none scores a clip it was fitted on.

Speaker standardisation: :meth:`SpeechScores.compute` standardises each actor over all of its
clips (the heads' own training recipe, and the default corpus's); live, a speaker can only be
standardised with running statistics of what they have said so far.
:meth:`SpeechScores.running_scores` scores a corpus's dialogues that way instead (the
assembled corpus's ``speech_norm = "running"``), and :meth:`SpeechScores.package` writes the
head that scores unheard voices for the live pipeline (``scripts/package_scores_head.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from realtime_erc.features.speech_emotion import (
    PERMISSIVE_CHECKPOINT,
    SpeakerNormalizer,
    SpeechEmotionHead,
    standardize_by_group,
)
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


EXTRA_VOICES = ("plain_voices", "plain_per_voice", "speed_factors", "live_cuts")
"""What the packaged head adds to RAVDESS. The cross-fitted heads are fitted on RAVDESS actors
alone, so these are not part of their recipe (nor of its digest)."""


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
        packaged = SpeechEmotionHead.load(head or PERMISSIVE_CHECKPOINT)
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
        features = asdict(self.feature_options) | {"threads": None}  # threads: not part of it
        for key in ("egemaps", "layers"):  # recipes from before these options lack the keys
            if not features[key]:
                del features[key]
        recipe = {
            "features": features,
            "train": {k: v for k, v in asdict(self.train_options).items() if k not in EXTRA_VOICES},
            "groups": self.groups,
            "eval_actors": self.eval_actors,
            "labels": list(self.labels),
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        self.identity = f"speech-head-crossfit{folds}-{digest}"

    def compute(
        self, progress: Progress = no_progress, eval_only: bool = False
    ) -> dict[str, np.ndarray]:
        """Clip path → probabilities for every clip of the training and evaluation actors
        (``eval_only``: the evaluation actors' clips only, fitting just their head)."""
        clips, raw, actors, y = self._features(progress)
        x = standardize_by_group(raw, actors)  # per speaker, as the head was trained
        plan = self.plan[-1:] if eval_only else self.plan
        probs = np.zeros((len(clips), len(self.labels)), np.float32)
        scored_rows = np.zeros(len(clips), bool)
        for step, (scored, fitted) in enumerate(plan, 1):
            net = self._fit(x, y, np.isin(actors, fitted))
            rows = np.isin(actors, scored)
            scored_rows |= rows
            with torch.inference_mode():
                probs[rows] = torch.softmax(net(torch.from_numpy(x[rows])), -1).numpy()
            progress("speech head (cross-fitted)", step, len(plan), {})
        return {
            c.path.relative_to(self.root).as_posix(): probs[i]
            for i, c in enumerate(clips)
            if scored_rows[i]
        }

    def eval_head(self, progress: Progress = no_progress) -> SpeechEmotionHead:
        """The head that scores the evaluation actors (fitted on every training actor), as a
        live :class:`SpeechEmotionHead`: its running normaliser's prior is the training actors'
        spread of per-actor statistics, as the packaged head's."""
        _, raw, actors, y = self._features(progress)
        return self._head(standardize_by_group(raw, actors), raw, actors, y, self.train_actors)

    def running_scores(
        self,
        dialogues: Iterable[tuple[str, Sequence[str], Sequence[int], Sequence[str]]],
        progress: Progress = no_progress,
    ) -> dict[str, list[np.ndarray]]:
        """Per dialogue ``(id, speakers, actors, clips)``, each utterance's probabilities with
        its speaker standardised *causally*, as live: a running normaliser per dialogue speaker
        (:class:`~realtime_erc.features.speech_emotion.SpeakerNormalizer`, shrunk towards the
        prior of the head's fitted actors) that has seen that speaker's utterances so far,
        this one included. Each actor is scored by the head of :attr:`plan` that scores it."""
        dialogues = list(dialogues)
        needed = {int(a) for _, _, of_actor, _ in dialogues for a in of_actor}
        clips, raw, actors, y = self._features(progress)
        x = standardize_by_group(raw, actors)  # the heads train as the packaged one
        head_of: dict[int, SpeechEmotionHead] = {}
        plan = [(scored, fitted) for scored, fitted in self.plan if needed & set(scored)]
        for step, (scored, fitted) in enumerate(plan, 1):
            head = self._head(x, raw, actors, y, fitted)
            head_of.update(dict.fromkeys(scored, head))
            progress("speech heads (cross-fitted)", step, len(plan), {})
        row = {c.path.relative_to(self.root).as_posix(): i for i, c in enumerate(clips)}
        out: dict[str, list[np.ndarray]] = {}
        for dialogue, speakers, of_actor, paths in dialogues:
            norms: dict[str, SpeakerNormalizer] = {}
            probs = []
            for speaker, actor, clip in zip(speakers, of_actor, paths, strict=True):
                head = head_of[int(actor)]
                prior = head.normalizer
                norm = norms.setdefault(
                    speaker,
                    SpeakerNormalizer(
                        prior.prior_mean, np.sqrt(prior.prior_var), prior.prior_count
                    ),
                )
                z = norm.normalize(speaker, raw[row[clip]])
                probs.append(head.predict_normalized(z[None])[0].astype(np.float32))
            out[dialogue] = probs
        return out

    def _head(
        self,
        x: np.ndarray,
        raw: np.ndarray,
        actors: np.ndarray,
        y: np.ndarray,
        fitted: tuple[int, ...],
    ) -> SpeechEmotionHead:
        """The head fitted on ``fitted`` actors' standardised ``x``, its running normaliser's
        prior their spread of per-actor statistics of the ``raw`` features."""
        net = self._fit(x, y, np.isin(actors, fitted))
        means = np.stack([raw[actors == a].mean(0) for a in fitted])
        stds = np.stack([raw[actors == a].std(0) for a in fitted])
        info = {
            "identity": self.identity,
            "task": "speech emotion (8 RAVDESS classes): a head of the assembled corpus's "
            "cross-fitting (scores appended with features.heads = scores)",
            "labels": list(self.labels),
            "training_data": f"RAVDESS speech, actors {', '.join(map(str, fitted))} "
            "(CC BY-NC-SA 4.0; Livingstone & Russo 2018)",
            "fitted_on": list(fitted),
            "normalisation": "per speaker (offline: over the actor's clips; live: running stats)",
            "options": asdict(self.train_options),
        }
        return SpeechEmotionHead(net, self.feature_options, means.mean(0), stds.mean(0), info=info)

    def package(self, progress: Progress = no_progress) -> Path:
        """Write :meth:`eval_head` where the live pipeline looks for the head of this
        :attr:`identity` (:func:`~realtime_erc.features.head_scores.scores_head_path`)."""
        from realtime_erc.features.head_scores import scores_head_path

        return self.eval_head(progress).save(scores_head_path(self.identity))

    def _features(self, progress: Progress) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        """The clips of every actor involved, their raw features ``[N, D]``, actors and
        labels."""
        wanted = set(self.train_actors) | set(self.eval_actors)
        clips = [c for c in ravdess_clips(self.root) if c.actor in wanted]
        if not clips:
            raise DataError(f"{self.root}: no RAVDESS clips of actors {sorted(wanted)}")
        raw = clip_features(clips, self.feature_options, progress=progress)
        return clips, raw, np.array([c.actor for c in clips]), np.array([c.emotion for c in clips])

    def _fit(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray):  # -> SpeechEmotionNet
        net, _ = fit_net(x[rows], y[rows], self.train_options)
        return net
