"""Corpus loaders: the published feature-pickle layouts (on small synthetic pickles), MELD's
cp1252 repair, the text-feature cache, and the real erc_text corpora when present."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from realtime_erc.config import DataConfig
from realtime_erc.models.base import DialogueBatch, FeatureDims
from realtime_erc.training.datasets import (
    LABEL_SETS,
    detect_layout,
    load_feature_pickle,
    load_text_corpus,
    repair_text,
    split_sizes,
    text_features,
)
from realtime_erc.training.emotion_data import DataError
from realtime_erc.training.text_features import TextFeatureCache, encode_texts, text_key

DATA = DataConfig().resolve()
needs_erc_text = pytest.mark.skipif(
    not (DATA / "erc_text" / "meld.pkl").is_file(),
    reason=f"erc_text not found under {DATA} (set REALTIME_ERC_DATA to the data directory)",
)


def _dialogues(rng: np.random.Generator, ids: list, n_classes: int, meld: bool):
    speakers, labels, sentences = {}, {}, {}
    for vid in ids:
        n = int(rng.integers(2, 6))
        if meld:
            speakers[vid] = [list(np.eye(9, dtype=int)[i % 3]) for i in range(n)]
        else:
            speakers[vid] = ["M" if i % 2 else "F" for i in range(n)]
        labels[vid] = [int(y) for y in rng.integers(0, n_classes, n)]
        sentences[vid] = [f"line {i} of {vid} it\x92s" for i in range(n)]
    return speakers, labels, sentences


def _vectors(rng, ids, sentences, dim):
    return {vid: [rng.normal(size=dim).astype(np.float32) for _ in sentences[vid]] for vid in ids}


def write_dialoguegcn_iemocap(path: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = [f"Ses0{i}F_impro0{i}" for i in range(1, 5)] + ["Ses01M_x"], ["Ses05F_a"]
    ids = train + test
    speakers, labels, sentences = _dialogues(rng, ids, 6, meld=False)
    text, audio, visual = (_vectors(rng, ids, sentences, d) for d in (100, 100, 512))
    raw = [{v: v for v in ids}, speakers, labels, text, audio, visual, sentences, train, test]
    path.write_bytes(pickle.dumps(raw, protocol=2))


def write_meld(path: Path, mmgcn: bool) -> None:
    rng = np.random.default_rng(1)
    train, test = list(range(8)), [1153, 1154]
    ids = train + test
    speakers, labels, sentences = _dialogues(rng, ids, 7, meld=True)
    text, audio = _vectors(rng, ids, sentences, 600), _vectors(rng, ids, sentences, 300)
    sentiment = {v: [0] * len(sentences[v]) for v in ids}
    if mmgcn:
        visual = _vectors(rng, ids, sentences, 342)
        raw = [ids, speakers, labels, text, audio, visual, sentences, train, test, sentiment]
    else:
        raw = [ids, speakers, labels, text, audio, sentences, train, test, sentiment]
    path.write_bytes(pickle.dumps(raw))


def test_dialoguegcn_iemocap_layout(tmp_path: Path) -> None:
    path = tmp_path / "IEMOCAP_features.pkl"
    write_dialoguegcn_iemocap(path)
    loaded = load_feature_pickle(path)
    assert loaded.layout == "dialoguegcn-iemocap"
    assert loaded.corpus.label_set == "iemocap6" and loaded.corpus.labels == LABEL_SETS["iemocap6"]
    assert (loaded.dims.text, loaded.dims.audio, loaded.dims.visual) == (100, 100, 512)
    assert loaded.dims.text_seq is None
    # 5 train dialogues: 10 % (at least one) go to valid, the rest stay in train; test unchanged
    sizes = {s: len(ds) for s, ds in loaded.corpus.splits.items()}
    assert sizes == {"train": 4, "valid": 1, "test": 1}
    assert loaded.corpus.split("test")[0].id == "Ses05F_a"
    raw = pickle.loads(path.read_bytes())
    d = loaded.corpus.split("train")[0]
    feats = loaded.features.of(d)
    np.testing.assert_array_equal(feats[1].visual.pooled, raw[5][d.id][1])
    assert list(d.labels) == raw[2][d.id] and d.speakers[0] == "F"
    assert "it's" in d.texts[0]  # cp1252 apostrophe repaired
    batch = DialogueBatch.from_dialogues([feats], loaded.dims, labels=[d.labels])
    assert batch.text.pooled.shape == (len(d), 100) and batch.present.all()


@pytest.mark.parametrize("mmgcn", [False, True])
def test_meld_layouts(tmp_path: Path, mmgcn: bool) -> None:
    path = tmp_path / "MELD_features_raw.pkl"
    write_meld(path, mmgcn)
    loaded = load_feature_pickle(path)
    assert loaded.layout == ("mmgcn-meld" if mmgcn else "dialoguegcn-meld")
    assert loaded.corpus.label_set == "meld7"
    assert (loaded.dims.text, loaded.dims.audio) == (600, 300)
    d = loaded.corpus.split("test")[0]
    assert d.id == "1153" and d.speakers[:3] == ("s0", "s1", "s2")
    visual = loaded.features.of(d)[0].visual
    assert visual.present is mmgcn
    assert loaded.dims.visual == (342 if mmgcn else 1)


def test_bad_pickles_get_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected 9"):
        load_feature_pickle(path)
    with pytest.raises(DataError, match="does not exist"):
        load_feature_pickle(tmp_path / "missing.pkl")
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable pickle"):
        load_feature_pickle(path)
    with pytest.raises(DataError, match="expected a list"):
        detect_layout({"a": 1})


def test_repair_text_undoes_cp1252_artefacts() -> None:
    assert repair_text("you\x92re here\x85 \x93hi\x94") == 'you\'re here... "hi"'
    assert repair_text("caf\u00e9\xa0 \u2019ok\u2019") == "caf\u00e9 'ok'"


class _CountingEncoder:
    """A deterministic stand-in encoder that records what it was asked to encode."""

    identity = "test-encoder"
    dim = 4

    def __init__(self, context_turns: int = 0) -> None:
        self.context_turns = context_turns
        self.calls: list[list[str]] = []

    def encode_pooled(self, texts, contexts=None):
        pairs = list(zip(texts, contexts or [""] * len(texts), strict=True))
        self.calls.append([f"{t}|{c}" if c else t for t, c in pairs])
        return np.stack([np.full(4, len(t) + len(c), np.float32) for t, c in pairs])


def test_an_encoder_reading_context_is_cached_per_text_and_context(tmp_path: Path) -> None:
    encoder = _CountingEncoder(context_turns=1)
    cache = TextFeatureCache(encoder.identity, root=tmp_path)
    out = encode_texts(["ab", "ab", "ab"], encoder, cache, contexts=["", "x: y", ""])
    assert out[:, 0].tolist() == [2, 6, 2]
    assert encoder.calls == [["ab", "ab|x: y"]]
    # the base encoder ignores contexts: one vector per text
    base = _CountingEncoder()
    out = encode_texts(
        ["ab", "ab"], base, TextFeatureCache("base", root=tmp_path), contexts=["", "z"]
    )
    assert out[:, 0].tolist() == [2, 2] and base.calls == [["ab"]]


def test_text_cache_encodes_each_text_once_and_survives_reload(tmp_path: Path) -> None:
    encoder = _CountingEncoder()
    cache = TextFeatureCache(encoder.identity, root=tmp_path)
    out = encode_texts(["ab", "abc", "ab"], encoder, cache, chunk=1)
    assert out.shape == (3, 4) and out[0, 0] == 2 and out[1, 0] == 3 and out[2, 0] == 2
    assert encoder.calls == [["ab"], ["abc"]]
    fresh = TextFeatureCache(encoder.identity, root=tmp_path)  # a new process
    again = encode_texts(["abc", "abcd"], encoder, fresh)
    assert encoder.calls[-1] == ["abcd"] and again[1, 0] == 4
    assert set(fresh.get([text_key("ab"), text_key("abcd")])) == {text_key("ab"), text_key("abcd")}
    other = TextFeatureCache("other-encoder", root=tmp_path)
    assert other.get([text_key("ab")]) == {}


@needs_erc_text
def test_real_corpora_have_the_documented_splits() -> None:
    iemocap = load_text_corpus("iemocap", DATA)
    assert split_sizes(iemocap) == {
        "train": {"dialogues": 108, "utterances": 5163},
        "valid": {"dialogues": 12, "utterances": 647},
        "test": {"dialogues": 31, "utterances": 1623},
    }
    assert all(d.id.startswith("Ses05") for d in iemocap.split("test"))
    meld = load_text_corpus("meld", DATA)
    assert split_sizes(meld)["test"] == {"dialogues": 280, "utterances": 2610}
    assert meld.labels == LABEL_SETS["meld7"]
    texts = [t for d in meld.dialogues() for t in d.texts]
    assert not any("\x80" <= ch <= "\x9f" for t in texts for ch in t)
    assert sum("'" in t for t in texts) > 4000
    emory = load_text_corpus("emorynlp", DATA)
    assert split_sizes(emory)["valid"] == {"dialogues": 89, "utterances": 954}
    with pytest.raises(DataError, match="unknown dataset"):
        load_text_corpus("friends", DATA)


@needs_erc_text
def test_text_features_mark_audio_and_visual_absent_with_live_dims(tmp_path: Path) -> None:
    corpus = load_text_corpus("iemocap", DATA)
    small = type(corpus)(corpus.name, corpus.label_set, corpus.labels,
                         {"test": corpus.split("test")[:1]})  # fmt: skip
    encoder = _CountingEncoder()
    dims = FeatureDims(text=4)
    feats = text_features(small, encoder, dims, TextFeatureCache("t", root=tmp_path))
    utts = feats.of(small.split("test")[0])
    assert len(utts) == len(small.split("test")[0])
    assert all(u.present == (True, False, False) and u.text.sequence is None for u in utts)
    assert utts[0].audio.pooled.shape == (88,) and utts[0].visual.pooled.shape == (64,)
    assert feats.extractor["sequences"] == "false"
