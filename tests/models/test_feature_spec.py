"""The typed contract between training and live inference: the checkpoint's FeatureSpec."""

from __future__ import annotations

import pytest
import torch

from realtime_erc.config import load_config
from realtime_erc.models.base import FeatureDims
from realtime_erc.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from realtime_erc.models.feature_spec import FeatureSpec, FeatureSpecError

LABELS = ["neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"]
MPNET = "all-mpnet-base-v2-pooled-t128+lora-meld@9b69a17efc51"
DIMS = FeatureDims(text=768, audio=88, visual=64, text_seq=768, audio_seq=25, visual_seq=64)


def test_a_saved_spec_comes_back_typed_and_equal(tmp_path):
    spec = FeatureSpec.from_training(
        {"text": MPNET, "audio": "absent", "visual": "absent", "corpus": "x"},
        DIMS,
        ("text",),
        sequences=False,
    )
    assert spec.text_encoder == "all-mpnet-base-v2-pooled-t128"
    assert spec.text_adapter == "lora-meld@9b69a17efc51"
    assert spec.audio is None and spec.heads == "none" and spec.modalities == ("text",)
    model = build_model("utterance-mlp", DIMS, LABELS, "meld7")
    save_checkpoint(model, tmp_path / "m.pt", features=spec)
    loaded = load_checkpoint(tmp_path / "m.pt").checkpoint_info.features
    assert loaded == spec and isinstance(loaded.dims, FeatureDims)
    assert FeatureSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValueError, match="frozen"):
        spec.heads = "scores"  # type: ignore[misc]


def test_a_checkpoint_without_a_spec_is_read_from_its_provenance(tmp_path):
    model = build_model("utterance-mlp", DIMS, LABELS, "meld7")
    path = tmp_path / "old.pt"
    save_checkpoint(model, path, provenance={"features": {"text": MPNET}, "modalities": ["text"]})
    payload = torch.load(path, weights_only=True)
    del payload["feature_spec"]  # as written before the spec existed
    torch.save(payload, path)
    spec = load_checkpoint(path).checkpoint_info.features
    assert spec.text == MPNET and spec.modalities == ("text",) and spec.dims == DIMS


def test_a_bad_spec_is_refused_naming_the_key(tmp_path):
    model = build_model("utterance-mlp", DIMS, LABELS, "meld7")
    path = tmp_path / "bad.pt"
    save_checkpoint(model, path)
    payload = torch.load(path, weights_only=True)
    payload["feature_spec"]["heads"] = "maybe"
    torch.save(payload, path)
    with pytest.raises(FeatureSpecError, match=r"bad\.pt: its feature spec is invalid at heads"):
        load_checkpoint(path)


@pytest.mark.slow
def test_a_live_configuration_the_model_cannot_take_is_refused_at_start(tmp_path):
    from realtime_erc.session import build_stages

    model = build_model("utterance-mlp", DIMS, LABELS, "meld7")
    path = tmp_path / "m.pt"
    spec = FeatureSpec.from_training({"text": MPNET}, DIMS, ("text",), sequences=False)
    save_checkpoint(model, path, features=spec)
    off = ["output.zmq.enabled=false", "speakers.enabled=false", "model.provisional=false",
           "fusion.mode=off", f"model.checkpoint={path}"]  # fmt: skip
    with pytest.raises(FeatureSpecError, match=r"takes text vectors of 768.*give 384"):
        build_stages(load_config(overrides=[*off, "features.text.encoder=minilm",
                                            "features.text.adapter=none"]), "t")  # fmt: skip
    with pytest.raises(FeatureSpecError, match=r"trained with heads = 'none'"):
        build_stages(load_config(overrides=[*off, "features.heads=scores"]), "t")
