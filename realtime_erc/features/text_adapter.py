"""Emotion-adapted text encoder: LoRA adapters for a packaged encoder, trained on ERC corpora.

An adapter file (``torch.save`` of a dict, ~1.3 MB for MiniLM) holds:

- ``format``: ``"realtime-erc/text-adapter/2"``; ``base``: the encoder it adapts (a model name
  of :data:`~realtime_erc.features.text.TEXT_ENCODERS`);
- ``lora``: ``{"rank", "alpha", "targets"}`` (``targets``: suffixes of the adapted layers' names)
  and ``state``: the trained ``lora_A`` / ``lora_B``, as peft's state dict (see
  :mod:`~realtime_erc.features.lora`);
- ``head``: the utterance classifier trained with it (``labels``, ``weight [C, D]``, ``bias``,
  ``scale``), which gives text-only emotion scores: ``softmax(weight · (scale · v) + bias)`` for
  the pooled, L2-normalised vector ``v``;
- ``info``: dataset, label set, validation scores, training time, options;
- ``context_turns``: how many earlier turns the encoder reads with each utterance (0 or absent:
  the utterance alone; see :func:`~realtime_erc.features.text.turn_context`);
- ``digest`` (converted files only): the content digest of the file as first written, which
  keeps naming it (:attr:`TextAdapter.identity`) after ``scripts/convert_adapters_peft.py``
  rewrote it from format 1 (the hand-written LoRA's tensor names) to format 2. Format-1 files
  are still read, their tensors renamed on loading.

Applying an adapter merges it into the encoder's weights (:func:`~realtime_erc.features.lora.
merge_lora`): the adapted encoder costs the same per utterance as the base one.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realtime_erc.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "realtime-erc/text-adapter/2"
LEGACY_FORMAT = "realtime-erc/text-adapter/1"
"""Before peft: the same matrices under the hand-written LoRA's names (read, never written)."""

PACKAGED_DIR = Path(__file__).resolve().parent.parent / "assets"


class TextAdapterError(UserError, ValueError):
    """An adapter file is unusable; the message names it and the fix."""


@dataclass(frozen=True)
class TextAdapter:
    path: Path
    rank: int
    alpha: float
    targets: tuple[str, ...]
    state: dict[str, torch.Tensor]
    head: dict[str, Any]
    info: dict[str, Any]
    digest: str
    context_turns: int = 0
    base: str = "all-MiniLM-L6-v2"
    """The encoder it adapts (its model name)."""

    @property
    def identity(self) -> str:
        """Names the adapted encoder in feature caches and checkpoints (content-addressed)."""
        return f"lora-{self.info.get('dataset', 'custom')}@{self.digest}"

    @property
    def top_layers(self) -> int:
        """The adapter covers only the encoder's top ``top_layers`` layers (0: all of them)."""
        return int(self.info.get("options", {}).get("lora_layers") or 0)

    @classmethod
    def load(cls, path: Path | str) -> TextAdapter:
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise TextAdapterError(
                f"cannot read the text adapter {path} ({e}): train one with "
                "'realtime-erc train-text-encoder' or point to an existing file"
            ) from None
        if not isinstance(data, dict) or data.get("format") not in (FORMAT, LEGACY_FORMAT):
            raise TextAdapterError(f"{path} is not a text adapter ({FORMAT})")
        from realtime_erc.features.text import encoder_spec

        try:
            encoder_spec(str(data.get("base")))
        except ValueError as e:
            raise TextAdapterError(f"{path} adapts an encoder this program lacks: {e}") from None
        lora = data["lora"]
        state = data["state"]
        if data["format"] == LEGACY_FORMAT:
            from realtime_erc.features.lora import legacy_state

            state = legacy_state(state)
        return cls(
            path=path,
            rank=int(lora["rank"]),
            alpha=float(lora["alpha"]),
            targets=tuple(lora["targets"]),
            state=state,
            head=data["head"],
            info=data.get("info", {}),
            digest=data.get("digest") or hashlib.sha256(raw).hexdigest()[:12],
            context_turns=int(data.get("context_turns", 0)),
            base=data["base"],
        )

    def apply(self, transformer: nn.Module) -> None:
        """Adapt a transformer module in place (adapters loaded, then merged into its weights)."""
        from realtime_erc.features.lora import add_lora, load_lora_state, merge_lora  # peft: slow

        try:
            model = add_lora(transformer, self.targets, self.rank, self.alpha)
            load_lora_state(model, self.state)
        except ValueError as e:
            raise TextAdapterError(
                f"{self.path} does not fit the encoder ({e}): retrain the adapter"
            ) from None
        merge_lora(model)
        for p in transformer.parameters():
            p.requires_grad_(False)


def save_adapter(
    path: Path,
    lora: dict[str, Any],
    state: dict[str, torch.Tensor],
    head: dict[str, Any],
    info: dict[str, Any],
    context_turns: int = 0,
    base: str = "all-MiniLM-L6-v2",
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    data = {"format": FORMAT, "base": base, "lora": lora, "state": state, "head": head,
            "info": info}  # fmt: skip
    if context_turns:  # absent otherwise: files without context stay byte-identical
        data["context_turns"] = context_turns
    torch.save(data, tmp)
    tmp.replace(path)


def find_adapter(identity: str, search: list[Path] | None = None) -> TextAdapter | None:
    """The adapter whose :attr:`TextAdapter.identity` is ``identity``, among the packaged
    ``assets/text_adapter_*.pt`` and trained ones under the cache."""
    from realtime_erc.features.assets import cache_root

    roots = search or [PACKAGED_DIR, cache_root() / "train" / "text"]
    for root in roots:
        for path in sorted(root.glob("**/*adapter*.pt")) if root.is_dir() else []:
            try:
                adapter = TextAdapter.load(path)
            except TextAdapterError:
                continue
            if adapter.identity == identity:
                return adapter
    return None


def resolve_adapter(setting: str, trained_with: str | None = None) -> Path | None:
    """The adapter file the ``features.text.adapter`` setting means: ``none`` → the base
    encoder; a path → that file (checked); ``auto`` → the adapter named in ``trained_with``
    (the text-encoder identity an ERC checkpoint records), or none if it names none."""
    identity = trained_with.split("+", 1)[1] if trained_with and "+" in trained_with else None
    if setting != "auto":
        path = None if setting == "none" else Path(setting).expanduser()
        # a path fails here, with the fix, rather than at the first utterance
        chosen = TextAdapter.load(path).identity if path is not None else None
        if chosen != identity and trained_with:
            log.warning(
                "features.text.adapter = %s, but the ERC model was trained on text from %s: "
                'its scores will be off (use adapter = "auto")',
                setting,
                identity or "the base encoder",
            )
        return path
    if identity is None:
        return None
    found = find_adapter(identity)
    if found is None:
        raise TextAdapterError(
            f"the ERC checkpoint was trained on text from the adapted encoder {identity!r}, "
            "which is neither packaged nor under the cache: set features.text.adapter to its "
            "file, or use a checkpoint trained on the base encoder"
        )
    return found.path
