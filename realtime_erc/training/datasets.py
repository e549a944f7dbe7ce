"""ERC corpora: IEMOCAP-6, MELD-7 and EmoryNLP dialogues from ``<data>/erc_text`` (standard
splits), their text features from our encoder, and the published pre-extracted multimodal
feature pickles (DialogueRNN / DialogueGCN and MMGCN layouts).

Text corpora get live-compatible features: pooled text vectors from the packaged MiniLM (or an
adapted encoder), audio and visual marked absent with the live dims, so a model trained here
loads in the live engine. Published pickles carry their own feature sizes (e.g. IEMOCAP text
100, audio 100, visual 512), so models trained on them are for reproducing tables only.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.events import ModalityFeatures, UtteranceFeatures
from realtime_erc.features.text import turn_context
from realtime_erc.training.corpus import CorpusFeatures, Dialogue, ErcCorpus, in_fold
from realtime_erc.training.emotion_data import DataError
from realtime_erc.training.text_features import (
    PooledTextEncoder,
    Progress,
    TextFeatureCache,
    encode_texts,
)

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "iemocap6": ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
    "meld7": ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
    "emorynlp7": ("joyful", "mad", "peaceful", "neutral", "sad", "powerful", "scared"),
}

TEXT_DATASETS: dict[str, tuple[str, str]] = {
    "iemocap": ("iemocap.pkl", "iemocap6"),
    "meld": ("meld.pkl", "meld7"),
    "emorynlp": ("emorynlp.pkl", "emorynlp7"),
}

# cp1252 punctuation that MELD's pickle holds as C1 control characters, plus typography the
# live ASR never produces (it writes ASCII quotes), so training text looks like live text.
_TYPOGRAPHY = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
               "\u2014": " - ", "\u2013": "-", "\xa0": " "}  # fmt: skip


def repair_text(text: str) -> str:
    """Undo cp1252 artefacts (``\\x92`` → ``'``) and normalise typographic punctuation."""
    out = []
    for ch in text:
        if "\x80" <= ch <= "\x9f":
            try:
                ch = bytes([ord(ch)]).decode("cp1252")
            except UnicodeDecodeError:
                ch = " "
        out.append(_TYPOGRAPHY.get(ch, ch))
    return " ".join("".join(out).split())


def _read_pickle(path: Path) -> Any:
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: point --data (or $REALTIME_ERC_DATA / data.dir) at the "
            "directory holding erc_text/ (see the data README)"
        )
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except UnicodeDecodeError:  # Python 2 pickles (the published feature files)
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, ModuleNotFoundError) as e:
        raise DataError(f"{path} is not a readable pickle ({e}): re-copy the file") from None


def _speaker_id(value: Any) -> str:
    """``'M'``/``'F'`` stay as they are; one-hot vectors (MELD, EmoryNLP) become ``s<index>``."""
    if isinstance(value, str):
        return value
    return f"s{int(np.argmax(np.asarray(value)))}"


def load_text_corpus(name: str, data_dir: Path | str) -> ErcCorpus:
    """``iemocap`` | ``meld`` | ``emorynlp`` from ``<data_dir>/erc_text/<name>.pkl``, with the
    standard train / valid / test splits."""
    if name not in TEXT_DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(TEXT_DATASETS)}")
    filename, label_set = TEXT_DATASETS[name]
    path = Path(data_dir) / "erc_text" / filename
    raw = _read_pickle(path)
    if name == "meld":
        if not (isinstance(raw, (list, tuple)) and len(raw) == 7):
            raise DataError(f"{path}: expected the 7-item MELD layout (see the data README)")
        speakers, labels, _sentiment, sentences, train, test, valid = raw
    else:
        if not (isinstance(raw, (list, tuple)) and len(raw) == 6):
            raise DataError(f"{path}: expected the 6-item {name} layout (see the data README)")
        speakers, labels, sentences, train, test, valid = raw
    names = LABEL_SETS[label_set]
    splits: dict[str, list[Dialogue]] = {}
    for split, ids in (("train", train), ("valid", valid), ("test", test)):
        dialogues = []
        for key in ids:
            ys = tuple(int(y) for y in labels[key])
            if any(not 0 <= y < len(names) for y in ys):
                raise DataError(f"{path}: dialogue {key} has a label outside 0..{len(names) - 1}")
            dialogues.append(
                Dialogue(
                    id=str(key),
                    speakers=tuple(_speaker_id(s) for s in speakers[key]),
                    labels=ys,
                    texts=tuple(repair_text(str(t)) for t in sentences[key]),
                )
            )
        splits[split] = dialogues
    return ErcCorpus(name, label_set, names, splits, {"source": str(path), "dataset": name})


def split_sizes(corpus: ErcCorpus) -> dict[str, dict[str, int]]:
    return {
        name: {"dialogues": len(ds), "utterances": sum(len(d) for d in ds)}
        for name, ds in corpus.splits.items()
    }


def _utterance(
    j: int, speaker: str, text: ModalityFeatures, audio: ModalityFeatures, visual: ModalityFeatures
) -> UtteranceFeatures:
    # offline corpora have no timing: one second per utterance keeps positions ordered
    return UtteranceFeatures(j, speaker, float(j), float(j + 1), text, audio, visual)


def text_features(
    corpus: ErcCorpus,
    encoder: PooledTextEncoder,
    dims: Any,  # FeatureDims: the live dims, so checkpoints load in the live engine
    cache: TextFeatureCache | None = None,
    progress: Progress | None = None,
) -> CorpusFeatures:
    """Pooled text vectors for every utterance (cached); audio and visual absent. Sequences are
    not used (``sequence=None``); empty texts are absent, as live."""
    if encoder.dim != dims.text:
        raise DataError(
            f"text encoder {encoder.identity} gives {encoder.dim}-d vectors but the model "
            f"dims expect {dims.text}: use a matching encoder"
        )
    dialogues = list(corpus.dialogues())
    texts = [t for d in dialogues for t in d.texts]
    contexts = [
        turn_context(d.texts, d.speakers, j, encoder.context_turns)
        for d in dialogues
        for j in range(len(d))
    ]
    vectors = encode_texts(texts, encoder, cache, progress=progress, contexts=contexts)
    audio = ModalityFeatures.absent(dims.audio, dims.audio_seq)
    visual = ModalityFeatures.absent(dims.visual, dims.visual_seq)
    absent_text = ModalityFeatures(np.zeros(dims.text, np.float32), present=False)
    out: dict[str, list[UtteranceFeatures]] = {}
    i = 0
    for d in dialogues:
        feats = []
        for j, (speaker, text) in enumerate(zip(d.speakers, d.texts, strict=True)):
            t = ModalityFeatures(vectors[i]) if text.strip() else absent_text
            feats.append(_utterance(j, speaker, t, audio, visual))
            i += 1
        out[d.id] = feats
    return CorpusFeatures(out, {"text": encoder.identity, "audio": "absent", "visual": "absent",
                                "sequences": "false"})  # fmt: skip


def fold_adapters(adapter: Path) -> list[Path]:
    """The cross-fitted siblings of an adapter file: ``<stem>_fold{k}of{n}.pt`` for every
    ``k < n`` (``train-text-encoder --fold k/n``), whether present or not; [] without any."""
    first = sorted(adapter.parent.glob(f"{adapter.stem}_fold0of*.pt"))
    if not first:
        return []
    n = int(first[0].stem.rpartition("of")[2])
    return [adapter.parent / f"{adapter.stem}_fold{k}of{n}.pt" for k in range(n)]


def crossfit_text_features(
    corpus: ErcCorpus,
    encoder: PooledTextEncoder,
    fold_encoders: Sequence[PooledTextEncoder],
    dims: Any,
    progress: Progress | None = None,
) -> CorpusFeatures:
    """Like :func:`text_features`, but each training dialogue is encoded by the fold encoder
    that never saw it (fold ``k`` of ``n = len(fold_encoders)``, :func:`~realtime_erc.training.
    corpus.in_fold`); valid and test by ``encoder``, as live.

    Why: an encoder adapted on the train split fits it (IEMOCAP-6, MPNet: its head scores
    77 weighted F1 on train, 52 on valid), so a context model trained on those vectors learns to
    trust them more than it should on unseen speech. Held-out vectors are as noisy as live ones.
    """
    full = text_features(corpus, encoder, dims, progress=progress)
    features = dict(full.features)
    train = corpus.split("train")
    for k, fold_encoder in enumerate(fold_encoders):
        part = replace(corpus, splits={"train": in_fold(train, len(fold_encoders), k)})
        features.update(text_features(part, fold_encoder, dims, progress=progress).features)
    folds = ", ".join(e.identity for e in fold_encoders)
    return CorpusFeatures(features, {**full.extractor, "text_train": f"cross-fitted: {folds}"})


# ----------------------------------------------------------------------------------------------
# Published pre-extracted feature pickles

LAYOUTS: dict[str, tuple[str, ...]] = {
    # DialogueRNN / DialogueGCN / MMGCN IEMOCAP_features(.pkl / _raw.pkl)
    "dialoguegcn-iemocap": (
        "ids",
        "speakers",
        "labels",
        "text",
        "audio",
        "visual",
        "sentences",
        "train",
        "test",
    ),  # fmt: skip
    # DialogueRNN / DialogueGCN MELD_features_raw.pkl (no visual; last item: sentiment labels)
    "dialoguegcn-meld": (
        "ids",
        "speakers",
        "labels",
        "text",
        "audio",
        "sentences",
        "train",
        "test",
        "extra",
    ),  # fmt: skip
    # MMGCN MELD_features_raw1.pkl (with DenseNet visual features)
    "mmgcn-meld": (
        "ids",
        "speakers",
        "labels",
        "text",
        "audio",
        "visual",
        "sentences",
        "train",
        "test",
        "extra",
    ),  # fmt: skip
}


@dataclass(frozen=True)
class FeaturePickle:
    """A published feature pickle as a corpus: its dialogues, features and feature sizes."""

    corpus: ErcCorpus
    features: CorpusFeatures
    dims: Any  # FeatureDims (pooled sizes of the file; no sequences)
    layout: str


def detect_layout(raw: Any) -> str:
    """Which of :data:`LAYOUTS` a loaded pickle has (by item count and item types)."""
    if not isinstance(raw, (list, tuple)):
        raise DataError("feature pickle: expected a list/tuple of dicts and id lists")
    if len(raw) == 10:
        return "mmgcn-meld"
    if len(raw) == 9:
        fifth = raw[5]
        sample = next(iter(fifth.values()), None) if isinstance(fifth, dict) and fifth else None
        if isinstance(sample, (list, tuple)) and sample and isinstance(sample[0], str):
            return "dialoguegcn-meld"  # item 5 is the sentences
        return "dialoguegcn-iemocap"
    raise DataError(
        f"feature pickle has {len(raw)} items: expected 9 (DialogueGCN IEMOCAP/MELD) or 10 "
        "(MMGCN MELD); pass layout= explicitly if yours differs"
    )


def load_feature_pickle(
    path: Path | str, layout: str | None = None, valid_fraction: float = 0.1, seed: int = 0
) -> FeaturePickle:
    """A published feature pickle. The files ship train and test only; as in the published
    code, a validation split is a fixed random ``valid_fraction`` of train (seeded)."""
    from realtime_erc.models.base import FeatureDims

    path = Path(path)
    raw = _read_pickle(path)
    layout = layout or detect_layout(raw)
    if layout not in LAYOUTS:
        raise DataError(f"unknown feature layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    fields = LAYOUTS[layout]
    if len(raw) != len(fields):
        raise DataError(f"{path}: layout {layout} has {len(fields)} items, the file {len(raw)}")
    item = dict(zip(fields, raw, strict=True))
    label_set = "iemocap6" if layout.endswith("iemocap") else "meld7"
    names = LABEL_SETS[label_set]
    train_ids = sorted(item["train"], key=str)
    order = np.random.default_rng(seed).permutation(len(train_ids))
    n_valid = max(1, round(valid_fraction * len(train_ids))) if len(train_ids) > 1 else 0
    valid_ids = [train_ids[i] for i in sorted(order[:n_valid])]
    train_ids = [train_ids[i] for i in sorted(order[n_valid:])]
    test_ids = sorted(item["test"], key=str)

    sizes = {m: None for m in ("text", "audio", "visual")}
    for m in sizes:
        if m in item:
            first = np.asarray(next(iter(item[m].values())))
            sizes[m] = int(first.shape[-1])
    dims = FeatureDims(
        text=sizes["text"] or 1, audio=sizes["audio"] or 1, visual=sizes["visual"] or 1,
        text_seq=None, audio_seq=None, visual_seq=None,
    )  # fmt: skip

    def vec(m: str, key: Any, j: int) -> ModalityFeatures:
        if m not in item:
            return ModalityFeatures(np.zeros(dims.pooled(m), np.float32), present=False)
        return ModalityFeatures(np.asarray(item[m][key][j], np.float32).reshape(-1))

    splits: dict[str, list[Dialogue]] = {}
    features: dict[str, list[UtteranceFeatures]] = {}
    for split, ids in (("train", train_ids), ("valid", valid_ids), ("test", test_ids)):
        splits[split] = []
        for key in ids:
            ys = tuple(int(y) for y in item["labels"][key])
            if any(not 0 <= y < len(names) for y in ys):
                raise DataError(f"{path}: dialogue {key} has a label outside 0..{len(names) - 1}")
            speakers = tuple(_speaker_id(s) for s in item["speakers"][key])
            texts = tuple(repair_text(str(t)) for t in item["sentences"][key])
            d = Dialogue(str(key), speakers, ys, texts)
            splits[split].append(d)
            features[d.id] = [
                _utterance(
                    j, speakers[j], vec("text", key, j), vec("audio", key, j), vec("visual", key, j)
                )  # fmt: skip
                for j in range(len(d))
            ]
    valid_note = f"{valid_fraction:g} of train, seed {seed}"
    provenance = {"source": str(path), "layout": layout, "valid": valid_note}
    corpus = ErcCorpus(f"{label_set[:-1]}-{layout}", label_set, names, splits, provenance)
    extractor = {m: f"published ({layout})" if m in item else "absent" for m in sizes}
    return FeaturePickle(corpus, CorpusFeatures(features, extractor), dims, layout)


def infer_dims(features: CorpusFeatures, live: Any) -> Any:
    """The :class:`FeatureDims` of a feature set: ``live`` when its pooled sizes match (so the
    checkpoint loads live), else the pooled sizes it has, without sequences."""
    from realtime_erc.models.base import FeatureDims

    first = next(iter(features.features.values()))[0]
    pooled = {m: int(first.modality(m).pooled.shape[0]) for m in ("text", "audio", "visual")}
    if all(pooled[m] == live.pooled(m) for m in pooled):
        return live
    return FeatureDims(**pooled, text_seq=None, audio_seq=None, visual_seq=None)


def label_counts(dialogues: Sequence[Dialogue], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.int64)
    for d in dialogues:
        np.add.at(counts, list(d.labels), 1)
    return counts
