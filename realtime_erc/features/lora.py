"""Low-rank adaptation (LoRA, Hu et al. 2021) of the linear layers of a frozen encoder, by peft.

An adapted layer computes ``y = W x + b + (alpha / r) · B A dropout(x)`` with ``W``, ``b``
frozen, ``A ∈ R^{r × in}`` initialised like a linear layer and ``B ∈ R^{out × r}`` at zero (so
training starts from the base model): peft's ``LoraConfig`` defaults. Only ``A`` and ``B`` are
trained and stored, as peft's state dict (``base_model.model.<layer>.lora_A.weight`` ...): for
MiniLM-L6 at ``r = 8`` on every attention and feed-forward projection, 0.33 M parameters (1.3 MB)
beside the 22.7 M frozen ones. For inference :func:`merge_lora` folds ``W + (alpha/r)·B A`` back
into plain ``nn.Linear`` layers (``merge_and_unload``): an adapted encoder runs as fast as the base.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from torch import nn


def add_lora(
    model: nn.Module, targets: Iterable[str], rank: int, alpha: float, dropout: float = 0.0
) -> PeftModel:
    """Adapt, in place, every ``nn.Linear`` whose qualified name ends with one of ``targets``
    (plain string suffixes; for BERT: ``query``, ``key``, ``value``, ``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``) and freeze everything else. ``model``'s own forward
    then runs the adapters; the returned peft wrapper saves, loads and merges them."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    suffixes = tuple(targets)
    names = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(suffixes)
    )
    if not names:
        raise ValueError(f"no linear layer ends with any of {suffixes}")
    # the full names, matched exactly: the same layers whatever peft's own suffix rule
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, config)


def lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The trained tensors only (peft's state dict), detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`lora_state`'s tensors; ``ValueError`` unless they are exactly the adapters'."""
    expected = set(get_peft_model_state_dict(model))
    unmatched = sorted(expected ^ set(state))
    if unmatched:
        raise ValueError(f"{len(unmatched)} tensors unmatched, e.g. {unmatched[0]}")
    set_peft_model_state_dict(model, state)


def merge_lora(model: PeftModel) -> nn.Module:
    """Fold the adapters into plain ``nn.Linear`` layers of the adapted model (in place), which
    is returned."""
    return model.merge_and_unload()


def legacy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of the hand-written LoRA that preceded peft (``<layer>.lora_A [r, in]``,
    ``<layer>.lora_B [out, r]``: the same matrices) under peft's names."""
    return {f"base_model.model.{k}.weight": v for k, v in state.items()}
