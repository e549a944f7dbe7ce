"""The packaged sentence encoder on real transcripts."""

from __future__ import annotations

import numpy as np
import pytest

from realtime_erc.features.text import TEXT_DIM, TextEncoder, TextOptions

pytestmark = pytest.mark.slow  # loads MiniLM (a few seconds)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    enc = TextEncoder(TextOptions(max_tokens=32))
    enc.load()
    return enc


def test_pooled_and_token_features_have_the_documented_shapes(encoder: TextEncoder) -> None:
    feats = encoder.encode("I can't believe you forgot the tickets again!")
    assert feats.present
    assert feats.pooled.shape == (TEXT_DIM,) and feats.pooled.dtype == np.float32
    assert np.isfinite(feats.pooled).all()
    assert abs(float(np.linalg.norm(feats.pooled)) - 1.0) < 1e-4  # MiniLM normalises
    assert feats.sequence is not None and feats.mask is not None
    assert feats.sequence.ndim == 2 and feats.sequence.shape[1] == TEXT_DIM
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
