"""Emotion-adapting the text encoder (LoRA by peft on the packaged MiniLM or MPNet) on a small
synthetic corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from realtime_erc.features.text import TextEncoder, TextOptions
from realtime_erc.features.text_adapter import FORMAT, TextAdapter
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
    # peft's state dict: A [r, in] and B [out, r] of every projection of the 6 layers
    assert torch.load(out, weights_only=False)["format"] == FORMAT and len(adapter.state) == 72
    first = "base_model.model.encoder.layer.0.attention.output.dense.lora_A.weight"
    assert sorted(adapter.state)[0] == first and adapter.state[first].shape == (8, 384)

    # the live encoder with the adapter merged + the stored head classify the training texts
    encoder = TextEncoder(adapter=out)
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
    with pytest.raises(DataError, match="meld takes \\+mpnet, \\+lora, \\+ctx, \\+xfit$"):
        load_data("meld+other", tmp_path)
    with pytest.raises(DataError, match="pass --text-adapter"):
        load_data("meld+xfit", tmp_path)  # cross-fitting is of an adapter
    with pytest.raises(DataError, match="meld takes \\+mpnet, \\+lora, \\+ctx, \\+xfit$"):
        load_data("meld+heads", tmp_path)  # head scores exist for the assembled corpus only
    with pytest.raises(DataError, match="assembled takes \\+mpnet, \\+lora, \\+heads"):
        load_data("assembled+heads+heads", tmp_path)


def test_a_dataset_is_named_with_its_text_encoder_without_reading_any_data():
    from realtime_erc.training.erc_trainer import resolve_data

    assets = Path(__file__).resolve().parents[2] / "realtime_erc" / "assets"
    adapter = assets / "text_adapter_meld7_mpnet.pt"
    request = resolve_data("meld", text_adapter=adapter)
    assert request.name == "meld+mpnet+lora4"  # LoRA on the top 4 layers
    assert request.text == request.encoder.identity and "+lora-meld@" in request.text
    crossfit = resolve_data("meld+xfit", text_adapter=adapter)
    assert crossfit.name == "meld+mpnet+lora4+xfit"
    assert resolve_data("meld+mpnet+lora4", text_adapter=adapter).name == request.name
    assert crossfit.text.startswith(request.text + " | cross-fitted: ")
    assert crossfit.text.count("+lora-meld@") == 3  # the adapter and its two folds
    assert resolve_data("iemocap").text == "all-MiniLM-L6-v2-pooled-t128"


def test_an_adapter_trained_with_context_reads_the_turns_before_each_utterance_live(tmp_path):
    import asyncio

    from realtime_erc.assemble import UtteranceAssembler
    from realtime_erc.config import Config
    from realtime_erc.events import SpeechSegment, Utterance
    from realtime_erc.features.dims import feature_dims

    options = TextFinetuneOptions(
        epochs=1, batch_size=8, evals_per_epoch=1, threads=1, context_turns=2
    )
    out = tmp_path / "ctx.pt"
    info = finetune_text_encoder(toy_corpus(), out, tmp_path / "work", options)
    assert info["options"]["context_turns"] == 2 and TextAdapter.load(out).context_turns == 2
    encoder = TextEncoder(adapter=out)
    assert encoder.context_turns == 2 and TextEncoder().context_turns == 0
    alone, calm, heated = encoder.encode_batch(
        ["I see"] * 3, ["", "same: what a wonderful day", "other: you ruined everything"]
    )
    assert not np.allclose(calm.pooled, heated.pooled, atol=1e-4)
    assert not np.allclose(alone.pooled, calm.pooled, atol=1e-4)
    assert np.isclose(np.linalg.norm(heated.pooled), 1, atol=1e-4)
    # outputs cover the utterance's own tokens only: [CLS] i see [SEP]
    assert [len(f.sequence) for f in (alone, calm, heated)] == [4, 4, 4]

    # live, the assembler hands each transcript the turns before it, most recent first
    seen: list[tuple[str, str]] = []
    encode = encoder.encode
    encoder.encode = lambda text, context="": seen.append((text, context)) or encode(text, context)
    dims = feature_dims(Config().features)
    assembler = UtteranceAssembler(dims, encoder, expects_analysis=False)
    turns = [("A", "hello there"), ("B", ""), ("B", "I hate you"), ("A", "I see")]

    async def run() -> list:
        events = []
        for i, (speaker, text) in enumerate(turns):
            seg = SpeechSegment(i, 2.0 * i, 2.0 * i + 1, np.zeros(16000, np.float32), 0.0, 0.0)
            utterance = Utterance(i, seg, text, speaker=speaker)
            events += [e async for e in assembler.process(utterance)]
        return events

    events = asyncio.run(run())
    assert [e.text.present for e in events] == [True, False, True, True]
    assert seen == [
        ("hello there", ""),
        ("I hate you", "other: hello there"),
        ("I see", "other: I hate you | same: hello there"),
    ]

    # a context-reading adapter names its rows +ctx and is refused where it has no turns
    from realtime_erc.training.emotion_data import DataError
    from realtime_erc.training.erc_trainer import load_data

    with pytest.raises(DataError, match="is for the text corpora"):
        load_data("assembled", tmp_path, text_adapter=out)
    packaged = TextAdapter.load(
        Path(__file__).resolve().parents[2] / "realtime_erc/assets/text_adapter_meld7.pt"
    )
    with pytest.raises(DataError, match="needs an adapter that reads context"):
        load_data("meld+ctx", tmp_path, text_adapter=packaged.path)


def test_the_larger_encoder_adapts_its_top_layers_only_and_is_used_wherever_the_adapter_goes(
    tmp_path,
):
    from realtime_erc.training.erc_trainer import text_encoder

    options = TextFinetuneOptions(
        epochs=3, batch_size=8, lr=3e-3, evals_per_epoch=1, threads=1, encoder="mpnet",
        lora_layers=2,
    )  # fmt: skip
    out = tmp_path / "adapter.pt"
    info = finetune_text_encoder(toy_corpus(), out, tmp_path / "work", options)
    losses = [h["loss"] for h in info["history"]]
    assert losses[-1] < losses[0]
    adapter = TextAdapter.load(out)
    assert adapter.base == "all-mpnet-base-v2"
    assert adapter.head["weight"].shape == (2, 768)
    layers = {k.split("encoder.layer.")[1].split(".")[0] for k in adapter.state}
    assert layers == {"10", "11"}  # the top two of twelve
    assert len(adapter.state) == 2 * 6 * 2  # layers x projections x (A, B)

    # the adapter brings its base: the live encoder is MPNet whatever the option says
    live = TextEncoder(TextOptions(encoder="minilm"), adapter=out)
    feats = live.encode("I love this so much")
    assert live.dim == 768 and feats.pooled.shape == (768,) and feats.sequence.shape[1] == 768
    pooled = text_encoder(adapter=out)
    assert pooled.encoder == "mpnet" and pooled.dim == 768
    assert pooled.identity.startswith("all-mpnet-base-v2-pooled-t128+lora-toy@")
    np.testing.assert_allclose(pooled.encode_pooled(["I love this so much"])[0], feats.pooled,
                               atol=1e-5)  # fmt: skip
    # and a checkpoint's identity names it back
    again = text_encoder(pooled.identity, out)
    assert again.identity == pooled.identity


def test_cross_fitted_training_features_come_from_the_fold_that_never_saw_each_dialogue(
    tmp_path, monkeypatch
):
    import shutil
    from dataclasses import replace

    from realtime_erc.training.datasets import crossfit_text_features
    from realtime_erc.training.emotion_data import DataError
    from realtime_erc.training.erc_trainer import _fold_adapters, live_dims, text_encoder

    monkeypatch.setenv("REALTIME_ERC_CACHE", str(tmp_path / "cache"))
    corpus = toy_corpus()
    options = TextFinetuneOptions(epochs=1, batch_size=8, evals_per_epoch=1, threads=1)
    main = tmp_path / "adapter.pt"
    finetune_text_encoder(corpus, main, tmp_path / "work", options)
    with pytest.raises(DataError, match="none found.*train-text-encoder --data toy.*--fold K/N"):
        _fold_adapters(main, "toy")
    for k in (0, 1):
        fold = replace(options, folds=2, fold=k)
        info = finetune_text_encoder(corpus, tmp_path / f"adapter_fold{k}of2.pt",
                                     tmp_path / f"work{k}", fold)  # fmt: skip
        # 3 of the 6 training dialogues (4 utterances each) are held out
        assert info["training_data"] == f"toy train split (12 utterances), fold {k} of 2 held out"
    folds = _fold_adapters(main, "toy")
    assert [p.name for p in folds] == ["adapter_fold0of2.pt", "adapter_fold1of2.pt"]

    encoder = text_encoder(adapter=main)
    fold_encoders = [text_encoder(adapter=p) for p in folds]
    feats = crossfit_text_features(corpus, encoder, fold_encoders, live_dims(encoder.dim))
    for i, dialogue in enumerate(corpus.split("train")):
        got = np.stack([u.text.pooled for u in feats.of(dialogue)])
        want = fold_encoders[i % 2].encode_pooled(list(dialogue.texts))  # fold i % 2 held it out
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert not np.allclose(got, encoder.encode_pooled(list(dialogue.texts)), atol=1e-3)
    for dialogue in corpus.split("valid"):  # valid and test: the adapter itself, as live
        got = np.stack([u.text.pooled for u in feats.of(dialogue)])
        np.testing.assert_allclose(got, encoder.encode_pooled(list(dialogue.texts)), atol=1e-5)
    assert feats.extractor["text"] == encoder.identity
    assert all(e.identity in feats.extractor["text_train"] for e in fold_encoders)

    shutil.copy(folds[1], folds[0])  # a file that is not the fold its name says
    with pytest.raises(DataError, match="adapter_fold0of2.pt is not fold 0 of 2 of adapter.pt"):
        _fold_adapters(main, "toy")
    folds[1].unlink()
    with pytest.raises(
        DataError, match=r"cross-fitted adapters beside adapter.pt \(adapter_fold1of2"
    ):
        _fold_adapters(main, "toy")


def test_a_fold_outside_its_count_is_refused(tmp_path):
    options = TextFinetuneOptions(epochs=1, folds=2, fold=2)
    with pytest.raises(ValueError, match="fold 2 of 2"):
        finetune_text_encoder(toy_corpus(), tmp_path / "a.pt", tmp_path / "work", options)
