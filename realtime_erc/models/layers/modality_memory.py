"""Modality memory: what the conversation's aligned modality vectors said so far, read by attention.

Memory rows are the aligned modality vectors ``â_{j,m}`` of the utterances j within the horizon
(``t − horizon < j ≤ t`` causal, ``|t − j| < horizon`` bidirectional), absent modalities masked.
Utterance t reads it with its aligned vector ``a_t`` (multi-head attention, ``heads``)::

    r_t = W_o MHA(q = W_q a_t, K = W_k â, V = W_v â)              [N, H]

Streaming keeps the projected keys and values of the last ``horizon`` utterances in a
preallocated ring (:class:`MemoryCache`, the per-dialogue modality memory in
``ConversationState``), read in storage order (the read has no positional terms), so a step costs
``O(horizon · 3 · H)`` whatever the conversation's length: two matrix products, the heads
separated by a ``[H, heads]`` block selector instead of reshapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from realtime_erc.conversation.context import horizon_mask


@dataclass
class MemoryCache:
    """Streaming memory of one conversation: ``keys`` / ``values`` ``[heads, horizon · 3, d]``
    (utterance j's rows at slot ``j mod horizon``), ``mask`` ``[horizon · 3]`` additive (−1e9
    for an absent modality), ``present`` the present modalities per slot, ``count`` utterances
    stored so far."""

    keys: Tensor
    values: Tensor
    mask: Tensor
    present: list[int] = field(default_factory=list)
    count: int = 0


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

    def reset_parameters(self) -> None:
        for module in (self.q, self.kv, self.out):
            module.reset_parameters()

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

    def new_cache(self, device: torch.device | None = None) -> MemoryCache:
        shape = (self.heads, 3 * self.horizon, self.hidden // self.heads)
        return MemoryCache(
            keys=torch.zeros(shape, device=device),
            values=torch.zeros(shape, device=device),
            mask=torch.zeros(3 * self.horizon, device=device),
            present=[0] * self.horizon,
        )

    def step(
        self, query: Tensor, tokens: Tensor, mask: Tensor, present: int, cache: MemoryCache
    ) -> Tensor:
        """``query``: ``[H]``; ``tokens``: ``[3, H]``; ``mask``: ``[3]`` additive (−1e9 where
        absent); ``present``: how many are present → ``[H]``. Stores this utterance's
        keys/values, then reads (causal: it sees itself)."""
        hid, heads = self.hidden, self.heads
        d = hid // heads
        kv = F.linear(tokens, self.kv.weight, self.kv.bias).view(3, 2, heads, d)
        rows = slice(3 * (cache.count % self.horizon), 3 * (cache.count % self.horizon) + 3)
        cache.keys[:, rows] = kv[:, 0].transpose(0, 1)
        cache.values[:, rows] = kv[:, 1].transpose(0, 1)
        cache.mask[rows] = mask
        cache.present[cache.count % self.horizon] = present
        cache.count += 1
        if not any(cache.present):  # nothing to read: the attention output is zero
            return F.linear(torch.zeros_like(query), self.out.weight, self.out.bias)
        n = 3 * min(cache.count, self.horizon)
        q = F.linear(query, self.q.weight, self.q.bias).view(heads, 1, d)
        scores = torch.baddbmm(
            cache.mask[:n], q, cache.keys[:, :n].transpose(1, 2), alpha=1.0 / math.sqrt(d)
        )  # [heads, 1, n]
        read = torch.bmm(torch.softmax(scores, -1), cache.values[:, :n])  # [heads, 1, d]
        return F.linear(read.view(hid), self.out.weight, self.out.bias)
