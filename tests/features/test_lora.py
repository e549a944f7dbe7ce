"""LoRA layers and emotion-adapted text-encoder files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from realtime_erc.config import DataConfig
from realtime_erc.features.lora import add_lora, load_lora_state, lora_state, merge_lora
from realtime_erc.features.text import TextEncoder
from realtime_erc.features.text_adapter import (
    FORMAT,
    LEGACY_FORMAT,
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
    adapted = add_lora(model, ["block.0", "block.2"], rank=2, alpha=4, dropout=0.1)
    assert adapted.peft_config["default"].target_modules == {"block.0", "block.2"}
    model.eval()
    assert torch.allclose(model(x), before)  # B starts at zero; model itself runs the adapters
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"block.{i}.lora_{m}.default.weight" for i in (0, 2) for m in "AB"}
    state = lora_state(adapted)
    assert sorted(state) == [f"base_model.model.block.{i}.lora_{m}.weight" for i in (0, 2)
                             for m in "AB"]  # fmt: skip
    assert state["base_model.model.block.0.lora_A.weight"].shape == (2, 6)  # [r, in]
    assert state["base_model.model.block.2.lora_B.weight"].shape == (4, 2)  # [out, r]


def test_targets_are_name_suffixes_as_before_peft():
    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.ModuleDict({"output": nn.ModuleDict({"dense": nn.Linear(2, 2)})})
            self.output = nn.ModuleDict({"dense": nn.Linear(2, 2)})
            self.xoutput = nn.ModuleDict({"dense": nn.Linear(2, 2)})

    # a plain suffix: "output.dense" is also "attention.output.dense" and "xoutput.dense"
    adapted = add_lora(Deep(), ["output.dense"], rank=1, alpha=1)
    assert adapted.peft_config["default"].target_modules == {
        "attention.output.dense", "output.dense", "xoutput.dense"
    }  # fmt: skip


def test_merging_gives_the_same_function_as_the_adapted_layers():
    torch.manual_seed(1)
    model = Tiny()
    adapted = add_lora(model, ["block.0", "out"], rank=3, alpha=6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.eval()
    x = torch.randn(5, 6)
    out = model(x)
    layer = model.out
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer.weight + (6 / 3) * (b @ a)  # W + (alpha / r) · B A
    assert not isinstance(model.out, nn.Linear)
    merged = merge_lora(adapted)
    assert merged is model and type(model.out) is nn.Linear and type(model.block[2]) is nn.Linear
    assert torch.equal(model.out.weight, expected)
    assert torch.allclose(model(x), out, atol=1e-5)


def test_rank_must_be_positive_and_targets_and_tensors_must_match():
    with pytest.raises(ValueError, match="rank"):
        add_lora(Tiny(), ["out"], rank=0, alpha=1)
    with pytest.raises(ValueError, match="no linear layer"):
        add_lora(Tiny(), ["nothing"], rank=1, alpha=1)
    adapted = add_lora(Tiny(), ["out"], rank=1, alpha=1)
    state = lora_state(adapted)
    with pytest.raises(ValueError, match="1 tensors unmatched"):
        load_lora_state(adapted, {k: v for k, v in state.items() if "lora_B" not in k})
    with pytest.raises(ValueError, match="unmatched, e.g. extra"):
        load_lora_state(adapted, {**state, "extra": torch.zeros(1)})


def _adapter_file(tmp_path, model: nn.Module):
    adapted = add_lora(model, ["block.0"], rank=2, alpha=2)
    with torch.no_grad():
        model.block[0].lora_B["default"].weight.fill_(0.5)
    path = tmp_path / "text_adapter.pt"
    head = {"labels": ["a", "b"], "weight": torch.zeros(2, 4), "bias": torch.zeros(2), "scale": 1}
    lora = {"rank": 2, "alpha": 2.0, "targets": ["block.0"]}
    save_adapter(path, lora, lora_state(adapted), head, {"dataset": "toy"})
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


def test_an_adapter_file_of_the_hand_written_lora_still_loads(tmp_path):
    torch.manual_seed(3)
    base, trained = Tiny(), Tiny()
    trained.load_state_dict(base.state_dict())
    x = torch.randn(4, 6)
    data = torch.load(_adapter_file(tmp_path, trained), weights_only=False)
    expected = trained(x)
    # format 1: the same matrices named "<layer>.lora_A" / ".lora_B"
    legacy = {k.removeprefix("base_model.model.").removesuffix(".weight"): v
              for k, v in data["state"].items()}  # fmt: skip
    assert sorted(legacy) == ["block.0.lora_A", "block.0.lora_B"]
    path = tmp_path / "old_adapter.pt"
    torch.save({**data, "format": LEGACY_FORMAT, "state": legacy}, path)
    adapter = TextAdapter.load(path)
    assert adapter.state.keys() == data["state"].keys()
    assert adapter.digest == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    adapter.apply(base)
    assert torch.allclose(base(x), expected, atol=1e-6)
    # converted, it keeps the name it had
    converted = tmp_path / "converted_adapter.pt"
    torch.save({**data, "digest": adapter.digest}, converted)
    assert TextAdapter.load(converted).identity == adapter.identity


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


# --- the packaged adapters -----------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parents[2] / "realtime_erc" / "assets"
DATA = DataConfig().resolve()

IDENTITIES = {
    "text_adapter_iemocap6.pt": "lora-iemocap@1fc83c61caad",
    "text_adapter_iemocap6_ctx3.pt": "lora-iemocap@1441967c9287",
    "text_adapter_iemocap6_mpnet.pt": "lora-iemocap@6c311d9167fb",
    "text_adapter_iemocap6_mpnet12.pt": "lora-iemocap@4e0174e7c4d0",
    "text_adapter_iemocap6_mpnet12_ctx2.pt": "lora-iemocap@e85bcb88311c",
    "text_adapter_iemocap6_mpnet12_ctx2_fold0of2.pt": "lora-iemocap@e82a58e55a07",
    "text_adapter_iemocap6_mpnet12_ctx2_fold1of2.pt": "lora-iemocap@58b153457c10",
    "text_adapter_iemocap6_mpnet12_fold0of2.pt": "lora-iemocap@b4cd68c13b55",
    "text_adapter_iemocap6_mpnet12_fold1of2.pt": "lora-iemocap@ee4ea7f9c49c",
    "text_adapter_iemocap6_mpnet_fold0of2.pt": "lora-iemocap@cfd4ee5a1bc0",
    "text_adapter_iemocap6_mpnet_fold1of2.pt": "lora-iemocap@a295e81a0ae2",
    "text_adapter_meld7.pt": "lora-meld@b0e9c5eaf661",
    "text_adapter_meld7_ctx3.pt": "lora-meld@cde300243666",
    "text_adapter_meld7_mpnet.pt": "lora-meld@a5876dbcd368",
    "text_adapter_meld7_mpnet12.pt": "lora-meld@9b69a17efc51",
    "text_adapter_meld7_mpnet12_ctx2.pt": "lora-meld@2cd383ba4a3e",
    "text_adapter_meld7_mpnet12_ctx2_fold0of2.pt": "lora-meld@ef8ceece9b1a",
    "text_adapter_meld7_mpnet12_ctx2_fold1of2.pt": "lora-meld@cabd313ad449",
    "text_adapter_meld7_mpnet_fold0of2.pt": "lora-meld@2d46d85bc064",
    "text_adapter_meld7_mpnet_fold1of2.pt": "lora-meld@18716e4e5748",
}
"""What names each packaged adapter in checkpoints and feature caches (the sha256 of the file as
first committed); it must not change, or the ERC models trained on its vectors lose it."""

TEXTS = ["Oh my God, I can't believe you did that!", "Okay.", "I'm so sorry to hear it.",
         "Get out of my apartment right now!", "We won! We actually won!"]  # fmt: skip
CONTEXTS = ["", "other: " + TEXTS[0], "same: " + TEXTS[1], "other: " + TEXTS[2],
            "other: " + TEXTS[3]]  # fmt: skip

HEAD_PROBS = {
    "text_adapter_meld7.pt": (
        (0.004600, 0.688789, 0.050033, 0.053859, 0.026185, 0.026976, 0.149557),
        (0.902263, 0.006872, 0.019543, 0.009468, 0.018082, 0.012020, 0.031752),
        (0.034530, 0.006596, 0.017960, 0.901295, 0.024918, 0.005547, 0.009155),
        (0.077062, 0.018813, 0.034077, 0.039906, 0.129867, 0.015524, 0.684750),
        (0.016859, 0.060986, 0.010345, 0.011093, 0.860405, 0.005146, 0.035166),
    ),
    "text_adapter_iemocap6_ctx3.pt": (
        (0.014791, 0.004010, 0.002883, 0.003822, 0.969112, 0.005381),
        (0.049487, 0.060644, 0.332829, 0.023068, 0.492736, 0.041236),
        (0.005194, 0.910584, 0.076087, 0.003058, 0.001630, 0.003447),
        (0.079548, 0.469933, 0.148652, 0.115260, 0.043964, 0.142643),
        (0.325170, 0.089429, 0.057256, 0.058128, 0.386539, 0.083479),
    ),
    "text_adapter_iemocap6_mpnet.pt": (
        (0.084636, 0.040137, 0.052490, 0.048544, 0.751140, 0.023053),
        (0.020553, 0.136740, 0.775812, 0.012729, 0.018434, 0.035732),
        (0.009626, 0.838928, 0.118756, 0.002576, 0.013854, 0.016260),
        (0.073278, 0.012371, 0.067209, 0.277475, 0.398497, 0.171170),
        (0.191356, 0.037006, 0.070536, 0.013870, 0.662372, 0.024860),
    ),
    "text_adapter_meld7_mpnet12.pt": (
        (0.006447, 0.860261, 0.025124, 0.041640, 0.025819, 0.021183, 0.019526),
        (0.900936, 0.008911, 0.015310, 0.014523, 0.019178, 0.016726, 0.024415),
        (0.006657, 0.008285, 0.009320, 0.946398, 0.012528, 0.010828, 0.005984),
        (0.085139, 0.031575, 0.107498, 0.029208, 0.074726, 0.021926, 0.649928),
        (0.013020, 0.125470, 0.021634, 0.024898, 0.736838, 0.005563, 0.072577),
    ),
    "text_adapter_meld7_mpnet12_ctx2.pt": (
        (0.005134, 0.817241, 0.022890, 0.015886, 0.015676, 0.102285, 0.020887),
        (0.913501, 0.017380, 0.011170, 0.013190, 0.015334, 0.018837, 0.010589),
        (0.002347, 0.003272, 0.011326, 0.946229, 0.025073, 0.006871, 0.004883),
        (0.017165, 0.016593, 0.108930, 0.062862, 0.044495, 0.014504, 0.735451),
        (0.011297, 0.060678, 0.018084, 0.015369, 0.744173, 0.004033, 0.146366),
    ),
}
"""The head's emotion probabilities for ``TEXTS`` (with ``CONTEXTS`` where the adapter reads
context) through the live encoder, as the hand-written LoRA that preceded peft gave them (MiniLM
and MPNet, all layers and the top 4, with and without context)."""


def test_the_packaged_adapters_keep_their_identities():
    found = {p.name: TextAdapter.load(p).identity for p in ASSETS.glob("text_adapter_*.pt")}
    assert found == IDENTITIES


def test_the_packaged_adapters_are_peft_state_dicts():
    for path in sorted(ASSETS.glob("text_adapter_*.pt")):
        data = torch.load(path, map_location="cpu", weights_only=False)
        assert data["format"] == FORMAT, path.name
        assert all(k.startswith("base_model.model.") and k.endswith(("lora_A.weight",
                   "lora_B.weight")) for k in data["state"]), path.name  # fmt: skip
        assert all(v.dtype == torch.float32 for v in data["state"].values())


@pytest.mark.parametrize("name", sorted(HEAD_PROBS))
def test_a_packaged_adapter_gives_the_scores_it_gave_before(name: str):
    encoder = TextEncoder(adapter=ASSETS / name)
    adapter = encoder.adapter
    feats = encoder.encode_batch(TEXTS, CONTEXTS if adapter.context_turns else None)
    pooled = torch.from_numpy(np.stack([f.pooled for f in feats]))
    head = adapter.head
    probs = (head["scale"] * pooled @ head["weight"].T + head["bias"]).softmax(-1)
    np.testing.assert_allclose(probs.numpy(), np.array(HEAD_PROBS[name]), atol=2e-6)


@pytest.mark.skipif(
    not (DATA / "erc_text" / "meld.pkl").is_file(),
    reason=f"erc_text not found under {DATA} (set REALTIME_ERC_DATA to the data directory)",
)
@pytest.mark.parametrize("name", ["text_adapter_meld7.pt", "text_adapter_iemocap6_ctx3.pt"])
def test_a_packaged_adapter_reproduces_its_recorded_validation_scores_exactly(name: str):
    from realtime_erc.training.text_finetune import head_scores

    adapter = TextAdapter.load(ASSETS / name)
    got = head_scores(adapter, DATA)
    recorded = adapter.info["valid"]
    assert (got["weighted_f1"], got["accuracy"]) == (
        recorded["valid_weighted_f1"],
        recorded["valid_accuracy"],
    )
