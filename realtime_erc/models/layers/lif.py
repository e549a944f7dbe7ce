"""Multi-step leaky integrate-and-fire (LIF) neurons with a surrogate gradient.

The input current ``x [..., D]`` is repeated over ``T`` time steps; per step ``t`` (SpikingJelly's
LIF with ``decay_input``):

    H_t = V_{t-1} + (x − V_{t-1}) / τ          charge (V_0 = 0)
    S_t = Θ(H_t − V_th)                        fire (Heaviside)
    V_t = H_t · (1 − S_t)          (hard reset to 0)   or   V_t = H_t − V_th · S_t  (soft reset)

and the output is the mean firing rate scaled by a learned per-channel gain:
``y = gain ⊙ (1/T) Σ_t S_t``, ``[..., D]``, values in ``{0, 1/T, …, 1} · gain``.

The Heaviside step has no useful gradient; backward uses a surrogate derivative of
``u = H − V_th``: ``"atan"``: ``α / (2 (1 + (π α u / 2)²))``; ``"sigmoid"``: ``α σ(αu)(1 − σ(αu))``.

The dynamics run over the T steps of one utterance only (no membrane state carried across
utterances), so the layer is a pure per-utterance function: a streaming step computes exactly
what the whole-dialogue pass computes. Interpretation of BIG-FUSION's "spiking neuron dynamics".
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SURROGATES = ("atan", "sigmoid")
RESETS = ("hard", "soft")


@dataclass(frozen=True)
class LIFOptions:
    """Hyperparameters of :class:`MultiStepLIF` (mirrored in ``BigFusionConfig``)."""

    steps: int = 4
    tau: float = 2.0
    threshold: float = 1.0
    reset: str = "hard"
    surrogate: str = "atan"
    alpha: float = 2.0

    def __post_init__(self) -> None:
        if self.surrogate not in SURROGATES:
            raise ValueError(f"LIF surrogate {self.surrogate!r}: choose one of {SURROGATES}")
        if self.reset not in RESETS:
            raise ValueError(f"LIF reset {self.reset!r}: choose one of {RESETS}")
        if self.steps < 1 or self.tau <= 0:
            raise ValueError("LIF needs steps >= 1 and tau > 0")


class _SpikeAtan(torch.autograd.Function):
    """Heaviside forward, arctan surrogate backward."""

    @staticmethod
    def forward(ctx, u: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (u,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * u) ** 2), None


class _SpikeSigmoid(torch.autograd.Function):
    """Heaviside forward, sigmoid-derivative surrogate backward."""

    @staticmethod
    def forward(ctx, u: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (u,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.alpha * u)
        return grad * ctx.alpha * s * (1 - s), None


def spike(u: Tensor, surrogate: str = "atan", alpha: float = 2.0) -> Tensor:
    """``Θ(u)`` (1.0 where ``u ≥ 0``) with the named surrogate gradient."""
    fn = _SpikeAtan if surrogate == "atan" else _SpikeSigmoid
    return fn.apply(u, alpha)


class MultiStepLIF(nn.Module):
    """``x [..., *shape]`` → mean firing rate × gain ``[..., *shape]`` (see module docstring).

    ``shape`` is the per-neuron gain's shape: ``D``, or e.g. ``(2, D)`` for two populations
    (the two attention branches) simulated in one call.
    """

    def __init__(self, shape: int | tuple[int, ...], options: LIFOptions | None = None) -> None:
        super().__init__()
        self.options = options or LIFOptions()
        self.gain = nn.Parameter(torch.ones(shape))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.gain)

    def rate(self, x: Tensor) -> Tensor:
        """Mean firing rate over the T steps, ``[..., D]`` in [0, 1]."""
        o = self.options
        if not (torch.is_grad_enabled() and x.requires_grad):
            return _rate_no_grad(x, o)
        v = torch.zeros_like(x)
        total = torch.zeros_like(x)
        for _ in range(o.steps):
            h = v + (x - v) / o.tau
            s = spike(h - o.threshold, o.surrogate, o.alpha)
            total = total + s
            v = h * (1 - s) if o.reset == "hard" else h - o.threshold * s
        return total / o.steps

    def forward(self, x: Tensor) -> Tensor:
        return self.rate(x) * self.gain


def _rate_no_grad(x: Tensor, o: LIFOptions) -> Tensor:
    """:meth:`MultiStepLIF.rate` without autograd (inference), in few tensor ops — a streaming
    step calls it on one utterance, where per-op overhead dominates.

    Hard reset to 0 with a constant input restarts the same charge curve after every spike,
    ``H_t = x · c_t`` with ``c_t = 1 − (1 − 1/τ)^t``, so the neuron fires every ``k*`` steps,
    ``k* = min{t : x ≥ V_th / c_t}``. With ``m`` = how many of the T bounds ``V_th / c_t``
    ``x`` reaches, ``k* = T − m + 1`` and the rate is ``⌊T / k*⌋ / T`` (0 when ``m = 0``),
    a table lookup. Soft reset keeps the step-by-step loop.
    """
    if o.reset == "hard" and o.threshold > 0:
        bounds, table = _hard_reset_tables(o, x.device, x.dtype)
        reached = (x.unsqueeze(-1) >= bounds).sum(-1)  # m, [..., D]
        return table[reached]
    v = torch.zeros_like(x)
    count = torch.zeros_like(x)
    for _ in range(o.steps):
        h = v + (x - v) / o.tau
        fired = h >= o.threshold
        count += fired
        v = h - o.threshold * fired
    return count / o.steps


@functools.lru_cache(maxsize=16)
def _hard_reset_tables(
    o: LIFOptions, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``bounds [T]`` = ``V_th / c_t`` (∞ where ``c_t`` rounds to 0) and ``table [T + 1]`` =
    the firing rate for ``m`` = 0 … T bounds reached."""
    decay = 1.0 - 1.0 / o.tau
    c = [1.0 - decay**t for t in range(1, o.steps + 1)]
    bounds = [o.threshold / ct if ct > 0 else math.inf for ct in c]
    table = [0.0] + [(o.steps // (o.steps - m + 1)) / o.steps for m in range(1, o.steps + 1)]
    return (
        torch.tensor(bounds, device=device, dtype=dtype),
        torch.tensor(table, device=device, dtype=dtype),
    )
