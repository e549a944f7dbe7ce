"""The ERC trainer on a small synthetic corpus whose labels are learnable from the text vectors:
the loss falls, runs resume exactly, test is scored with the epoch chosen on validation, and the
scores are what the metrics say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from realtime_erc.events import ModalityFeatures, UtteranceFeatures
from realtime_erc.models.base import FeatureDims
from realtime_erc.models.checkpoint import load_checkpoint, read_checkpoint
from realtime_erc.models.registry import MODELS
from realtime_erc.training.corpus import CorpusFeatures, Dialogue, ErcCorpus
from realtime_erc.training.emotion_data import DataError
from realtime_erc.training.erc_metrics import scores
from realtime_erc.training.erc_trainer import (
    ErcData,
    ErcTrainOptions,
    _loss,
    collate,
    evaluate_checkpoint,
    train_erc,
)

DIMS = FeatureDims(text=16, audio=8, visual=8, text_seq=16, audio_seq=4, visual_seq=8)
LABELS = ("calm", "angry", "happy")


def synthetic_data(n_dialogues: int = 12, seed: int = 0) -> ErcData:
    """Each label has its own text direction (plus noise); audio and visual absent."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(LABELS), DIMS.text)).astype(np.float32)
    audio = ModalityFeatures.absent(DIMS.audio, DIMS.audio_seq)
    visual = ModalityFeatures.absent(DIMS.visual, DIMS.visual_seq)
    splits: dict[str, list[Dialogue]] = {}
    features: dict[str, list[UtteranceFeatures]] = {}
    for split, count in (("train", n_dialogues), ("valid", 4), ("test", 4)):
        splits[split] = []
        for k in range(count):
            n = int(rng.integers(3, 8))
            labels = tuple(int(y) for y in rng.integers(0, len(LABELS), n))
            d = Dialogue(f"{split}{k}", tuple("AB"[i % 2] for i in range(n)), labels,
                         tuple(f"u{i}" for i in range(n)))  # fmt: skip
            splits[split].append(d)
            features[d.id] = [
                UtteranceFeatures(
                    i,
                    d.speakers[i],
                    float(i),
                    float(i + 1),
                    ModalityFeatures(
                        centres[y] + 0.5 * rng.normal(size=DIMS.text).astype(np.float32)
                    ),
                    audio,
                    visual,
                )  # fmt: skip
                for i, y in enumerate(labels)
            ]
    corpus = ErcCorpus("synthetic", "synth3", LABELS, splits)
    return ErcData(corpus, CorpusFeatures(features, {"text": "synthetic"}), DIMS, "synthetic")


@pytest.mark.parametrize("model", list(MODELS))
def test_a_few_steps_on_a_tiny_subset_lower_the_loss(model: str) -> None:
    torch.manual_seed(0)
    data = synthetic_data(4)
    from realtime_erc.models.checkpoint import build_model

    net = build_model(model, DIMS, LABELS, "synth3")
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = collate(data, data.corpus.split("train"))
    net.eval()
    with torch.no_grad():
        before = _loss(net, batch, causal=True)[1]
    net.train()
    for _ in range(15):
        loss, _ = _loss(net, batch, causal=True)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        after = _loss(net, batch, causal=True)[1]
    assert after < 0.8 * before, (model, before, after)


def test_training_chooses_on_valid_scores_test_once_and_saves_provenance(tmp_path: Path) -> None:
    data = synthetic_data()
    options = ErcTrainOptions("dialoguegcn", seed=1, max_epochs=6, patience=2, lr=3e-3)
    result = train_erc(data, options, tmp_path / "model.pt", tmp_path / "work")
    payload = read_checkpoint(tmp_path / "model.pt")
    prov, spec = payload["provenance"], payload["feature_spec"]
    assert spec["sequences"] is False and spec["modalities"] == ["text"]  # what it had
    assert prov["seed"] == 1 and prov["causal"] is True
    assert prov["dataset"] == "synthetic" and prov["train_seconds"] > 0
    assert prov["splits"]["test"] == {"dialogues": 4, "utterances": sum(
        len(d) for d in data.corpus.split("test"))}  # fmt: skip
    history = prov["history"]
    best = max(history, key=lambda h: h["valid_wf1"])
    assert prov["best_epoch"] == best["epoch"] and len(history) == prov["epochs"]
    assert payload["metrics"]["valid"]["weighted_f1"] == pytest.approx(best["valid_wf1"])
    assert result["metrics"]["test"]["weighted_f1"] > 60  # the signal is easy to learn
    assert result["model_id"].startswith("dialoguegcn/synth3@")
    # evaluate reproduces the stored test score exactly
    again = evaluate_checkpoint(tmp_path / "model.pt", data)
    assert again["weighted_f1"] == payload["metrics"]["test"]["weighted_f1"]
    assert again["accuracy"] == payload["metrics"]["test"]["accuracy"]


def test_a_run_cut_short_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = synthetic_data(6)
    full = ErcTrainOptions("dialogue-rnn-lite", max_epochs=4, patience=10, lr=3e-3)
    straight = train_erc(data, full, tmp_path / "a.pt", tmp_path / "a")
    # the same run stopped after 2 epochs (as if killed), then started again with the full cap:
    # it must continue from last.pt rather than restart
    short = ErcTrainOptions("dialogue-rnn-lite", max_epochs=2, patience=10, lr=3e-3)
    train_erc(data, short, tmp_path / "b.pt", tmp_path / "b")
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    last["signature"] = last["signature"].replace(short.fingerprint(), full.fingerprint())
    last["state"]["finished"] = False
    torch.save(last, tmp_path / "b" / "last.pt")
    resumed = train_erc(data, full, tmp_path / "b.pt", tmp_path / "b")
    assert resumed["provenance"]["history"] == straight["provenance"]["history"]
    assert resumed["model_id"] == straight["model_id"]


def test_bidirectional_runs_differ_from_causal_and_evaluate_keeps_the_mode(tmp_path: Path) -> None:
    data = synthetic_data(6)
    options = ErcTrainOptions("dialoguegcn", causal=False, max_epochs=2, patience=2)
    train_erc(data, options, tmp_path / "bi.pt", tmp_path / "bi")
    model = load_checkpoint(tmp_path / "bi.pt")
    batch = collate(data, data.corpus.split("test"))
    with torch.no_grad():
        assert not torch.allclose(
            model(batch, causal=True).logits, model(batch, causal=False).logits
        )
    assert evaluate_checkpoint(tmp_path / "bi.pt", data)["causal"] is False


def test_evaluate_refuses_a_dataset_with_other_labels(tmp_path: Path) -> None:
    data = synthetic_data(4)
    train_erc(data, ErcTrainOptions("utterance-mlp", max_epochs=1), tmp_path / "m.pt",
              tmp_path / "w")  # fmt: skip
    other = ErcCorpus("x", "other3", ("a", "b", "c"), data.corpus.splits)
    with pytest.raises(DataError, match="evaluate it on the dataset it was trained for"):
        evaluate_checkpoint(tmp_path / "m.pt", ErcData(other, data.features, DIMS, "x"))


def test_a_corpus_narrowed_to_the_scored_dialogues_scores_the_same(tmp_path: Path) -> None:
    data = synthetic_data(4)
    train_erc(data, ErcTrainOptions("utterance-mlp", max_epochs=1), tmp_path / "m.pt",
              tmp_path / "w")  # fmt: skip
    narrowed = data.corpus.only("test", 2)
    assert list(narrowed.splits) == ["test"]
    assert narrowed.split("test") == data.corpus.split("test")[:2]
    whole = evaluate_checkpoint(tmp_path / "m.pt", data, "test", 2)
    few = ErcData(narrowed, data.features, DIMS, "synthetic")
    assert evaluate_checkpoint(tmp_path / "m.pt", few, "test", 2) == whole


def test_scores_match_hand_computed_values() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    s = scores(y, p, ("a", "b", "c"))
    # per-class F1: a = 2*2/(3+2) = .8, b = 2*1/(2+2) = .5, c = 2*1/(1+2) = .6667
    assert s["per_class_f1"] == pytest.approx({"a": 80.0, "b": 50.0, "c": 66.6667}, abs=1e-3)
    assert s["weighted_f1"] == pytest.approx((3 * 80 + 2 * 50 + 66.6667) / 6, abs=1e-3)
    assert s["accuracy"] == pytest.approx(400 / 6, abs=1e-3)
    assert s["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def _present_dialogue(n: int) -> list[UtteranceFeatures]:
    def full(dim: int, seq: int) -> ModalityFeatures:
        return ModalityFeatures(np.ones(dim, np.float32), np.ones((3, seq), np.float32))

    return [
        UtteranceFeatures(i, "A", float(i), i + 1.0, full(DIMS.text, DIMS.text_seq),
                          full(DIMS.audio, DIMS.audio_seq), full(DIMS.visual, DIMS.visual_seq))
        for i in range(n)
    ]  # fmt: skip


def test_modality_dropout_removes_audio_and_visual_never_text() -> None:
    from realtime_erc.training.erc_trainer import drop_modalities

    dialogue = _present_dialogue(6)
    rng = np.random.default_rng(0)
    assert drop_modalities(dialogue, 0.0, rng) == dialogue  # nothing dropped, same objects
    gone = drop_modalities(dialogue, 1.0, rng)
    assert all(u.present == (True, False, False) for u in gone)
    DIMS.check(gone[0])  # absent vectors keep their sizes
    assert gone[0].audio.sequence.shape == (1, DIMS.audio_seq) and not gone[0].audio.pooled.any()
    assert all(u.present == (True, True, True) for u in dialogue)  # the input is untouched
    # p = 0.5 over many dialogues: whole dialogues and single utterances both go
    draws = [drop_modalities(dialogue, 0.5, rng) for _ in range(200)]
    visual = np.array([[u.visual.present for u in d] for d in draws])
    whole = (~visual).all(1).mean()
    assert 0.35 < whole < 0.65  # expected 0.5 whole + 0.5 · 0.5⁶ by chance
    partial = (~visual).any(1) & visual.any(1)
    assert 0.3 < partial.mean() < 0.65  # expected 0.5 · (1 − 2 · 0.5⁶)


def test_dropout_is_part_of_a_runs_identity_only_when_used(tmp_path: Path) -> None:
    from realtime_erc.training.erc_trainer import run_name

    plain = ErcTrainOptions("utterance-mlp")
    assert "modality_dropout" not in plain.to_dict()  # earlier runs keep their fingerprint
    dropped = ErcTrainOptions("utterance-mlp", modality_dropout=0.25, max_epochs=2)
    assert dropped.to_dict()["modality_dropout"] == 0.25
    assert run_name("assembled", dropped) == "assembled-utterance-mlp-causal-seed0-mdrop0.25"
    result = train_erc(synthetic_data(4), dropped, tmp_path / "m.pt", tmp_path / "w")
    assert result["provenance"]["options"]["modality_dropout"] == 0.25


def test_data_loaded_as_a_spec_store_its_canonical_name(tmp_path: Path) -> None:
    from dataclasses import replace

    from realtime_erc.training.dataset_spec import DatasetSpec
    from realtime_erc.training.erc_trainer import run_name

    spec = DatasetSpec.parse("assembled+causal+heads")
    data = replace(synthetic_data(4), dataset=spec)
    options = ErcTrainOptions("utterance-mlp", max_epochs=1)
    assert run_name(spec, options) == "assembled+heads+causal-utterance-mlp-causal-seed0"
    result = train_erc(data, options, tmp_path / "m.pt", tmp_path / "w")
    assert result["provenance"]["dataset"] == "assembled+heads+causal"
