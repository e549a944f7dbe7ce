"""LoRA layers and emotion-adapted text-encoder files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from realtime_erc.features.lora import LoRALinear, add_lora, lora_state, merge_lora
from realtime_erc.features.text_adapter import (
    TextAdapter,
    TextAdapterError,
    find_adapter,
    resolve_adapter,
    save_adapter,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(x))


def test_a_new_adapter_leaves_the_output_unchanged_and_trains_only_its_matrices():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(8, 6)
    before = model(x)
    names = add_lora(model, ["block.0", "block.2"], rank=2, alpha=4)
    assert names == ["block.0", "block.2"]
    assert torch.allclose(model(x), before)  # B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"block.{i}.lora_{m}" for i in (0, 2) for m in "AB"}


def test_merging_gives_the_same_function_as_the_adapted_layers():
    torch.manual_seed(1)
    model = Tiny()
    add_lora(model, ["block.0", "out"], rank=3, alpha=6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.eval()
    x = torch.randn(5, 6)
    adapted = model(x)
    assert not isinstance(model.out, nn.Linear) and merge_lora(model) == 2
    assert isinstance(model.out, nn.Linear) and isinstance(model.block[0], nn.Linear)
    assert torch.allclose(model(x), adapted, atol=1e-5)


def test_rank_must_be_positive_and_targets_must_match():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(2, 2), rank=0, alpha=1)
    with pytest.raises(ValueError, match="no linear layer"):
        add_lora(Tiny(), ["nothing"], rank=1, alpha=1)


def _adapter_file(tmp_path, model: nn.Module):
    add_lora(model, ["block.0"], rank=2, alpha=2)
    with torch.no_grad():
        model.block[0].lora_B.fill_(0.5)
    path = tmp_path / "text_adapter.pt"
    head = {"labels": ["a", "b"], "weight": torch.zeros(2, 4), "bias": torch.zeros(2), "scale": 1}
    lora = {"rank": 2, "alpha": 2.0, "targets": ["block.0"]}
    save_adapter(path, lora, lora_state(model), head, {"dataset": "toy"})
    return path


def test_an_adapter_file_round_trips_onto_a_fresh_model(tmp_path):
    torch.manual_seed(2)
    base = Tiny()
    trained = Tiny()
    trained.load_state_dict(base.state_dict())
    path = _adapter_file(tmp_path, trained)
    x = torch.randn(4, 6)
    expected = trained(x)
    adapter = TextAdapter.load(path)
    assert adapter.identity.startswith("lora-toy@") and len(adapter.digest) == 12
    adapter.apply(base)
    assert isinstance(base.block[0], nn.Linear)  # merged
    assert torch.allclose(base(x), expected, atol=1e-5)
    assert find_adapter(adapter.identity, [tmp_path]).path == path
    assert find_adapter("lora-toy@000000000000", [tmp_path]) is None


def test_unusable_adapters_fail_with_the_fix(tmp_path):
    junk = tmp_path / "junk_adapter.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(TextAdapterError, match="train-text-encoder"):
        TextAdapter.load(junk)
    path = _adapter_file(tmp_path, Tiny())
    with pytest.raises(TextAdapterError, match="does not fit"):
        TextAdapter.load(path).apply(nn.Sequential(nn.Linear(6, 5)))  # no "block.0"


def test_the_adapter_setting_resolves_against_what_the_model_was_trained_on(tmp_path):
    assert resolve_adapter("none", "x+lora-meld@abc") is None
    assert resolve_adapter("auto", "all-MiniLM-L6-v2-pooled-t128") is None
    assert resolve_adapter("auto", None) is None
    path = _adapter_file(tmp_path, Tiny())
    assert resolve_adapter(str(path)) == path
    with pytest.raises(TextAdapterError, match="features.text.adapter"):
        resolve_adapter("auto", "all-MiniLM-L6-v2-pooled-t128+lora-meld@ffffffffffff")


def test_an_adapter_other_than_the_models_is_used_with_a_warning(tmp_path, caplog):
    path = _adapter_file(tmp_path, Tiny())
    trained_with = "all-MiniLM-L6-v2-pooled-t128+" + TextAdapter.load(path).identity
    with caplog.at_level("WARNING"):
        assert resolve_adapter(str(path), trained_with) == path
        assert not caplog.records
        assert resolve_adapter("none", trained_with) is None
    assert "trained on text from lora-toy@" in caplog.text
