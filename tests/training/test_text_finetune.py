"""Emotion-adapting the text encoder (LoRA on the packaged MiniLM) on a small synthetic corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realtime_erc.features.text import TextEncoder, TextOptions
from realtime_erc.features.text_adapter import TextAdapter
from realtime_erc.training.corpus import Dialogue, ErcCorpus
from realtime_erc.training.text_finetune import TextFinetuneOptions, finetune_text_encoder

HAPPY = ["I love this so much", "what a wonderful day", "this is great news", "I am delighted"]
ANGRY = ["I hate you", "this is outrageous", "get out of my house", "you ruined everything"]


def toy_corpus() -> ErcCorpus:
    def dialogue(i: int, texts: list[str], label: int) -> Dialogue:
        return Dialogue(f"d{i}", ("A", "B") * 2, (label,) * 4, tuple(texts))

    train = [dialogue(i, HAPPY if i % 2 else ANGRY, i % 2) for i in range(6)]
    valid = [dialogue(10, HAPPY, 1), dialogue(11, ANGRY, 0)]
    splits = {"train": train, "valid": valid, "test": valid}
    return ErcCorpus("toy", "toy2", ("anger", "joy"), splits, {"dataset": "toy"})


def test_fine_tuning_lowers_the_loss_and_the_adapter_reproduces_the_classifier(tmp_path):
    options = TextFinetuneOptions(epochs=3, batch_size=8, lr=3e-3, evals_per_epoch=1, threads=1)
    out = tmp_path / "adapter.pt"
    info = finetune_text_encoder(toy_corpus(), out, tmp_path / "work", options)
    losses = [h["loss"] for h in info["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    best = max(h["valid_weighted_f1"] for h in info["history"])
    assert info["valid"]["valid_weighted_f1"] == best
    adapter = TextAdapter.load(out)
    assert out.stat().st_size < 2_000_000 and adapter.head["labels"] == ["anger", "joy"]

    # the live encoder with the adapter merged + the stored head classify the training texts
    encoder = TextEncoder(TextOptions(adapter=out))
    vectors = np.stack([f.pooled for f in encoder.encode_batch(HAPPY + ANGRY)])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    logits = adapter.head["scale"] * torch.from_numpy(vectors) @ adapter.head["weight"].T
    pred = (logits + adapter.head["bias"]).argmax(-1).numpy()
    assert (pred == [1] * 4 + [0] * 4).mean() >= 0.75

    # adapted vectors differ from the base encoder's
    base = TextEncoder().encode("I love this so much").pooled
    assert not np.allclose(base, vectors[0], atol=1e-3)


def test_a_finished_run_resumes_without_training_again(tmp_path):
    options = TextFinetuneOptions(epochs=1, batch_size=16, evals_per_epoch=1, threads=1)
    first = finetune_text_encoder(toy_corpus(), tmp_path / "a.pt", tmp_path / "work", options)
    again = finetune_text_encoder(toy_corpus(), tmp_path / "b.pt", tmp_path / "work", options)
    assert again["train_seconds"] == first["train_seconds"]
    assert again["history"] == first["history"]
    a, b = TextAdapter.load(tmp_path / "a.pt"), TextAdapter.load(tmp_path / "b.pt")
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_an_adapted_encoder_that_is_not_here_is_a_data_error_naming_the_fix(tmp_path):
    from realtime_erc.training.emotion_data import DataError
    from realtime_erc.training.erc_trainer import load_data, text_encoder

    with pytest.raises(DataError, match="--text-adapter"):
        text_encoder("all-MiniLM-L6-v2-pooled-t128+lora-meld@ffffffffffff")
    with pytest.raises(DataError, match="pass --text-adapter"):
        load_data("meld+lora", tmp_path)  # a +lora name needs the adapter
    with pytest.raises(DataError, match="meld takes \\+lora$"):
        load_data("meld+other", tmp_path)
    with pytest.raises(DataError, match="meld takes \\+lora$"):
        load_data("meld+heads", tmp_path)  # head scores exist for the assembled corpus only
    with pytest.raises(DataError, match="assembled takes \\+lora and \\+heads"):
        load_data("assembled+heads+heads", tmp_path)
