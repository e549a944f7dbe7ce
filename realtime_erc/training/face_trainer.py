"""Training and scoring of the facial-expression head on FER2013.

Training set: FER2013 ``Training`` minus its all-black images, the images pixel-identical to a
``PublicTest`` image and the extra copies of duplicates (see
:func:`~realtime_erc.training.emotion_data.clean_fer_training`). Model selection: the epoch with
the best ``PublicTest`` accuracy (flip-averaged). Recipe: random affine crops (40×40 windows with
±4 px shifts, ±10° rotation, ±10 % scale, mirror), optional random erasing, label smoothing, SGD
with a one-cycle (warm-up then cosine) schedule. Runs on the CPU or a CUDA device (the images and
their augmentation live on the device). A run resumes from ``<work_dir>/last.pt`` after an
interruption, on either device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realtime_erc.features.face_expression import (
    FER_LABELS,
    FaceExpressionError,
    FaceExpressionHead,
    FaceExpressionNet,
    FaceNetOptions,
    _flip_averaged_logits,
    center_crop,
    options_dict,
    standardize,
)
from realtime_erc.training.emotion_data import FaceImages, clean_fer_training, load_fer
from realtime_erc.training.progress import Progress, no_progress
from realtime_erc.training.resume import load_last, save_last

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceTrainOptions:
    """Hyperparameters of :func:`train_face` (stored in the checkpoint)."""

    epochs: int = 30
    batch_size: int = 128
    max_lr: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    rotation_deg: float = 10.0
    scale_jitter: float = 0.1
    warmup_fraction: float = 0.15
    erase_prob: float = 0.0  # chance of blanking one random rectangle (random erasing)
    erase_max_area: float = 0.3  # its largest area, as a fraction of the crop
    teacher: str = ""  # face checkpoint(s) to distil from, comma-separated ("" = none)
    distill_weight: float = 0.7  # share of the distillation term in the loss
    distill_temperature: float = 4.0
    seed: int = 0
    subset_size: int = 300
    max_train_images: int = 0  # 0 = all; small values for smoke tests
    threads: int = 0  # 0 = torch's default


def face_recipe(
    base: FaceTrainOptions, settings: list[str]
) -> tuple[FaceTrainOptions, FaceNetOptions]:
    """Apply ``KEY=VALUE`` settings (``realtime-erc train-extractor face --option``): keys are
    :class:`FaceTrainOptions` fields, or ``net.<field>`` of :class:`FaceNetOptions`; tuples are
    comma-separated (``net.widths=64,128,256,512``)."""
    train: dict[str, Any] = {}
    net: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if key.startswith("net."):
            target, cls, name = net, FaceNetOptions, key.removeprefix("net.")
        else:
            target, cls, name = train, FaceTrainOptions, key
        fields = {f.name: f for f in dataclass_fields(cls)}
        if not sep or name not in fields or name == "labels":
            valid = [f for f in fields if f != "labels"]
            raise FaceExpressionError(
                f"bad face training option {item!r}: use KEY=VALUE with KEY one of "
                f"{', '.join(valid)} (or net.<{', '.join(_net_keys())}>)"
            )
        default = getattr(cls(), name)
        try:
            if isinstance(default, tuple):
                target[name] = tuple(int(v) for v in value.split(","))
            else:
                target[name] = type(default)(value)
        except ValueError:
            raise FaceExpressionError(
                f"bad value in face training option {item!r}: {name} takes a "
                f"{type(default).__name__}"
            ) from None
    return replace(base, **train), replace(FaceNetOptions(), **net)


def _net_keys() -> list[str]:
    return [f.name for f in dataclass_fields(FaceNetOptions) if f.name != "labels"]


def recipe_key(options: FaceTrainOptions, net: FaceNetOptions) -> str:
    """A short stable name for a recipe (the work directory of its run)."""
    text = json.dumps({"train": asdict(options), "net": options_dict(net)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def augment(images: torch.Tensor, crop: int, opts: FaceTrainOptions, gen: torch.Generator):
    """Random affine crops of ``[B, 1, 48, 48]`` floats → ``[B, 1, crop, crop]`` (on the images'
    device; the random draws come from ``gen`` on the CPU, so a run is the same on any device)."""
    b = images.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(opts.rotation_deg)
    scale = (crop / 48) * (1 + (torch.rand(b, generator=gen) * 2 - 1) * opts.scale_jitter)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (1 - crop / 48)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], 1),
            torch.stack([sin * flip, cos, shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(images.device), [b, 1, crop, crop], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if opts.erase_prob > 0:
        out = random_erase(out, opts.erase_prob, opts.erase_max_area, gen)
    return out


def random_erase(x: torch.Tensor, prob: float, max_area: float, gen: torch.Generator):
    """Blank one random rectangle (area 2 %..``max_area`` of the image, aspect 0.3..3.3) in a
    ``prob`` fraction of ``x [B, 1, H, W]``; the rectangle is filled with the image's mean."""
    b, _, h, w = x.shape
    area = (0.02 + torch.rand(b, generator=gen) * (max_area - 0.02)) * h * w
    aspect = torch.exp((torch.rand(b, generator=gen) * 2 - 1) * math.log(3.3))
    eh = (area * aspect).sqrt().clamp(1, h)
    ew = (area / aspect).sqrt().clamp(1, w)
    top = torch.rand(b, generator=gen) * (h - eh)
    left = torch.rand(b, generator=gen) * (w - ew)
    use = (torch.rand(b, generator=gen) < prob).float()
    # [B, 5] box (top, bottom, left, right, used) moved once; the mask is built on x's device
    box = torch.stack([top, top + eh, left, left + ew, use], 1).to(x.device).view(b, 5, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3])
    ) & (box[:, 4] > 0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(inside.unsqueeze(1), mean, x)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, opts: FaceTrainOptions
) -> torch.Tensor:
    """Hinton et al. (2015): ``(1 - w) · hard + w · T² · KL(softmax(t/T) ‖ softmax(s/T))`` for
    student/teacher logits ``[B, C]``; T² keeps the soft term's gradients on the hard term's
    scale."""
    t = opts.distill_temperature
    soft = F.kl_div(
        F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
        reduction="batchmean",
    )  # fmt: skip
    return (1 - opts.distill_weight) * hard + opts.distill_weight * t * t * soft


class TeacherEnsemble(nn.Module):
    """Frozen teachers; ``forward`` gives ``T · log(mean_i softmax(z_i / T))``, logits whose
    tempered softmax is the teachers' mean tempered distribution (one teacher: its own logits,
    up to a constant)."""

    def __init__(self, nets: list[nn.Module], temperature: float) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.temperature = temperature

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        probs = torch.stack([torch.softmax(net(x) / t, -1) for net in self.nets]).mean(0)
        return t * torch.log(probs)


def teacher_paths(opts: FaceTrainOptions) -> list[str]:
    return [p.strip() for p in opts.teacher.split(",") if p.strip()]


def _load_teacher(opts: FaceTrainOptions, student: FaceNetOptions, device: torch.device):
    """The frozen teacher(s) of ``opts.teacher`` on ``device`` (None without one)."""
    paths = teacher_paths(opts)
    if not paths:
        return None
    nets = []
    for path in paths:
        net = FaceExpressionHead.load(path, flip=False).net
        if net.options.crop != student.crop or net.options.labels != student.labels:
            raise FaceExpressionError(
                f"teacher {path} has another crop or label set than the student: distil from "
                "checkpoints trained on the same crops and labels"
            )
        nets.append(net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False))
    return TeacherEnsemble(nets, opts.distill_temperature)


def subset_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The fixed evaluation subset: ``size`` sorted indices drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


@torch.inference_mode()
def score_faces(net: nn.Module, data: FaceImages, batch_size: int = 512) -> dict[str, float]:
    """Accuracy, unweighted accuracy (mean per-class recall) and mean NLL, flip-averaged."""
    net.eval()
    crop = net.options.crop
    device = next(net.parameters()).device
    preds, nll = [], 0.0
    for i in range(0, len(data.images), batch_size):
        x = torch.from_numpy(data.images[i : i + batch_size]).to(device).float().unsqueeze(1) / 255
        logp = _flip_averaged_logits(net, standardize(center_crop(x, crop))).cpu()
        y = torch.from_numpy(data.labels[i : i + batch_size])
        nll += float(F.nll_loss(logp, y, reduction="sum"))
        preds.append(logp.argmax(-1).numpy())
    pred = np.concatenate(preds) if preds else np.array([], dtype=np.int64)
    return _metrics(pred, data.labels, nll, len(net.options.labels))


def _metrics(pred: np.ndarray, labels: np.ndarray, nll: float, n_classes: int) -> dict[str, float]:
    n = max(len(labels), 1)
    recalls = [
        float((pred[labels == c] == c).mean()) for c in range(n_classes) if (labels == c).any()
    ]
    return {
        "accuracy": round(float((pred == labels).mean()) if len(labels) else 0.0, 6),
        "unweighted_accuracy": round(float(np.mean(recalls)) if recalls else 0.0, 6),
        "nll": round(nll / n, 6),
        "n": int(len(labels)),
    }


def train_face(
    data_dir: Path,
    out: Path,
    work_dir: Path,
    options: FaceTrainOptions = FaceTrainOptions(),
    net_options: FaceNetOptions | None = None,
    progress: Progress = no_progress,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train on FER2013 Training, select on PublicTest, write the best checkpoint to ``out``.

    ``device``: where the network, the images and their augmentation live (``cpu``, ``cuda``…).

    Returns the ``info`` dict stored in the checkpoint (scores, data provenance, timings).
    """
    net_options = net_options or FaceNetOptions()
    if options.threads:
        torch.set_num_threads(options.threads)
    fer = load_fer(data_dir)
    test = fer.split("PublicTest")
    train, dropped = clean_fer_training(fer.split("Training"), test)
    if options.max_train_images:
        train = FaceImages(
            train.images[: options.max_train_images],
            train.labels[: options.max_train_images],
            train.usage[: options.max_train_images],
            train.source,
        )
    log.info(
        "FER2013: %d training images after cleaning (%s), %d PublicTest",
        len(train.images),
        dropped,
        len(test.images),
    )
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    device = torch.device(device)
    net = FaceExpressionNet(net_options).to(device, memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train.images) / options.batch_size)
    opt = torch.optim.SGD(
        net.parameters(),
        lr=options.max_lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=options.weight_decay,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=options.max_lr,
        total_steps=options.epochs * steps_per_epoch,
        pct_start=options.warmup_fraction,
        anneal_strategy="cos",
    )
    state: dict[str, Any] = {
        "epoch": 0,
        "best": -1.0,
        "best_model": None,
        "history": [],
        "train_seconds": 0.0,
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    last = work_dir / "last.pt"
    signature = {
        "train": asdict(options),
        "net": options_dict(net_options),
        "data": str(fer.source.resolve()),
    }
    saved = load_last(last, signature)
    if saved is not None:
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
    teacher = _load_teacher(options, net_options, device)
    images = torch.from_numpy(train.images).to(device).float().unsqueeze(1) / 255.0
    labels = torch.from_numpy(train.labels).to(device)
    for epoch in range(state["epoch"], options.epochs):
        net.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(images), generator=gen)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * options.batch_size : (step + 1) * options.batch_size].to(device)
            x = standardize(augment(images[idx], net_options.crop, options, gen))
            x = x.contiguous(memory_format=torch.channels_last)
            logits = net(x)
            loss = F.cross_entropy(logits, labels[idx], label_smoothing=options.label_smoothing)
            if teacher is not None:
                loss = distillation_loss(logits, teacher(x), loss, options)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach())
            progress(
                "train",
                step + 1,
                steps_per_epoch,
                {"epoch": epoch + 1, "loss": total_loss / (step + 1)},
            )
        seconds = time.perf_counter() - t0
        scores = score_faces(net, test)
        entry = {
            "epoch": epoch + 1,
            "train_loss": round(total_loss / steps_per_epoch, 5),
            "seconds": round(seconds, 1),
            **{f"public_test_{k}": v for k, v in scores.items()},
        }
        state["history"].append(entry)
        state["train_seconds"] += seconds
        if scores["accuracy"] > state["best"]:
            state["best"] = scores["accuracy"]
            state["best_model"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        state["epoch"] = epoch + 1
        log.info("epoch %d: %s", epoch + 1, entry)
        progress(
            "epoch",
            epoch + 1,
            options.epochs,
            {"accuracy": scores["accuracy"], "loss": entry["train_loss"]},
        )
        save_last(
            last,
            signature,
            model=net.state_dict(),
            optimizer=opt.state_dict(),
            scheduler=sched.state_dict(),
            generator=gen.get_state(),
            torch_rng=torch.get_rng_state(),
            state=state,
        )
    return _write_face_checkpoint(
        out, net_options, options, state, test, dropped, len(train.images)
    )


def _write_face_checkpoint(
    out: Path,
    net_options: FaceNetOptions,
    options: FaceTrainOptions,
    state: dict[str, Any],
    test: FaceImages,
    dropped: dict[str, int],
    n_train: int,
) -> dict[str, Any]:
    net = FaceExpressionNet(net_options)
    net.load_state_dict(state["best_model"])
    best_epoch = max(state["history"], key=lambda e: e["public_test_accuracy"])["epoch"]
    full = score_faces(net, test)
    idx = subset_indices(len(test.images), options.subset_size, options.seed)
    subset = FaceImages(test.images[idx], test.labels[idx], test.usage[idx], test.source)
    info = {
        "task": "facial expression (7 classes)",
        "labels": list(net_options.labels),
        "training_data": "FER2013 Training (research use only; Goodfellow et al. 2013), cleaned: "
        + ", ".join(f"{k}={v}" for k, v in dropped.items()),
        "selection_data": "FER2013 PublicTest (model selected on it: best epoch)",
        "n_train": n_train,
        "best_epoch": best_epoch,
        "epochs": options.epochs,
        "train_seconds": round(state["train_seconds"], 1),
        "public_test": full,
        "subset": {
            "split": "PublicTest",
            "seed": options.seed,
            "indices": idx.tolist(),
            "scores": score_faces(net, subset),
        },
        "history": state["history"],
        "options": asdict(options),
    }
    if paths := teacher_paths(options):
        info["teachers"] = [
            {"path": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in paths
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"options": options_dict(net_options), "model": net.state_dict(), "info": info}, out)
    return info


def evaluate_face(head: FaceExpressionHead, data: FaceImages) -> dict[str, float]:
    """Score a loaded head on FER2013-layout images (labels in the head's label order)."""
    if tuple(head.labels) != FER_LABELS:
        log.warning("checkpoint labels %s differ from FER2013's order", head.labels)
    return score_faces(head.net, data)
