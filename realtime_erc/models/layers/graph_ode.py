"""Graph ODE over the speaker-aware conversation graph (DF-GCN's continuous graph dynamics).

Node states ``H(t)`` ``[N, H]`` start at the fused utterance vectors ``H(0) = H_0`` and follow

    "sigmoid":  dH/dt = σ(M(H) + b) − H
    "cgnn":     dH/dt = M(H) + b − H + H_0          (the CGNN form, Xhonneux et al. 2020)

    M(H)_i = Σ_{(j → i, r)} (1 / deg_in(i)) · H_j W_r          W ``[R, H, H]``

from ``t = 0`` to ``t = t_end``, integrated by ``torchdiffeq.odeint`` with a fixed-grid method
(``rk4`` = torchdiffeq's 3/8-rule RK4, ``midpoint``, ``euler``; step ``step_size``). The edges
are those of :mod:`realtime_erc.conversation.graph` (self / same-speaker / other-speaker ×
past/future). ``M`` is normalised by the *target's* in-degree over all relations (not per
relation, so not :class:`~torch_geometric.nn.RGCNConv`'s mean): a symmetric
``D^{-1/2} A D^{-1/2}`` would use the source's out-degree, which counts future utterances.

``M`` is one message-passing round (:class:`GraphODE` is a ``MessagePassing`` layer): messages
``H_j / deg_in(i)`` are summed per (target, relation) slot, then each relation's sum is
transformed once (``[N, R·H] @ [R·H, H]``, cheaper than a matrix per edge).

Streaming (:meth:`GraphODE.step`). The ODE couples nodes over time, but in the causal graph a new
node's neighbours are past nodes, whose trajectories do not depend on it. A fixed-grid solver
evaluates the derivative at ``num_stages`` points (16 for rk4 with step 0.25 on [0, 1]), and at
evaluation ``e`` node i's derivative reads its neighbours' states *at evaluation e*. So ``step``
keeps, for each of the last ``window`` nodes, its state at every evaluation point
(``[num_stages, H]``); the layer runs once on the new node's incoming-edge subgraph with the
evaluations as a leading batch axis (the neighbours' share of ``M`` at every evaluation), and
only the new node is integrated, its self edge added at each evaluation (a replica of
torchdiffeq's fixed-grid steps: the same grid and order of evaluations, without ``odeint``'s
per-call set-up). The cost is bounded by ``window × num_stages``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import degree, scatter
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


class GraphODE(MessagePassing):
    """Relational graph ODE block (see the module docstring). ``forward`` integrates a whole
    (batch of) graph(s); ``step`` integrates one new node against cached neighbour
    trajectories. Node features may carry leading batch axes: ``[..., N, H]``."""

    def __init__(
        self,
        hidden: int,
        num_relations: int,
        form: str = "sigmoid",
        method: str = "rk4",
        step_size: float = 0.25,
        t_end: float = 1.0,
    ) -> None:
        super().__init__(aggr="add", node_dim=-2)
        if form not in ODE_FORMS:
            raise ValueError(f"graph ODE form {form!r}: choose one of {', '.join(ODE_FORMS)}")
        if method not in ("euler", "midpoint", "rk4"):
            raise ValueError(
                f"graph ODE method {method!r}: choose a fixed-grid method (euler, midpoint, rk4)"
            )
        if not 0 < step_size <= t_end:
            raise ValueError(f"graph ODE step {step_size} must lie in (0, t_end={t_end}]")
        self.hidden, self.num_relations = hidden, num_relations
        self.form, self.method, self.step_size = form, method, step_size
        self.weight = nn.Parameter(torch.empty(num_relations, hidden, hidden))
        self.bias = nn.Parameter(torch.empty(hidden))
        self.register_buffer("times", torch.tensor([0.0, t_end]), persistent=False)
        self.num_stages = self._count_stages()
        self._steps = _fixed_grid_steps(step_size, t_end)
        if len(self._steps) * _STAGES[method] != self.num_stages:  # guards the replica below
            raise RuntimeError(f"torchdiffeq's {method} grid differs from the streaming replica")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.hidden))
        nn.init.zeros_(self.bias)

    # -- one message-passing round: M(H) ------------------------------------------------------
    def message(self, x_j: Tensor, norm: Tensor) -> Tensor:
        return x_j * norm.unsqueeze(-1)

    def aggregate(
        self, inputs: Tensor, index: Tensor, edge_type: Tensor, relations: int, dim_size: int
    ) -> Tensor:
        # Sum per (target, relation) slot: [..., N, R·H], so each W_r is applied once per node.
        slot = index * relations + edge_type
        out = scatter(inputs, slot, self.node_dim, dim_size * relations, reduce="sum")
        return out.reshape(*out.shape[:-2], dim_size, relations * inputs.shape[-1])

    def update(self, inputs: Tensor, relations: int) -> Tensor:
        return inputs @ self.weight[:relations].reshape(-1, self.hidden)

    def _derivative(self, message: Tensor, y: Tensor, h0: Tensor) -> Tensor:
        if self.form == "sigmoid":
            return torch.sigmoid(message + self.bias) - y
        return message + self.bias - y + h0

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

    def forward(self, h0: Tensor, edge_index: Tensor, edge_type: Tensor, relations: int) -> Tensor:
        """``h0``: ``[N, H]``; ``edge_index``: ``[2, E]`` (src j → dst i); ``edge_type``: ``[E]``
        in ``0 … relations−1`` → ``H(t_end)`` ``[N, H]``."""
        n = h0.shape[0]
        norm = 1.0 / degree(edge_index[1], n, h0.dtype).clamp(min=1)[edge_index[1]]

        def func(t: Tensor, y: Tensor) -> Tensor:
            m = self.propagate(
                edge_index, x=y, norm=norm, edge_type=edge_type, relations=relations, size=(n, n)
            )
            return self._derivative(m, y, h0)

        return self._solve(func, h0)

    def step(
        self, h0: Tensor, neighbour_stages: Tensor, edge_type: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One new node. ``h0``: ``[H]``; ``neighbour_stages``: ``[K, S, H]`` the states of its
        past neighbours at each of the ``S = num_stages`` evaluations, newest first (offset
        1 … K); ``edge_type``: ``[K + 1]`` relation of offset 0 (itself) … K.
        Returns ``(H(t_end) [H], own evaluation states [S, H])``."""
        k1, relations = edge_type.shape[0], self.num_relations
        norm = h0.new_full((k1 - 1,), 1.0 / k1)
        if k1 > 1:
            # The neighbours' share of M at every evaluation: one propagate over the
            # incoming-edge subgraph (sources 0 … K − 1 → the new node), evaluations batched.
            edge_index = torch.stack(
                [torch.arange(k1 - 1, device=h0.device), edge_type.new_zeros(k1 - 1)]
            )
            neighbour_message = self.propagate(
                edge_index,
                x=(neighbour_stages.transpose(0, 1), h0.new_zeros(self.num_stages, 1, h0.shape[0])),
                norm=norm,
                edge_type=edge_type[1:],
                relations=relations,
                size=(k1 - 1, 1),
            )[:, 0]  # [S, H]
        else:
            neighbour_message = h0.new_zeros(self.num_stages, h0.shape[0])
        self_weight = self.weight[int(edge_type[0])] / k1  # the self edge, [H, H]
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
