"""The packaged sentence encoders (MiniLM and the larger MPNet) on real transcripts."""

from __future__ import annotations

import numpy as np
import pytest

from realtime_erc.features.text import (
    TEXT_ENCODERS,
    TextEncoder,
    TextOptions,
    encode_in_context,
    resolve_encoder,
)

pytestmark = pytest.mark.slow  # loads the encoders (a few seconds each)


@pytest.fixture(scope="module", params=["minilm", "mpnet"])
def encoder(request: pytest.FixtureRequest) -> TextEncoder:
    enc = TextEncoder(TextOptions(max_tokens=32, encoder=request.param))
    enc.load()
    return enc


def test_pooled_and_token_features_have_the_documented_shapes(encoder: TextEncoder) -> None:
    feats = encoder.encode("I can't believe you forgot the tickets again!")
    assert feats.present
    dim = encoder.spec.dim
    assert encoder.dim == dim == {"minilm": 384, "mpnet": 768}[encoder.options.encoder]
    assert feats.pooled.shape == (dim,) and feats.pooled.dtype == np.float32
    assert np.isfinite(feats.pooled).all()
    assert abs(float(np.linalg.norm(feats.pooled)) - 1.0) < 1e-4  # both normalise
    assert feats.sequence is not None and feats.mask is not None
    assert feats.sequence.ndim == 2 and feats.sequence.shape[1] == dim
    assert 8 <= feats.sequence.shape[0] <= 32 and feats.mask.all()


def test_batch_equals_single_and_empty_text_is_absent(encoder: TextEncoder) -> None:
    texts = ["Thank you so much, that is wonderful news.", "   ", "Please leave me alone."]
    batch = encoder.encode_batch(texts)
    assert [f.present for f in batch] == [True, False, True]
    assert not batch[1].pooled.any()
    single = encoder.encode(texts[2])
    np.testing.assert_allclose(batch[2].pooled, single.pooled, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(encoder: TextEncoder) -> None:
    a, b, c = encoder.encode_batch(
        ["I am so happy today.", "Today I feel really glad.", "The train leaves at nine."]
    )
    assert float(a.pooled @ b.pooled) > float(a.pooled @ c.pooled) + 0.2


def test_long_transcripts_are_truncated_to_max_tokens(encoder: TextEncoder) -> None:
    feats = encoder.encode(" ".join(["word"] * 200))
    assert feats.sequence is not None and feats.sequence.shape[0] == 32


def test_a_pair_is_pooled_over_its_first_segment_up_to_the_first_separator(
    encoder: TextEncoder,
) -> None:
    import torch

    with torch.inference_mode():
        pooled, hidden, mask = encode_in_context(
            encoder._model, ["I lost it.", "Oh no"], ["other: where is it?", ""], 32
        )
    tokenizer = encoder._model[0].tokenizer
    for k, text in enumerate(["I lost it.", "Oh no"]):
        alone = tokenizer(text)["input_ids"]  # start token, word pieces, one separator
        assert int(mask[k].sum()) == len(alone)
        assert not mask[k, len(alone) :].any()
    assert pooled.shape == (2, encoder.dim) and hidden.shape[-1] == encoder.dim


def test_auto_follows_the_encoder_a_checkpoint_was_trained_with() -> None:
    mpnet = TEXT_ENCODERS["mpnet"].name
    assert resolve_encoder("auto", f"{mpnet}-pooled-t128+lora-meld@0123456789ab") == "mpnet"
    assert resolve_encoder("auto", "all-MiniLM-L6-v2-pooled-t128") == "minilm"
    assert resolve_encoder("auto", None) == "minilm"
    assert resolve_encoder("minilm", f"{mpnet}-pooled-t128") == "minilm"  # an explicit choice


def test_a_checkpoint_trained_on_mpnet_text_gets_mpnet_live(tmp_path) -> None:
    from realtime_erc.assemble import UtteranceAssembler
    from realtime_erc.config import FeaturesConfig, load_config
    from realtime_erc.features.dims import feature_dims
    from realtime_erc.models.base import FeatureDimError
    from realtime_erc.models.checkpoint import build_model, save_checkpoint
    from realtime_erc.pipeline import find_stage
    from realtime_erc.session import build_stages
    from realtime_erc.training.assembled import MELD7

    dims = feature_dims(FeaturesConfig(), text_dim=768)
    path = tmp_path / "mpnet.pt"
    model = build_model("utterance-mlp", dims, MELD7, "meld7")
    identity = "all-mpnet-base-v2-pooled-t128"
    save_checkpoint(model, path, provenance={"features": {"text": identity}})
    off = ["output.zmq.enabled=false", "output.mqtt.enabled=false", "speakers.enabled=false"]
    config = load_config(overrides=[f"model.checkpoint={path}", "model.provisional=false", *off])
    assembler = find_stage(build_stages(config, "t"), UtteranceAssembler)
    assert assembler.text is not None and assembler.text.spec.name == "all-mpnet-base-v2"
    assert assembler.text.dim == 768 and config.features.text.encoder == "auto"

    config = load_config(
        overrides=[f"model.checkpoint={path}", "features.text.encoder=minilm", *off]
    )
    with pytest.raises(FeatureDimError, match=r"takes text vectors of 768 values.*give 384"):
        build_stages(config, "t")
