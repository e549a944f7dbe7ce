"""Facial-expression head: a small CNN on 48×48 grayscale face crops, trained on FER2013.

Used two ways: provisional per-face predictions (probabilities over :data:`FER_LABELS`) and, via
:meth:`FaceExpressionHead.embed`, its penultimate activations as visual features.

Input pipeline (the same in training and inference): a grayscale crop is resized to 48×48, the
central 40×40 window is taken (training uses random affine crops of the same size instead), and
each crop is standardised on its own (zero mean, unit variance) so that lighting and camera gain
matter less. Inference averages the prediction of the crop and of its mirror image.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from realtime_erc.errors import UserError

log = logging.getLogger(__name__)

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013's label order (class index → name); checkpoints store their own copy."""

IMAGE_SIZE = 48
"""Side of the crop the head is fed (FER2013's native size)."""

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "face_expression.pt"


class FaceExpressionError(UserError, ValueError):
    """A face-expression checkpoint or input is unusable; the message says what to do."""


@dataclass(frozen=True)
class FaceNetOptions:
    """Architecture of :class:`FaceExpressionNet` (stored in checkpoints)."""

    widths: tuple[int, ...] = (32, 64, 128, 256)
    embed_dim: int = 128
    crop: int = 40
    dropout: float = 0.3
    labels: tuple[str, ...] = field(default=FER_LABELS)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class FaceExpressionNet(nn.Module):
    """VGG-style CNN: a one-conv stem, three two-conv stages, global pooling, two linear layers.

    ``forward(x [B, 1, crop, crop]) -> logits [B, n_labels]``; ``embed`` gives the penultimate
    ``[B, embed_dim]`` (after ReLU). Pooling halves the side after the stem and the first two
    stages (40 → 20 → 10 → 5).
    """

    def __init__(self, options: FaceNetOptions = FaceNetOptions()) -> None:
        super().__init__()
        self.options = options
        widths = options.widths
        layers: list[nn.Module] = [*_conv_bn_relu(1, widths[0]), nn.MaxPool2d(2)]
        cin = widths[0]
        for i, cout in enumerate(widths[1:]):
            layers += _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout)
            if i < len(widths) - 2:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = nn.Sequential(
            nn.Flatten(), nn.Dropout(options.dropout), nn.Linear(cin, options.embed_dim), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.Dropout(options.dropout), nn.Linear(options.embed_dim, len(options.labels))
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation of ``[B, 1, H, W]`` float crops (zero mean, unit variance)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0 / 255)
    return (x - mean) / std


def center_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """``[B, 1, 48, 48]`` → the central ``[B, 1, crop, crop]`` window."""
    off = (IMAGE_SIZE - crop) // 2
    return images[..., off : off + crop, off : off + crop]


def prepare_crops(crops: np.ndarray | list[np.ndarray], crop: int) -> torch.Tensor:
    """Face crops (each ``[H, W]`` gray or ``[H, W, 3]`` BGR, uint8 or float in 0..255)
    → standardised centre windows ``[B, 1, crop, crop]`` float32."""
    if isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[1:] == (48, 48):
        batch = crops.astype(np.float32)  # already a [B, 48, 48] gray batch
    else:
        items = [crops] if _is_single(crops) else crops
        batch = np.stack([_to_gray48(np.asarray(c)) for c in items]).astype(np.float32)
    x = torch.from_numpy(batch).unsqueeze(1) / 255.0
    return standardize(center_crop(x, crop))


def _to_gray48(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_BGR2GRAY)
    elif image.ndim != 2:
        raise FaceExpressionError(
            f"a face crop must be [H, W] gray or [H, W, 3] BGR, got shape {image.shape}"
        )
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return image


class FaceExpressionHead:
    """Inference wrapper around a trained :class:`FaceExpressionNet` checkpoint (CPU).

    ``predict(crops) -> [B, 7]`` probabilities; ``embed(crops) -> [B, 128]``. A single crop gives
    ``[7]`` / ``[128]``. ``flip`` averages each crop with its mirror image (the scored setting;
    about twice the compute of ``flip=False``).
    """

    def __init__(
        self, net: FaceExpressionNet, info: dict[str, Any] | None = None, flip: bool = True
    ) -> None:
        # channels-last convolutions are ~1/3 faster on CPU at these sizes
        self.net = _fold_batchnorm(net.eval()).to(memory_format=torch.channels_last)
        self.info = info or {}
        self.labels = net.options.labels
        self.flip = flip

    @classmethod
    def load(cls, path: Path | str | None = None, flip: bool = True) -> FaceExpressionHead:
        """Load a checkpoint written by the face trainer (default: the packaged one)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise FaceExpressionError(
                f"face-expression checkpoint {path} does not exist: train one with "
                "`realtime-erc train-extractor face` or pass --checkpoint"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            options = FaceNetOptions(**_tuple_fields(state["options"]))
            net = FaceExpressionNet(options)
            net.load_state_dict(state["model"])
        except (KeyError, TypeError, RuntimeError, EOFError) as e:
            raise FaceExpressionError(
                f"{path} is not a face-expression checkpoint ({e}); retrain it with "
                "`realtime-erc train-extractor face`"
            ) from None
        return cls(net, state.get("info", {}), flip)

    @property
    def embed_dim(self) -> int:
        return self.net.options.embed_dim

    @torch.inference_mode()
    def logits(self, crops: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        x = prepare_crops(crops, self.net.options.crop)
        if not self.flip:
            return torch.log_softmax(self.net(x), dim=-1)
        return _flip_averaged_logits(self.net, x)

    def predict(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        single = _is_single(crops)
        probs = torch.softmax(self.logits(crops), dim=-1).numpy()
        return probs[0] if single else probs

    @torch.inference_mode()
    def embed(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        single = _is_single(crops)
        x = prepare_crops(crops, self.net.options.crop)
        if self.flip:
            emb = ((self.net.embed(x) + self.net.embed(x.flip(-1))) / 2).numpy()
        else:
            emb = self.net.embed(x).numpy()
        return emb[0] if single else emb


def _fold_batchnorm(net: FaceExpressionNet) -> FaceExpressionNet:
    """Fold each eval-mode BatchNorm into the convolution before it (same outputs, ~1/4 less
    inference time); the BatchNorm becomes an identity."""
    layers = list(net.features)
    for i, (conv, bn) in enumerate(zip(layers, layers[1:], strict=False)):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            layers[i], layers[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    net.features = nn.Sequential(*layers)
    return net


def _flip_averaged_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Log of the mean of the softmaxes of ``x`` and its mirror image (test-time flip)."""
    both = net(torch.cat([x, x.flip(-1)]))
    probs = torch.softmax(both, dim=-1)
    n = x.shape[0]
    return torch.log((probs[:n] + probs[n:]) / 2)


def _is_single(crops: np.ndarray | list[np.ndarray]) -> bool:
    if isinstance(crops, list):
        return False
    return crops.ndim == 2 or (crops.ndim == 3 and crops.shape[2] == 3 and crops.shape[0] != 3)


def _tuple_fields(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def options_dict(options: FaceNetOptions) -> dict[str, Any]:
    return asdict(options)
