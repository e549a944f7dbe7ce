"""BIG-FUSION's dual-attention Transformer block: global and sliding-window attention in
parallel, each through spiking dynamics, fused by a learned gate.

For utterance states ``x [B, L, H]`` (pre-norm block, ``n = LayerNorm(x)``):

    glob = softmax(q_g k_gᵀ / √d + M_glob) v_g      M_glob: j ≤ i and i − j < horizon (causal)
                                                            |i − j| < horizon (bidirectional)
    loc  = softmax(q_l k_lᵀ / √d + b_{i−j} + M_loc) v_l   M_loc: 0 ≤ i − j ≤ w (causal),
                                                            |i − j| ≤ w (bidirectional)
    s_g = LIF(LN(W_og glob)),  s_l = LIF(LN(W_ol loc))       spike-driven branch outputs
    g   = σ(W_gate [s_g; s_l]),  a = g ⊙ s_g + (1 − g) ⊙ s_l
    x'  = x + Dropout(a);   y = x' + Dropout(FFN(LayerNorm(x')))

``b_{i−j}`` is a learned per-head bias for each relative offset within the window. The global
branch has no positional term (content-based over the whole horizon); order enters through the
window bias and the causal mask. Interpretations: the LayerNorm before each LIF stands in for the
BatchNorm of spike-driven Transformers (batch statistics would break step == forward); the gate
is per channel.

The two branches' LIF populations are simulated in one :class:`MultiStepLIF` of shape
``[2, H]`` (own gains per branch).

Streaming (:meth:`DualAttentionBlock.step`): the global and local keys/values of past
utterances are cached per layer in one :class:`~realtime_erc.conversation.context.RingCache`
(``horizon`` rows of ``[4, heads, d_head]``; the window reads its newest ``w + 1``), so a step
costs O(horizon · H) whatever the conversation's length, and gives the causal ``forward`` row
for the newest utterance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from realtime_erc.conversation.context import RingCache, horizon_mask
from realtime_erc.models.layers.lif import LIFOptions, MultiStepLIF


@dataclass
class ReceivedAttention:
    """Attention mass each utterance receives, averaged over heads and over the queries that
    may attend to it: ``glob``/``loc`` ``[B, L]`` (detached; used for GCL node importance)."""

    glob: Tensor
    loc: Tensor


class DualAttentionBlock(nn.Module):
    def __init__(
        self,
        hidden: int,
        heads: int = 4,
        window: int = 4,
        horizon: int = 256,
        ffn: int = 256,
        dropout: float = 0.1,
        lif: LIFOptions | None = None,
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        if horizon < window + 1:
            raise ValueError(f"horizon {horizon} must cover the window (>= {window + 1})")
        self.hidden, self.heads, self.d_head = hidden, heads, hidden // heads
        self.window, self.horizon = window, horizon
        self.norm_in = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 6 * hidden)  # global q, k, v then local q, k, v
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * window + 1))
        self.out_glob = nn.Linear(hidden, hidden)
        self.out_loc = nn.Linear(hidden, hidden)
        self.norm_glob = nn.LayerNorm(hidden)
        self.norm_loc = nn.LayerNorm(hidden)
        self.lif = MultiStepLIF((2, hidden), lif)  # [global; local] populations
        self.gate = nn.Linear(2 * hidden, hidden)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)

    # -- shared tail: spikes, gate, residuals, FFN (row-wise, so step and forward agree) --
    def reset_parameters(self) -> None:
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.zeros_(self.rel_bias)

    def _fuse(self, x: Tensor, glob: Tensor, loc: Tensor) -> Tensor:
        currents = torch.stack(
            [self.norm_glob(self.out_glob(glob)), self.norm_loc(self.out_loc(loc))], -2
        )
        spikes = self.lif(currents)  # [..., 2, H]
        g = torch.sigmoid(self.gate(spikes.flatten(-2)))
        s_g, s_l = spikes.unbind(-2)
        x = x + self._drop(s_l + g * (s_g - s_l))
        inner = self._drop(nn.functional.gelu(self.ffn_in(self.norm_ffn(x))))
        return x + self._drop(self.ffn_out(inner))

    def _drop(self, x: Tensor) -> Tensor:
        # Skipped outright in eval: a streaming step is short enough for no-op calls to count.
        return self.drop(x) if self.training else x

    def forward(
        self, x: Tensor, valid: Tensor, causal: bool = True, need_importance: bool = False
    ) -> tuple[Tensor, ReceivedAttention | None]:
        """``x``: ``[B, L, H]``; ``valid``: ``[B, L]`` bool → ``[B, L, H]`` and, if asked, the
        attention each utterance receives."""
        b, length, _ = x.shape
        qkv = self.qkv(self.norm_in(x)).view(b, length, 6, self.heads, self.d_head)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [6, B, heads, L, d]
        qg, kg, vg, ql, kl, vl = qkv.unbind(0)
        i = torch.arange(length, device=x.device)
        rel = i[:, None] - i[None, :]  # [L, L] = i − j
        eye = rel == 0
        keys = valid[:, None, None, :]
        allow_g = (horizon_mask(length, self.horizon, causal, x.device) & keys) | eye
        in_window = (rel >= 0) & (rel <= self.window) if causal else rel.abs() <= self.window
        allow_l = (in_window & keys) | eye  # [B, 1, L, L]
        scale = 1.0 / math.sqrt(self.d_head)
        bias = self.rel_bias[:, rel.clamp(-self.window, self.window) + self.window]  # [h, L, L]
        att_g = torch.softmax((qg @ kg.transpose(-1, -2) * scale).masked_fill(~allow_g, -1e30), -1)
        att_l = torch.softmax(
            (ql @ kl.transpose(-1, -2) * scale + bias).masked_fill(~allow_l, -1e30), -1
        )
        glob = (self.attn_drop(att_g) @ vg).transpose(1, 2).reshape(b, length, self.hidden)
        loc = (self.attn_drop(att_l) @ vl).transpose(1, 2).reshape(b, length, self.hidden)
        received = None
        if need_importance:
            with torch.no_grad():
                received = ReceivedAttention(
                    _received(att_g, allow_g, valid), _received(att_l, allow_l, valid)
                )
        return self._fuse(x, glob, loc), received

    def new_cache(self, device: torch.device) -> RingCache:
        """Per-layer streaming cache: ``[k_glob, v_glob, k_loc, v_loc]`` rows
        ``[4, heads, d_head]`` of the last ``horizon`` utterances."""
        return RingCache(self.horizon, (4, self.heads, self.d_head), device=device)

    def step(self, x: Tensor, cache: RingCache) -> Tensor:
        """The newest utterance: ``x [H]`` → ``[H]``; appends its keys/values to ``cache``."""
        qkv = self.qkv(self.norm_in(x)).view(2, 3, self.heads, 1, self.d_head)
        cache.append(qkv[:, 1:].reshape(4, self.heads, self.d_head))
        scale = 1.0 / math.sqrt(self.d_head)
        # Global: order does not matter (no positional term), so the ring's rows serve as is.
        kv = cache.stored()[:, :2].permute(1, 2, 0, 3)  # [2, h, n, d]
        att = torch.softmax(qkv[0, 0] @ kv[0].transpose(-1, -2) * scale, -1)  # [h, 1, n]
        glob = (att @ kv[1]).reshape(self.hidden)
        kv = cache.last(self.window + 1)[:, 2:].permute(1, 2, 0, 3)  # newest first: offsets 0…
        bias = self.rel_bias[:, None, self.window : self.window + kv.shape[2]]  # [h, 1, k]
        att = torch.softmax(qkv[1, 0] @ kv[0].transpose(-1, -2) * scale + bias, -1)
        loc = (att @ kv[1]).reshape(self.hidden)
        return self._fuse(x, glob, loc)

    def step_many(self, x: Tensor, caches: Sequence[RingCache]) -> Tensor:
        """The newest utterance of ``S`` conversations at once: ``x [S, H]`` → ``[S, H]``;
        conversations of different lengths are padded and masked."""
        s = x.shape[0]
        qkv = self.qkv(self.norm_in(x)).view(s, 2, 3, self.heads, 1, self.d_head)
        rows = qkv[:, :, 1:].reshape(s, 4, self.heads, self.d_head)
        for i, cache in enumerate(caches):
            cache.append(rows[i])
        scale = 1.0 / math.sqrt(self.d_head)
        kv, valid = _padded([c.stored()[:, :2] for c in caches])  # [S, n, 2, h, d], [S, n]
        kv = kv.permute(2, 0, 3, 1, 4)  # [2, S, h, n, d]
        scores = qkv[:, 0, 0] @ kv[0].transpose(-1, -2) * scale  # [S, h, 1, n]
        att = torch.softmax(scores.masked_fill(~valid[:, None, None, :], -1e30), -1)
        glob = (att @ kv[1]).reshape(s, self.hidden)
        kv, valid = _padded([c.last(self.window + 1)[:, 2:] for c in caches])
        kv = kv.permute(2, 0, 3, 1, 4)  # newest first along n: offsets 0 …
        bias = self.rel_bias[:, None, self.window : self.window + kv.shape[3]]  # [h, 1, k]
        scores = qkv[:, 1, 0] @ kv[0].transpose(-1, -2) * scale + bias
        att = torch.softmax(scores.masked_fill(~valid[:, None, None, :], -1e30), -1)
        loc = (att @ kv[1]).reshape(s, self.hidden)
        return self._fuse(x, glob, loc)


def _padded(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``[n_i, ...]`` tensors zero-padded to ``[S, max n_i, ...]`` and their ``[S, n]``
    validity mask."""
    lengths = torch.tensor([r.shape[0] for r in rows], device=rows[0].device)
    stacked = nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
    valid = torch.arange(stacked.shape[1], device=stacked.device)[None, :] < lengths[:, None]
    return stacked, valid


def _received(att: Tensor, allowed: Tensor, valid: Tensor) -> Tensor:
    """``att`` ``[B, h, L, L]`` (query × key) → ``[B, L]``: mean attention each key receives
    from the valid queries allowed to see it."""
    q_valid = valid[:, None, :, None]
    mass = (att.mean(1, keepdim=True) * q_valid).sum(2).squeeze(1)  # [B, L]
    seen_by = (allowed & q_valid).sum(2).squeeze(1).clamp(min=1)
    return mass / seen_by * valid
