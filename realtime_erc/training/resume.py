"""Resumable training state: ``<work_dir>/last.pt``, resumed only by the run that wrote it.

Every trainer saves its whole state after each epoch with the *signature* of the run (options,
data identity); a later call with the same signature continues from there, any other starts
afresh. Writes go through a temporary file, so a run killed mid-save keeps the previous state.
"""

from __future__ import annotations

import logging
import pickle
import uuid
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def load_last(path: Path, signature: Any) -> dict[str, Any] | None:
    """The state saved at ``path`` by a run with this ``signature``, else None."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        log.warning("ignoring unreadable %s (%s): starting afresh", path, e)
        return None
    if not isinstance(saved, dict) or saved.get("signature") != signature:
        log.info("ignoring %s: it was written by a run with other options", path)
        return None
    log.info("resuming from %s", path)
    return saved


def save_last(path: Path, signature: Any, **state: Any) -> None:
    """Write ``state`` (and ``signature``) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save({"signature": signature, **state}, tmp)
    tmp.replace(path)
