"""Checkpoint files: one ``torch.save`` of a plain dict, loadable with ``weights_only=True``.

Contents: ``format`` / ``format_version``, ``model`` (registry name), ``config`` (the model's
``Config`` as a dict), ``label_set``, ``labels`` (ordered), ``feature_dims``, ``state_dict``,
``content_hash`` (sha256 of the weights: every tensor's name, dtype, shape and bytes in key
order), ``feature_spec`` (the :class:`~realtime_erc.models.feature_spec.FeatureSpec` the live
stages are built from), and optional ``metrics`` / ``provenance`` dicts. The first 8 hex digits
of the hash name the weights in the stream's ``model`` field: ``bigfusion/meld7@3f2a9c1e``.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from realtime_erc.errors import UserError
from realtime_erc.models.base import ERCModel, FeatureDims
from realtime_erc.models.feature_spec import FeatureSpec
from realtime_erc.models.options import ModelConfigError, config_from_dict
from realtime_erc.models.registry import UnknownModelError, model_class

log = logging.getLogger(__name__)

FORMAT = "realtime-erc/checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UserError, ValueError):
    """A checkpoint file that is missing, corrupt, or not for this program."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a loaded (or saved) checkpoint says about its model."""

    model: str
    label_set: str
    content_hash: str
    path: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    features: FeatureSpec | None = None
    """What the model was trained on (None for a model never saved)."""

    @property
    def model_id(self) -> str:
        """``name/label_set@hash8``."""
        return f"{self.model}/{self.label_set}@{self.content_hash[:8]}"


def content_hash(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 hex digest of the weights (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_info(model: ERCModel) -> CheckpointInfo:
    """The model's checkpoint info: the hash of its current weights, with the path, metrics and
    provenance of the checkpoint it was loaded from or saved to if the weights still match."""
    digest = content_hash(model.state_dict())
    info = getattr(model, "checkpoint_info", None)
    if isinstance(info, CheckpointInfo) and info.content_hash == digest:
        return info
    return CheckpointInfo(model.name, model.label_set, digest)


def build_model(
    name: str,
    dims: FeatureDims,
    labels: Sequence[str],
    label_set: str = "custom",
    config: Any | None = None,
) -> ERCModel:
    """A fresh model from the registry (``config``: its ``Config``; default: the defaults)."""
    cls = model_class(name)
    return cls(dims, labels, label_set, config if config is not None else cls.Config())


def save_checkpoint(
    model: ERCModel,
    path: Path | str,
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    features: FeatureSpec | None = None,
) -> CheckpointInfo:
    """Write ``model`` to ``path``; returns the info (with the content hash). ``features``:
    what it was trained on (default: what ``provenance`` says, else every modality at the
    model's dims)."""
    features = features or FeatureSpec.from_checkpoint(
        {"provenance": provenance, "feature_dims": model.dims.to_dict()}, str(path)
    )
    if features.dims != model.dims:
        raise ValueError(f"feature spec dims {features.dims} are not the model's {model.dims}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = content_hash(state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "config": asdict(model.config),
        "label_set": model.label_set,
        "labels": list(model.labels),
        "feature_dims": model.dims.to_dict(),
        "state_dict": state,
        "content_hash": digest,
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
        "feature_spec": features.model_dump(mode="json"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    info = CheckpointInfo(
        model.name, model.label_set, digest, str(path), payload["metrics"],
        payload["provenance"], features,
    )  # fmt: skip
    model.checkpoint_info = info
    return info


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint's dict, checked for format and version (weights on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a checkpoint file path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a realtime-erc checkpoint ({e.__class__.__name__}"
            f": {str(e).splitlines()[0] if str(e) else 'unreadable'}): re-save or re-download it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a realtime-erc checkpoint (no {FORMAT!r} header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('format_version')!r}; this "
            f"program reads version {FORMAT_VERSION}: re-save it with a matching realtime-erc"
        )
    missing = [
        k for k in ("model", "config", "labels", "feature_dims", "state_dict") if k not in payload
    ]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it is incomplete")
    return payload


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> ERCModel:
    """The model saved at ``path``, on ``device``, in eval mode; ``model.checkpoint_info`` says
    what it is (name, label set, hash, metrics, provenance)."""
    payload = read_checkpoint(path)
    name = payload["model"]
    try:
        config = config_from_dict(name, payload["config"], source=f"checkpoint {path}")
        model = build_model(
            name,
            FeatureDims.from_dict(payload["feature_dims"]),
            payload["labels"],
            payload.get("label_set", "custom"),
            config,
        )
    except (UnknownModelError, ModelConfigError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    state = payload["state_dict"]
    digest = content_hash(state)
    if payload.get("content_hash") not in (None, digest):
        raise CheckpointError(
            f"checkpoint {path}: weights do not match their recorded hash (file damaged?)"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit model {name!r} "
            f"({str(e).splitlines()[0]}): was it saved by another version?"
        ) from None
    model.checkpoint_info = CheckpointInfo(
        name,
        model.label_set,
        digest,
        str(path),
        dict(payload.get("metrics") or {}),
        dict(payload.get("provenance") or {}),
        FeatureSpec.from_checkpoint(payload, f"checkpoint {path}"),
    )
    log.debug("loaded %s from %s", model.checkpoint_info.model_id, path)
    return model.to(device).eval()
