"""Training and scoring of the speech-emotion head on RAVDESS (speaker-independent).

Protocol: actors 1–16 train the committed model and actors 17–20 are its fixed held-out test
set; hyperparameters are judged by leave-4-actors-out cross-validation over actors 1–20 (five
folds: 1–4, 5–8, …, 17–20), reported as mean ± std unweighted accuracy (UA, mean per-class
recall). Features are standardised per actor over that actor's clips (the offline analogue of the
live running statistics). Plain-prosody synthetic voices reading varied lines
(:mod:`~realtime_erc.training.plain_speech`) join the training set as neutral speakers, so the
head learns that new words are not a new emotion; each fold holds out its share of those voices
too and reports how much emotion the head hears in them (``plain_emotion_mass``). Every training
voice also joins a little faster and slower (:mod:`~realtime_erc.training.speed_perturb`), each
copy a speaker of its own; a fold holds a voice's copies out with it and scores originals only.
Every voice joins once more as the live segmenter cuts it from a noisy stream
(:mod:`~realtime_erc.training.live_cut`): that is what the head hears live, so the folds score
those cuts too (``live_cut_ua``), and the live normaliser's prior is the cuts' statistics.
Extracted features are cached per clip under ``~/.cache/realtime-erc/features/speech``
(outside the repository).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from realtime_erc.features.assets import cache_root
from realtime_erc.features.speech_emotion import (
    RAVDESS_LABELS,
    SpeechEmotionHead,
    SpeechEmotionNet,
    SpeechFeatureExtractor,
    SpeechFeatureOptions,
    SpeechNetOptions,
    feature_options_dict,
    standardize_by_group,
)
from realtime_erc.training.emotion_data import (
    DataError,
    SpeechClip,
    clip_digest,
    ravdess_clips,
    read_clip,
)
from realtime_erc.training.live_cut import live_cut_clips
from realtime_erc.training.plain_speech import SPEAKER_ID_BASE, plain_speech_clips
from realtime_erc.training.progress import Progress, no_progress
from realtime_erc.training.speed_perturb import (
    perturbed_speaker,
    source_speaker,
    speed_perturbed_clips,
)

log = logging.getLogger(__name__)


TRAIN_ACTORS = tuple(range(1, 17))
HELD_OUT_ACTORS = (17, 18, 19, 20)


@dataclass(frozen=True)
class SpeechTrainOptions:
    """Hyperparameters of the classifier (full-batch AdamW on standardised features)."""

    steps: int = 200
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    hidden: int = 64
    dropout: float = 0.5
    seed: int = 0
    folds: int = 5
    subset_size: int = 40
    plain_voices: int = 16
    """Plain-prosody synthetic speakers added as neutral (0: RAVDESS alone)."""
    plain_per_voice: int = 30
    speed_factors: tuple[float, ...] = (0.9, 1.1)
    """Speed perturbation: each voice also joins resampled by these factors (() = none)."""
    live_cuts: bool = True
    """Each voice also joins as the live segmenter cuts it (copy ``len(speed_factors)``)."""


def clip_features(
    clips: list[SpeechClip],
    options: SpeechFeatureOptions,
    cache_dir: Path | None = None,
    progress: Progress = no_progress,
) -> np.ndarray:
    """Raw (unnormalised) features ``[N, D]`` of ``clips``, cached per clip and options."""
    cache = (cache_dir or cache_root() / "features" / "speech") / _options_key(options)
    cache.mkdir(parents=True, exist_ok=True)
    extractor: SpeechFeatureExtractor | None = None
    rows = []
    for i, clip in enumerate(clips):
        file = cache / f"{clip_digest(clip.path)}.npy"
        feats = _cached(file)
        if feats is None:
            extractor = extractor or SpeechFeatureExtractor(options)
            feats = extractor.features(read_clip(clip.path))
            # Another process may be filling the same cache: write aside, then rename,
            # so a reader never loads half a file.
            tmp = file.with_suffix(f".{uuid.uuid4().hex}.tmp.npy")
            np.save(tmp, feats)
            tmp.replace(file)
        rows.append(feats)
        progress("features", i + 1, len(clips), {})
    return np.stack(rows).astype(np.float32)


def _cached(file: Path) -> np.ndarray | None:
    try:
        return np.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as e:  # cut short by a crash in an older version
        log.warning("recomputing unreadable cached features %s (%s)", file, e)
        return None


def _options_key(options: SpeechFeatureOptions) -> str:
    d = {k: v for k, v in asdict(options).items() if k != "threads"}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def unweighted_accuracy(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    recalls = [
        float((pred[labels == c] == c).mean()) for c in range(n_classes) if (labels == c).any()
    ]
    return float(np.mean(recalls)) if recalls else 0.0


def fit_net(
    x: np.ndarray, y: np.ndarray, options: SpeechTrainOptions, progress: Progress = no_progress
) -> tuple[SpeechEmotionNet, list[float]]:
    """Full-batch AdamW on standardised ``x [N, D]``; returns the net and its loss curve."""
    torch.manual_seed(options.seed)
    net = SpeechEmotionNet(
        SpeechNetOptions(input_dim=x.shape[1], hidden=options.hidden, dropout=options.dropout)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, options.steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    losses = []
    net.train()
    for step in range(options.steps):
        loss = F.cross_entropy(net(xt), yt, label_smoothing=options.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        progress("train", step + 1, options.steps, {"loss": losses[-1]})
    return net.eval(), losses


@torch.inference_mode()
def score_speech(net: SpeechEmotionNet, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, UA and NLL of ``net`` on standardised features."""
    logits = net.eval()(torch.from_numpy(x))
    pred = logits.argmax(-1).numpy()
    nll = float(F.cross_entropy(logits, torch.from_numpy(y.astype(np.int64))))
    return {
        "accuracy": round(float((pred == y).mean()), 6),
        "unweighted_accuracy": round(unweighted_accuracy(pred, y, len(net.options.labels)), 6),
        "nll": round(nll, 6),
        "n": int(len(y)),
    }


@torch.inference_mode()
def emotion_mass(net: SpeechEmotionNet, x: np.ndarray) -> float:
    """Mean probability off neutral and calm: how much emotion the head hears in ``x``."""
    p = torch.softmax(net.eval()(torch.from_numpy(x)), -1).numpy()
    return round(float(1.0 - p[:, 0].mean() - p[:, 1].mean()), 6)


def cross_validate(
    x_raw: np.ndarray,
    y: np.ndarray,
    actors: np.ndarray,
    options: SpeechTrainOptions,
    live_cut: int | None = None,
) -> list[dict[str, Any]]:
    """Leave-actors-out folds over the RAVDESS actors present (consecutive groups of equal
    size); each fold also holds out its share of the plain voices, and the copies of every
    voice it holds out. Original clips are scored, and the held-out voices' live cuts (copy
    ``live_cut``, when given) apart as ``live_cut_ua``."""
    x = standardize_by_group(x_raw, actors)
    source = source_speaker(actors)
    real = source < SPEAKER_ID_BASE
    folds = np.array_split(np.unique(source[real]), options.folds)
    plain_folds = np.array_split(np.unique(source[~real]), options.folds)
    results = []
    for fold, plain_fold in zip(folds, plain_folds, strict=False):
        test, held_plain = np.isin(actors, fold), np.isin(actors, plain_fold)
        train = ~np.isin(source, fold) & ~np.isin(source, plain_fold)
        net, _ = fit_net(x[train], y[train], options)
        result: dict[str, Any] = {"actors": [int(a) for a in fold]}
        result.update(score_speech(net, x[test], y[test]))
        if live_cut is not None:
            cuts = np.isin(actors, perturbed_speaker(np.asarray(fold), live_cut))
            result["live_cut_ua"] = score_speech(net, x[cuts], y[cuts])["unweighted_accuracy"]
        if held_plain.any():
            result["plain_emotion_mass"] = emotion_mass(net, x[held_plain])
        results.append(result)
    return results


def subset_rows(actors: np.ndarray, held_out: tuple[int, ...], size: int, seed: int) -> np.ndarray:
    """The fixed evaluation subset: ``size`` clips of the held-out actors (indices, sorted)."""
    pool = np.flatnonzero(np.isin(actors, held_out))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))


def train_speech(
    data_dir: Path,
    out: Path,
    options: SpeechTrainOptions = SpeechTrainOptions(),
    feature_options: SpeechFeatureOptions | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Cross-validate, train on actors 1–16, score on 17–20, write the checkpoint to ``out``."""
    t0 = time.perf_counter()
    feature_options = feature_options or SpeechFeatureOptions()
    clips = ravdess_clips(data_dir)
    if options.plain_voices:
        clips += plain_speech_clips(
            data_dir, options.plain_voices, options.plain_per_voice, options.seed
        )
    voices = clips
    clips = voices + speed_perturbed_clips(voices, options.speed_factors)
    live_cut = len(options.speed_factors) if options.live_cuts else None
    if live_cut is not None:
        clips += live_cut_clips(voices, live_cut)
    x_raw = clip_features(clips, feature_options, progress=progress)
    y = np.array([c.emotion for c in clips])
    actors = np.array([c.actor for c in clips])
    folds = cross_validate(x_raw, y, actors, options, live_cut)
    uas = [f["unweighted_accuracy"] for f in folds]
    source = source_speaker(actors)
    plain = source >= SPEAKER_ID_BASE
    train = np.isin(source, TRAIN_ACTORS) | plain
    test = np.isin(actors, HELD_OUT_ACTORS)
    if not train.any() or not test.any():
        raise DataError(
            f"{data_dir}: needs RAVDESS actors 1–20 to train (found {sorted(set(actors))})"
        )
    x_train = standardize_by_group(x_raw[train], actors[train])
    net, losses = fit_net(x_train, y[train], options, progress)
    held = score_speech(net, standardize_by_group(x_raw[test], actors[test]), y[test])
    if live_cut is not None:
        cuts = np.isin(actors, perturbed_speaker(np.array(HELD_OUT_ACTORS), live_cut))
        held["live_cut_ua"] = score_speech(
            net, standardize_by_group(x_raw[cuts], actors[cuts]), y[cuts]
        )["unweighted_accuracy"]
    idx = subset_rows(actors, HELD_OUT_ACTORS, options.subset_size, options.seed)
    sub = score_speech(net, standardize_by_group(x_raw[idx], actors[idx]), y[idx])
    # Population prior for live normalisation: the spread of per-actor statistics (real voices
    # only: the plain ones teach the classifier, they do not describe the people it will hear),
    # of their live cuts when there are some: those are what the live normaliser adds up.
    prior_of = [a if live_cut is None else perturbed_speaker(a, live_cut) for a in TRAIN_ACTORS]
    means = np.stack([x_raw[actors == a].mean(0) for a in prior_of])
    stds = np.stack([x_raw[actors == a].std(0) for a in prior_of])
    real_actors = np.unique(source[~plain])
    protocol = (
        f"leave-{len(real_actors) // options.folds}-actors-out, {options.folds} folds over "
        f"actors {int(real_actors.min())}-{int(real_actors.max())}"
    )
    training_data = "RAVDESS speech, actors 1-16 (CC BY-NC-SA 4.0; Livingstone & Russo 2018)"
    if plain.any():
        per_fold = int((plain & (source == actors)).sum()) // options.folds
        protocol += f", each holding out {per_fold} plain clips"
        training_data += (
            f"; {options.plain_voices} espeak-ng voices with plain prosody reading "
            f"{options.plain_per_voice} MELD train lines each, as neutral (MELD GPL-3.0)"
        )
    if options.speed_factors:
        training_data += f"; every voice also at speeds {list(options.speed_factors)}"
    if live_cut is not None:
        training_data += "; every voice also as the live segmenter cuts it over a noise floor"
    info = {
        "task": "speech emotion (8 RAVDESS classes)",
        "labels": list(RAVDESS_LABELS),
        "training_data": training_data,
        "held_out": {"actors": list(HELD_OUT_ACTORS), **held},
        "cross_validation": {
            "protocol": protocol,
            "ua_mean": round(float(np.mean(uas)), 6),
            "ua_std": round(float(np.std(uas)), 6),
            **(
                {"live_cut_ua_mean": round(float(np.mean([f["live_cut_ua"] for f in folds])), 6)}
                if live_cut is not None
                else {}
            ),
            "folds": folds,
        },
        "normalisation": "per speaker (offline: over the actor's clips; live: running stats)",
        "subset": {
            "paths": [str(clips[i].path.relative_to(clips[i].path.parent.parent)) for i in idx],
            "scores": sub,
        },
        "final_loss": round(losses[-1], 5),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "options": asdict(options),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "net_options": asdict(net.options),
            "feature_options": feature_options_dict(feature_options),
            "model": net.state_dict(),
            "prior_mean": means.mean(0).astype(np.float32),
            "prior_std": stds.mean(0).astype(np.float32),
            "info": info,
        },
        out,
    )
    return info


def evaluate_speech(
    head: SpeechEmotionHead,
    clips: list[SpeechClip],
    progress: Progress = no_progress,
    cache_dir: Path | None = None,
) -> dict[str, float]:
    """Score a head on labelled clips, standardising per actor over the given clips."""
    x_raw = clip_features(clips, head.feature_options, cache_dir, progress)
    if x_raw.shape[1] != head.net.options.input_dim:
        raise DataError(
            f"features are {x_raw.shape[1]}-d, the checkpoint wants {head.net.options.input_dim}"
        )
    y = np.array([c.emotion for c in clips])
    actors = np.array([c.actor for c in clips])
    return score_speech(head.net, standardize_by_group(x_raw, actors), y)
