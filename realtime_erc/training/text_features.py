"""Pooled text features for whole corpora, cached on disk so re-runs take seconds.

The cache lives in ``<cache_root>/features/text/<encoder_id>/`` as ``shard-*.npz`` files, each
holding ``keys`` (sha256 hex of the UTF-8 text, ``[M]``; of text and context for an encoder that
reads context) and ``vectors`` (``[M, D]`` float32).
``encoder_id`` names the encoder and everything that changes its output (weights, max tokens),
so two encoders never share vectors. Shards are only ever added, never rewritten, so an
interrupted run keeps what it already encoded.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from realtime_erc.features.assets import cache_root
from realtime_erc.training.progress import Progress

log = logging.getLogger(__name__)


class PooledTextEncoder(Protocol):
    """Anything that turns texts into pooled vectors ``[N, dim]``."""

    identity: str
    dim: int
    context_turns: int

    def encode_pooled(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None
    ) -> np.ndarray: ...


def text_key(text: str, context: str | None = None) -> str:
    data = text if context is None else f"{text}\x1e{context}"
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


@dataclass
class SentencePooled:
    """The live text encoder (:class:`~realtime_erc.features.text.TextEncoder`), pooled output
    only: the same ``sentence_embedding`` the live feature stage emits, without token vectors.
    ``encoder``: the base (``minilm`` | ``mpnet``); ``adapter``: an emotion-adapted LoRA file,
    which brings its own base (its content hash joins the identity)."""

    max_tokens: int = 128
    batch_size: int = 64
    adapter: Path | None = None
    encoder: str = "minilm"

    def __post_init__(self) -> None:
        from realtime_erc.features.text import TEXT_ENCODERS, TextEncoder, TextOptions

        self._encoder = TextEncoder(
            TextOptions(max_tokens=self.max_tokens, encoder=self.encoder), adapter=self.adapter
        )
        self.dim = self._encoder.dim
        # an adapter brings its own base: name the encoder actually used
        self.encoder = next(k for k, v in TEXT_ENCODERS.items() if v is self._encoder.spec)
        adapter = self._encoder.adapter
        self._adapter_id = "+" + adapter.identity if adapter is not None else ""

    @property
    def identity(self) -> str:
        return f"{self._encoder.spec.name}-pooled-t{self.max_tokens}{self._adapter_id}"

    @property
    def context_turns(self) -> int:
        return self._encoder.context_turns

    @property
    def partial_layers(self) -> int:
        """With an adapter on only the top K of the encoder's layers: K (else 0)."""
        adapter = self._encoder.adapter
        k = adapter.top_layers if adapter is not None else 0
        return k if 0 < k < self._encoder.spec.layers else 0

    def encode_pooled(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None
    ) -> np.ndarray:
        self._encoder.load()
        if self.context_turns:
            given = list(contexts) if contexts is not None else [""] * len(texts)
            feats = self._encoder.encode_batch(list(texts), given)
            return np.stack([f.pooled for f in feats]).astype(np.float32)
        model = self._encoder._model  # the loaded SentenceTransformer (shared with the live path)
        vectors = model.encode(  # type: ignore[union-attr]
            list(texts),
            output_value="sentence_embedding",
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, np.float32)


class TextFeatureCache:
    """Vectors of one encoder, keyed by text hash."""

    def __init__(self, encoder_id: str, root: Path | None = None) -> None:
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in encoder_id)
        self.dir = (root or cache_root() / "features" / "text") / safe
        self._vectors: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            for shard in sorted(self.dir.glob("shard-*.npz")):
                try:
                    with np.load(shard) as data:
                        for key, vec in zip(data["keys"], data["vectors"], strict=True):
                            self._vectors[str(key)] = vec
                except (OSError, ValueError, KeyError) as e:  # a shard cut short by a crash
                    log.warning("ignoring unreadable text-feature shard %s (%s)", shard, e)
        return self._vectors

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        vectors = self._load()
        return {k: vectors[k] for k in keys if k in vectors}

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"tmp-{uuid.uuid4().hex}.npz"
        np.savez(tmp, keys=np.asarray(keys), vectors=np.asarray(vectors, np.float32))
        tmp.rename(self.dir / f"shard-{uuid.uuid4().hex}.npz")  # atomic: readers never see half
        store = self._load()
        for k, v in zip(keys, vectors, strict=True):
            store[k] = np.asarray(v, np.float32)


def encode_texts(
    texts: Sequence[str],
    encoder: PooledTextEncoder,
    cache: TextFeatureCache | None = None,
    chunk: int = 512,
    progress: Progress | None = None,
    contexts: Sequence[str] | None = None,
) -> np.ndarray:
    """Pooled vectors ``[N, encoder.dim]`` for ``texts`` (read with ``contexts`` by an encoder
    with ``context_turns``), encoding only those not cached yet (in chunks of ``chunk``, each
    saved as it completes, so a crash loses at most one chunk)."""
    cache = cache or TextFeatureCache(encoder.identity)
    given = list(contexts) if contexts is not None and encoder.context_turns else None
    pairs = list(zip(texts, given or [None] * len(texts), strict=True))
    keys = [text_key(t, c) for t, c in pairs]
    unique = list(dict.fromkeys(keys))
    have = cache.get(unique)
    todo_keys = [k for k in unique if k not in have]
    if todo_keys:
        by_key = dict(zip(keys, pairs, strict=True))
        log.info("encoding %d texts with %s", len(todo_keys), encoder.identity)
        for start in range(0, len(todo_keys), chunk):
            part = todo_keys[start : start + chunk]
            items = [by_key[k] for k in part]
            vectors = encoder.encode_pooled(
                [t for t, _ in items], [c or "" for _, c in items] if given else None
            )
            cache.add(part, vectors)
            have.update(zip(part, vectors, strict=True))
            if progress is not None:
                done = min(start + chunk, len(todo_keys))
                progress("encode text", done, len(todo_keys), {})
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    return np.stack([have[k] for k in keys]).astype(np.float32, copy=False)
