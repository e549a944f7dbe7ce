"""Low-rank adaptation (LoRA, Hu et al. 2021) of the linear layers of a frozen encoder.

A wrapped layer computes

    y = W x + b + (alpha / r) · B A dropout(x),    A ∈ R^{r × in}, B ∈ R^{out × r}

with ``W``, ``b`` frozen, ``A`` initialised like a linear layer and ``B`` at zero (so training
starts from the base model). Only ``A`` and ``B`` are trained and stored: for MiniLM-L6 at
``r = 8`` on every attention and feed-forward projection that is 0.33 M parameters (1.3 MB)
beside the 22.7 M frozen ones. For inference :func:`merge_lora` folds ``W + (alpha/r)·B A``
back into plain ``nn.Linear`` layers, so an adapted encoder runs exactly as fast as the base.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base`` (frozen) plus a trainable rank-``rank`` update scaled by ``alpha / rank``.

    Shapes: ``x [..., in] -> y [..., out]``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain linear layer computing the same function (without dropout)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_B @ self.lora_A))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out.to(self.base.weight.device, self.base.weight.dtype)


def add_lora(
    model: nn.Module, targets: Iterable[str], rank: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Wrap every ``nn.Linear`` whose qualified name ends with one of ``targets`` (for BERT:
    ``query``, ``key``, ``value``, ``attention.output.dense``, ``intermediate.dense``,
    ``output.dense``). Freezes everything else. Returns the wrapped names (sorted)."""
    suffixes = tuple(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    names = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(suffixes)
    )
    if not names:
        raise ValueError(f"no linear layer ends with any of {suffixes}")
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, LoRALinear(getattr(holder, child), rank, alpha, dropout))
    return names


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors only (``<layer>.lora_A`` / ``.lora_B``), detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def merge_lora(model: nn.Module) -> int:
    """Replace each :class:`LoRALinear` by its merged ``nn.Linear``; returns how many."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in wrapped:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, module.merged())
    return len(wrapped)
