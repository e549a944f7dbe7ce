"""Text features: a packaged sentence encoder on each transcript.

Two encoders are packaged (:data:`TEXT_ENCODERS`): all-MiniLM-L6-v2 (``minilm``, 384-d, 22 M
parameters, the default) and all-mpnet-base-v2 (``mpnet``, 768-d, 110 M parameters, about five
times the compute). Per utterance: the pooled sentence embedding ``[D]`` (mean over tokens,
L2-normalised, as the models were trained) and the token-level sequence ``[T, D]`` (word pieces
including the start and separator tokens, ``T <= max_tokens``) for models that attend over
tokens. Empty transcripts are absent. An adapter file names the encoder it adapts, and that
encoder is used whatever ``encoder`` says.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from realtime_erc.config import TextOptions
from realtime_erc.events import ModalityFeatures
from realtime_erc.features.assets import minilm_model_dir, mpnet_model_dir

if TYPE_CHECKING:
    import torch

    from realtime_erc.features.text_adapter import TextAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentenceEncoderSpec:
    """A packaged sentence-transformers encoder."""

    name: str
    """The model's name: the prefix of feature identities and the ``base`` of adapter files."""
    dim: int
    """Width of the pooled vector and of each token vector."""
    layers: int
    layer_targets: tuple[str, ...]
    """The linear layers of one transformer layer that LoRA adapts (paths inside the layer)."""
    model_dir: Callable[[], Path]

    def lora_targets(self, top_layers: int = 0) -> tuple[str, ...]:
        """Name suffixes of the adapted linear layers: in every layer (``top_layers = 0``) or in
        the top ``top_layers`` only (backpropagation then stops below them: cheaper training)."""
        if not top_layers:
            return self.layer_targets
        first = self.layers - min(top_layers, self.layers)
        return tuple(
            f"layer.{i}.{t}" for i in range(first, self.layers) for t in self.layer_targets
        )


TEXT_ENCODERS: dict[str, SentenceEncoderSpec] = {
    "minilm": SentenceEncoderSpec(
        "all-MiniLM-L6-v2", 384, 6,
        ("attention.self.query", "attention.self.key", "attention.self.value",
         "attention.output.dense", "intermediate.dense", "output.dense"),
        minilm_model_dir,
    ),
    "mpnet": SentenceEncoderSpec(
        "all-mpnet-base-v2", 768, 12,
        ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
         "intermediate.dense", "output.dense"),
        mpnet_model_dir,
    ),
}  # fmt: skip
"""The packaged encoders by their short name (``features.text.encoder``)."""


def encoder_spec(name: str) -> SentenceEncoderSpec:
    """The spec for a short name (``minilm``) or a model name (``all-MiniLM-L6-v2``)."""
    for key, spec in TEXT_ENCODERS.items():
        if name in (key, spec.name):
            return spec
    known = ", ".join(f"{k} ({s.name})" for k, s in TEXT_ENCODERS.items())
    raise ValueError(f"unknown text encoder {name!r}: choose {known}")


def resolve_encoder(setting: str, trained_with: str | None = None) -> str:
    """The encoder the ``features.text.encoder`` setting means: ``auto`` → the base of the text
    identity an ERC checkpoint records (``trained_with``), else ``minilm``."""
    if setting != "auto":
        return setting
    for key, spec in TEXT_ENCODERS.items():
        if trained_with and trained_with.startswith(spec.name + "-"):
            return key
    return "minilm"


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
    """The encoder (a ``SentenceTransformer``) over ``[CLS] text [SEP] context [SEP]`` pairs.

    Returns ``pooled [B, D]`` (mean over the first segment's tokens, L2-normalised, as the
    sentence vector is), ``hidden [B, T, D]`` and ``mask [B, T]`` (True on the first segment:
    the start token, the text's word pieces and the first separator). Pairs longer than
    ``max_tokens`` lose tokens from the longer segment first, which is the context, from its
    oldest end.
    """
    import torch
    import torch.nn.functional as F

    module = model[0]
    batch = module.tokenizer(
        list(texts), list(contexts), truncation="longest_first", max_length=max_tokens,
        padding=True, return_tensors="pt",
    )  # fmt: skip
    batch = {k: v.to(model.device) for k, v in batch.items()}
    hidden = module.auto_model(**batch).last_hidden_state
    # the first segment ends at the first separator (MPNet has no token type ids)
    ids = batch["input_ids"]
    first_sep = (ids == module.tokenizer.sep_token_id).int().argmax(1, keepdim=True)
    mask = torch.arange(ids.shape[1], device=ids.device)[None, :] <= first_sep
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return F.normalize(pooled, dim=-1), hidden, mask


def load_sentence_encoder(
    device: str = "cpu",
    max_tokens: int = 128,
    adapter: TextAdapter | None = None,
    spec: SentenceEncoderSpec = TEXT_ENCODERS["minilm"],
):
    """A packaged encoder as a ``SentenceTransformer`` (loaded by path, never from the hub),
    with ``adapter`` merged into its weights when given (the adapter's base encoder, not
    ``spec``, is then loaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loading by path must never reach the hub
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar on the user's terminal

    if adapter is not None:
        spec = encoder_spec(adapter.base)
    path = spec.model_dir()
    model = SentenceTransformer(str(path), device="cpu")
    model.max_seq_length = max_tokens
    if adapter is not None:
        adapter.apply(model[0].auto_model)
    log.debug("text encoder loaded from %s (adapter: %s)", path, adapter and adapter.path)
    return model.to(device)


class TextEncoder:
    """A packaged sentence encoder (:data:`TEXT_ENCODERS`): pooled + token features."""

    def __init__(
        self,
        options: TextOptions | None = None,
        *,
        device: str = "cpu",
        adapter: Path | None = None,
    ) -> None:
        """``options``: the ``[features.text]`` section (``encoder = "auto"`` means ``minilm``
        here; its ``adapter`` setting is not read: pass the file it resolves to, see
        :func:`~realtime_erc.features.text_adapter.resolve_adapter`, as ``adapter``, an
        emotion-adapted LoRA file whose encoder replaces ``options.encoder``; None = the base
        encoder). ``device``: where the encoder runs."""
        self.options = options or TextOptions()
        self.device = device
        self.adapter: TextAdapter | None = None
        """The adapter file, read once (its identity and context turns are needed early)."""
        if adapter is not None:
            from realtime_erc.features.text_adapter import TextAdapter

            self.adapter = TextAdapter.load(adapter)
        self.context_turns = self.adapter.context_turns if self.adapter is not None else 0
        """Earlier turns the adapter reads with each transcript (0: the transcript alone)."""
        base = (
            self.adapter.base if self.adapter is not None else resolve_encoder(self.options.encoder)
        )
        self.spec = encoder_spec(base)
        self.dim = self.seq_dim = self.spec.dim
        self._model = None
        self._lock = threading.Lock()  # one forward pass at a time (torch modules are shared)

    def load(self) -> None:
        """Load the encoder (about a second; later calls are free)."""
        if self._model is not None:
            return
        self._model = load_sentence_encoder(
            self.device, self.options.max_tokens, self.adapter, self.spec
        )

    def encode(self, text: str, context: str = "") -> ModalityFeatures:
        return self.encode_batch([text], [context])[0]

    def encode_batch(
        self, texts: list[str], contexts: list[str] | None = None
    ) -> list[ModalityFeatures]:
        """One :class:`ModalityFeatures` per text: pooled ``[D]``, sequence ``[T, D]`` with an
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
