"""Graph ODE over the speaker-aware conversation graph (DF-GCN's continuous graph dynamics).

Node states ``H(t)`` ``[N, H]`` start at the fused utterance vectors ``H(0) = H_0`` and follow

    "sigmoid":  dH/dt = σ(Σ_r Â_r H W_r + b) − H
    "cgnn":     dH/dt = Σ_r Â_r H W_r + b − H + H_0          (the CGNN form, Xhonneux et al. 2020)

from ``t = 0`` to ``t = t_end``, integrated by ``torchdiffeq.odeint`` with a fixed-grid method
(``rk4`` = torchdiffeq's 3/8-rule RK4, ``midpoint``, ``euler``; step ``step_size``). ``Â_r`` is the
relation-``r`` part of the conversation graph (self / same-speaker / other-speaker × past/future,
see :mod:`realtime_erc.conversation.graph`) normalised by the *target's* in-degree
(``Â_r[i, j] = 1/deg_in(i)`` for each edge j → i of relation r). Row normalisation keeps the
causal graph causal: a symmetric ``D^{-1/2} A D^{-1/2}`` would use the source's out-degree, which
counts future utterances.

Streaming (``step``). The ODE couples nodes over time, so a new node's trajectory depends on its
neighbours' trajectories — but in the causal graph its neighbours are past nodes, whose
trajectories do not depend on it. A fixed-grid solver evaluates the derivative at a finite set of
points (``num_stages`` = grid steps × solver stages, 16 for rk4 with step 0.25 on [0, 1]), and
at evaluation ``e`` node i's derivative reads only its neighbours' states *at evaluation e*. So
``step`` keeps, for each of the last ``window`` nodes, its state at every evaluation point
(``[num_stages, H]``), and integrates only the new node, whose derivative at evaluation ``e``
reads the cached neighbour states of evaluation ``e`` (with a replica of torchdiffeq's fixed-grid
steps: the same grid and evaluation order, without ``odeint``'s per-call set-up). The new
node's own evaluation states are returned for the cache. This reproduces the joint integration
(same solver, same order of evaluations) at a cost bounded by ``window × num_stages``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

ODE_FORMS = ("sigmoid", "cgnn")


_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}
_ONE_THIRD = 1 / 3


def _fixed_grid_steps(step_size: float, t_end: float) -> list[float]:
    """The step lengths of torchdiffeq's grid for ``step_size`` on ``[0, t_end]`` (its last
    point is moved onto ``t_end``, so the last step may be shorter, even empty)."""
    times = torch.tensor([0.0, t_end])
    n = int(torch.ceil((times[-1] - times[0]) / step_size + 1).item())
    grid = torch.arange(0, n, dtype=times.dtype) * step_size + times[0]
    grid[-1] = times[-1]
    return (grid[1:] - grid[:-1]).tolist()


class GraphODE(nn.Module):
    """Relational graph ODE block. ``forward`` integrates a whole (batch of) graph(s);
    ``step`` integrates one new node against cached neighbour trajectories."""

    def __init__(
        self,
        hidden: int,
        num_relations: int,
        form: str = "sigmoid",
        method: str = "rk4",
        step_size: float = 0.25,
        t_end: float = 1.0,
    ) -> None:
        super().__init__()
        if form not in ODE_FORMS:
            raise ValueError(f"graph ODE form {form!r}: choose one of {', '.join(ODE_FORMS)}")
        if method not in ("euler", "midpoint", "rk4"):
            raise ValueError(
                f"graph ODE method {method!r}: choose a fixed-grid method (euler, midpoint, rk4)"
            )
        if not 0 < step_size <= t_end:
            raise ValueError(f"graph ODE step {step_size} must lie in (0, t_end={t_end}]")
        self.form, self.method, self.step_size = form, method, step_size
        self.weight = nn.Parameter(torch.randn(num_relations, hidden, hidden) / math.sqrt(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("times", torch.tensor([0.0, t_end]), persistent=False)
        self.num_stages = self._count_stages()
        self._steps = _fixed_grid_steps(step_size, t_end)
        if len(self._steps) * _STAGES[method] != self.num_stages:  # guards the replica below
            raise RuntimeError(f"torchdiffeq's {method} grid differs from the streaming replica")

    def _solve(self, func, y0: Tensor) -> Tensor:
        return odeint(
            func, y0, self.times, method=self.method, options={"step_size": self.step_size}
        )[-1]

    def _count_stages(self) -> int:
        calls = []

        def func(t: Tensor, y: Tensor) -> Tensor:
            calls.append(t)
            return torch.zeros_like(y)

        with torch.no_grad():
            self._solve(func, torch.zeros(1))
        return len(calls)

    def _derivative(self, message: Tensor, y: Tensor, h0: Tensor) -> Tensor:
        if self.form == "sigmoid":
            return torch.sigmoid(message + self.bias) - y
        return message + self.bias - y + h0

    def forward(self, h0: Tensor, edge_index: Tensor, edge_type: Tensor, relations: int) -> Tensor:
        """``h0``: ``[N, H]``; ``edge_index``: ``[2, E]`` (src j → dst i); ``edge_type``: ``[E]``
        in ``0 … relations−1`` → ``H(t_end)`` ``[N, H]``."""
        n, hidden = h0.shape
        src, dst = edge_index
        deg = torch.bincount(dst, minlength=n).clamp(min=1).to(h0.dtype)
        norm = (1.0 / deg[dst]).unsqueeze(-1)  # [E, 1]
        slot = edge_type * n + dst  # row of (relation, target) in the aggregate
        weight = self.weight[:relations]

        def func(t: Tensor, y: Tensor) -> Tensor:
            agg = y.new_zeros(relations * n, hidden).index_add_(0, slot, y[src] * norm)
            message = torch.einsum("rnh,rhd->nd", agg.view(relations, n, hidden), weight)
            return self._derivative(message, y, h0)

        return self._solve(func, h0)

    def step(
        self, h0: Tensor, neighbour_stages: Tensor, edge_type: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One new node. ``h0``: ``[H]``; ``neighbour_stages``: ``[K, S, H]`` the states of its
        past neighbours at each of the ``S = num_stages`` evaluations, newest first (offset
        1 … K); ``edge_type``: ``[K + 1]`` relation of offset 0 (itself) … K.
        Returns ``(H(t_end) [H], own evaluation states [S, H])``."""
        relations, hidden = self.weight.shape[0], h0.shape[0]
        k1 = edge_type.shape[0]
        # The neighbours' share of the message at every evaluation, computed in one matmul:
        # Σ_{j≠i} Â_ij Y_e[j] W_{r(j)} → [S, H]; at evaluation e only the node's own term is added.
        if k1 > 1:
            onehot = nn.functional.one_hot(edge_type[1:], relations).to(h0.dtype) / k1  # [K, R]
            agg = torch.einsum("kr,ksh->srh", onehot, neighbour_stages)  # [S, R, H]
            neighbour_message = agg.reshape(-1, relations * hidden) @ self.weight.view(
                relations * hidden, hidden
            )
        else:
            neighbour_message = h0.new_zeros(self.num_stages, hidden)
        self_weight = self.weight[int(edge_type[0])] / k1  # [H, H]
        stages: list[Tensor] = []
        y0 = h0.unsqueeze(0)

        def func(t: Tensor, y: Tensor) -> Tensor:
            e = len(stages)
            stages.append(y[0])
            return self._derivative(y @ self_weight + neighbour_message[e], y, y0)

        out = self._replica(func, y0)[0]
        return out, torch.stack(stages)

    def _replica(self, func, y: Tensor) -> Tensor:
        """torchdiffeq's fixed-grid ``euler`` / ``midpoint`` / ``rk4`` (3/8 rule) steps, same
        grid and order of evaluations, without ``odeint``'s per-call set-up (a third of a
        streaming step's cost). Tested against ``odeint`` through ``forward``."""
        for dt in self._steps:
            if self.method == "euler":
                y = y + dt * func(None, y)
            elif self.method == "midpoint":
                f0 = func(None, y)
                y = y + dt * func(None, y + f0 * (0.5 * dt))
            else:
                k1 = func(None, y)
                k2 = func(None, y + dt * k1 * _ONE_THIRD)
                k3 = func(None, y + dt * (k2 - k1 * _ONE_THIRD))
                k4 = func(None, y + dt * (k1 - k2 + k3))
                y = y + (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
        return y
