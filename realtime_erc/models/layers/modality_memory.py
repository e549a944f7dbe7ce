"""Modality memory: what the conversation's aligned modality vectors said so far, read by attention.

Memory rows are the aligned modality vectors ``â_{j,m}`` of the utterances j within the horizon
(``t − horizon < j ≤ t`` causal, ``|t − j| < horizon`` bidirectional), absent modalities masked.
Utterance t reads it with its aligned vector ``a_t`` (multi-head attention, ``heads``)::

    r_t = W_o MHA(q = W_q a_t, K = W_k â, V = W_v â)              [N, H]

Streaming keeps the projected keys and values of the last ``horizon`` utterances in
:class:`RingCache` s (the per-dialogue modality memory in ``ConversationState``), so a step costs
``O(horizon · 3 · H)`` whatever the conversation's length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from realtime_erc.conversation.context import RingCache, horizon_mask


class ModalityMemory(nn.Module):
    """``forward`` over dense dialogues; ``step`` for one new utterance with a cache from
    :meth:`new_cache`."""

    def __init__(self, hidden: int, heads: int, horizon: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"memory heads={heads} must divide hidden={hidden}")
        self.hidden, self.heads, self.horizon = hidden, heads, horizon
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def _read(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
        """``q``: ``[B, L, H]``; ``k``/``v``: ``[B, S, H]``; ``allowed``: ``[B, L, S]`` →
        ``[B, L, H]``."""
        b, length, hid = q.shape
        d = hid // self.heads
        qh = q.view(b, length, self.heads, d)
        kh = k.view(b, -1, self.heads, d)
        vh = v.view(b, -1, self.heads, d)
        scores = torch.einsum("blhd,bshd->bhls", qh, kh) / math.sqrt(d)
        allowed = allowed.unsqueeze(1)
        attn = torch.softmax(scores.masked_fill(~allowed, -1e9), -1) * allowed.any(-1, True)
        return self.out(torch.einsum("bhls,bshd->blhd", attn, vh).reshape(b, length, hid))

    def forward(self, query: Tensor, tokens: Tensor, token_mask: Tensor, causal: bool) -> Tensor:
        """``query``: ``[B, L, H]``; ``tokens``: ``[B, L, 3, H]``; ``token_mask``: ``[B, L, 3]``
        → ``[B, L, H]``."""
        b, length, m, _ = tokens.shape
        k, v = self.kv(tokens.reshape(b, length * m, -1)).chunk(2, -1)
        window = horizon_mask(length, self.horizon, causal, query.device)  # [L, L]
        allowed = window.repeat_interleave(m, 1).unsqueeze(0) & token_mask.reshape(b, 1, -1)
        return self._read(self.q(query), k, v, allowed)

    def new_cache(self, device: torch.device | None = None) -> dict[str, RingCache]:
        shape = (3, self.hidden)
        return {
            "k": RingCache(self.horizon, shape, device=device),
            "v": RingCache(self.horizon, shape, device=device),
            "mask": RingCache(self.horizon, (3,), device=device, dtype=torch.bool),
        }

    def step(
        self, query: Tensor, tokens: Tensor, token_mask: Tensor, cache: dict[str, RingCache]
    ) -> Tensor:
        """``query``: ``[H]``; ``tokens``: ``[3, H]``; ``token_mask``: ``[3]`` → ``[H]``.
        Stores this utterance's keys/values, then reads (causal: it sees itself)."""
        k, v = self.kv(tokens).chunk(2, -1)
        cache["k"].append(k)
        cache["v"].append(v)
        cache["mask"].append(token_mask)
        # Storage order (no copy): the read has no positional terms, so row order is irrelevant.
        keys = cache["k"].stored().reshape(1, -1, self.hidden)
        values = cache["v"].stored().reshape(1, -1, self.hidden)
        allowed = cache["mask"].stored().reshape(1, 1, -1)
        return self._read(self.q(query).view(1, 1, -1), keys, values, allowed).view(-1)
