"""Train and score ERC models on a corpus (``realtime-erc train`` / ``evaluate``).

One run = one model, one corpus, one seed, causal or bidirectional. Each epoch trains on the
train split (dialogues shuffled, ``batch_dialogues`` per step, cross-entropy + the model's
auxiliary losses), then scores the valid split; the weights with the best validation weighted F1
are kept and training stops after ``patience`` epochs without improvement. The test split is
scored once, at the end, with those weights. After every epoch the whole state (weights,
optimiser, best weights, history, RNG states) is written to ``<work_dir>/last.pt``, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from realtime_erc.events import MODALITIES, ModalityFeatures, UtteranceFeatures
from realtime_erc.models.base import DialogueBatch, ERCModel, FeatureDims
from realtime_erc.models.checkpoint import (
    build_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from realtime_erc.models.feature_spec import FeatureSpec
from realtime_erc.models.options import load_model_config
from realtime_erc.training.corpus import CorpusFeatures, Dialogue, ErcCorpus
from realtime_erc.training.dataset_spec import CORPORA, DatasetSpec
from realtime_erc.training.datasets import split_sizes
from realtime_erc.training.emotion_data import DataError
from realtime_erc.training.erc_metrics import scores
from realtime_erc.training.progress import Progress
from realtime_erc.training.resume import load_last, save_last

log = logging.getLogger(__name__)


@dataclass
class ErcTrainOptions:
    model: str
    seed: int = 0
    causal: bool = True
    max_epochs: int = 30
    patience: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_dialogues: int = 8
    grad_clip: float = 5.0
    model_config: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model's ``Config`` (defaults: configs/models/<model>.toml)."""
    subset: int | None = None
    """Use only the first ``subset`` dialogues of each split (tests, smoke runs)."""
    modality_dropout: float = 0.0
    """Training only: audio and visual are each removed from a whole dialogue with this
    probability, else from each utterance with it (see :func:`drop_modalities`), so the model
    also works without a camera, without a face in view, or with features shed under load."""

    def to_dict(self) -> dict[str, Any]:
        """The options as stored in checkpoints (``modality_dropout`` only when used, so runs
        from before it existed keep their identity)."""
        data = asdict(self)
        if not self.modality_dropout:
            data.pop("modality_dropout")
        return data

    def fingerprint(self) -> str:
        """What must match for ``last.pt`` to be resumed."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


DROPPABLE: tuple[str, ...] = ("audio", "visual")
"""Modalities :func:`drop_modalities` may remove (the transcript is the one always asked for)."""


def drop_modalities(
    dialogue: list[UtteranceFeatures], p: float, rng: np.random.Generator
) -> list[UtteranceFeatures]:
    """``dialogue`` with each of :data:`DROPPABLE` marked absent in all its utterances with
    probability ``p`` (a camera that is off), else in each utterance with probability ``p`` (a
    face out of view, features shed under load)."""
    out = list(dialogue)
    for name in DROPPABLE:
        whole = rng.random() < p
        drop = np.ones(len(out), bool) if whole else rng.random(len(out)) < p
        for i in np.flatnonzero(drop):
            given = out[i].modality(name)
            if given.present:
                absent = ModalityFeatures.absent(len(given.pooled), _seq_dim(given))
                out[i] = replace(out[i], **{name: absent})
    return out


def _seq_dim(features: ModalityFeatures) -> int | None:
    return None if features.sequence is None else int(features.sequence.shape[-1])


@dataclass(frozen=True)
class ErcData:
    """A corpus ready to train on: dialogues, their features and the model's feature dims.
    ``dataset`` names it in provenance and run names: the :class:`DatasetSpec` it was loaded
    as (``meld+mpnet+lora4``, a pickle), or a plain label for data built otherwise (tests)."""

    corpus: ErcCorpus
    features: CorpusFeatures
    dims: FeatureDims
    dataset: DatasetSpec | str

    def dialogues(self, split: str, subset: int | None = None) -> list[Dialogue]:
        ds = self.corpus.split(split)
        return ds[:subset] if subset else ds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def collate(data: ErcData, dialogues: Sequence[Dialogue]) -> DialogueBatch:
    return DialogueBatch.from_dialogues(
        [data.features.of(d) for d in dialogues], data.dims, labels=[d.labels for d in dialogues]
    )


def batches(dialogues: Sequence[Dialogue], size: int) -> list[list[Dialogue]]:
    return [list(dialogues[i : i + size]) for i in range(0, len(dialogues), size)]


@torch.no_grad()
def predict(
    model: ERCModel, data: ErcData, dialogues: Sequence[Dialogue], causal: bool, size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true [N], y_pred [N])`` over ``dialogues`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    true, pred = [], []
    for chunk in batches(dialogues, size):
        batch = collate(data, chunk).to(model.device)
        logits = model(batch, causal=causal).logits
        true.append(batch.labels.cpu().numpy())
        pred.append(logits.argmax(-1).cpu().numpy())
    model.train(was_training)
    if not true:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(true), np.concatenate(pred)


def score(
    model: ERCModel, data: ErcData, dialogues: Sequence[Dialogue], causal: bool
) -> dict[str, Any]:
    y, p = predict(model, data, dialogues, causal)
    return scores(y, p, data.corpus.labels)


def _loss(model: ERCModel, batch: DialogueBatch, causal: bool) -> tuple[torch.Tensor, float]:
    out = model(batch, causal=causal)
    ce = nn.functional.cross_entropy(out.logits, batch.labels, ignore_index=-1)
    loss = ce + sum(out.aux_losses.values(), torch.zeros((), device=ce.device))
    return loss, float(ce.detach())


def train_erc(
    data: ErcData,
    options: ErcTrainOptions,
    out: Path,
    work_dir: Path,
    progress: Progress | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train one run and write the chosen checkpoint to ``out``; returns its metrics and
    provenance (``test`` scored once, with the weights chosen on validation)."""
    if data.corpus.label_set and len(data.corpus.labels) < 2:
        raise DataError(f"{data.dataset}: need at least 2 classes")
    seed_everything(options.seed)
    config = load_model_config(options.model, overrides=options.model_config)
    model = build_model(options.model, data.dims, data.corpus.labels, data.corpus.label_set, config)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    train = data.dialogues("train", options.subset)
    valid = data.dialogues("valid", options.subset)
    test = data.dialogues("test", options.subset)
    if not train or not valid:
        raise DataError(f"{data.dataset}: the train and valid splits must not be empty")

    work_dir.mkdir(parents=True, exist_ok=True)
    last = work_dir / "last.pt"
    fingerprint = f"{options.fingerprint()}:{data.dataset}:{data.features.extractor}"
    state: dict[str, Any] = {
        "epoch": 0, "best_f1": -1.0, "best_epoch": 0, "best_state": None, "history": [],
        "seconds": 0.0, "finished": False,
    }  # fmt: skip
    saved = load_last(last, fingerprint) if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state = saved["state"]
        random.setstate(saved["rng"]["python"])
        np.random.set_state(saved["rng"]["numpy"])
        torch.set_rng_state(saved["rng"]["torch"])

    order_rng = np.random.default_rng(options.seed)
    for _ in range(state["epoch"]):  # replay the shuffles of finished epochs
        order_rng.permutation(len(train))
    model.train()
    while not state["finished"]:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        order = order_rng.permutation(len(train))
        steps = batches([train[i] for i in order], options.batch_dialogues)
        drop_rng = np.random.default_rng([options.seed, epoch])  # per epoch: resumable
        total = 0.0
        for i, chunk in enumerate(steps, 1):
            feats = [data.features.of(d) for d in chunk]
            if options.modality_dropout:
                feats = [drop_modalities(f, options.modality_dropout, drop_rng) for f in feats]
            batch = DialogueBatch.from_dialogues(feats, data.dims, [d.labels for d in chunk])
            loss, ce = _loss(model, batch, options.causal)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if options.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimiser.step()
            total += ce
            if progress is not None:
                progress(f"epoch {epoch}", i, len(steps), {"loss": total / i})
        valid_scores = score(model, data, valid, options.causal)
        f1 = valid_scores["weighted_f1"]
        state["history"].append(
            {
                "epoch": epoch,
                "train_loss": round(total / len(steps), 5),
                "valid_wf1": f1,
                "valid_acc": valid_scores["accuracy"],
            }  # fmt: skip
        )
        if f1 > state["best_f1"]:
            state.update(best_f1=f1, best_epoch=epoch)
            state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["epoch"] = epoch
        state["seconds"] += time.perf_counter() - started
        if epoch - state["best_epoch"] >= options.patience or epoch >= options.max_epochs:
            state["finished"] = True
        if progress is not None:
            progress("valid", epoch, options.max_epochs, {"wF1": f1, "best": state["best_f1"]})
        save_last(
            last,
            fingerprint,
            model=model.state_dict(),
            optimiser=optimiser.state_dict(),
            state=state,
            rng={
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        )

    model.load_state_dict(state["best_state"])
    model.eval()
    valid_scores = score(model, data, valid, options.causal)
    test_scores = score(model, data, test, options.causal)  # the one look at test
    metrics = {
        "valid": valid_scores,
        "test": test_scores,
        "causal": options.causal,
    }
    provenance = {
        "dataset": str(data.dataset),
        "corpus": data.corpus.name,
        "source": data.corpus.provenance.get("source", ""),
        "features": dict(data.features.extractor),
        "splits": split_sizes(data.corpus) if not options.subset else {
            s: {"dialogues": len(data.dialogues(s, options.subset))} for s in data.corpus.splits
        },
        "subset": options.subset,
        "seed": options.seed,
        "causal": options.causal,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "train_seconds": round(state["seconds"], 1),
        "history": state["history"],
        "options": options.to_dict(),
    }  # fmt: skip
    # The modalities present in training: live, the others are passed as absent.
    present = tuple(
        m for i, m in enumerate(MODALITIES)
        if any(u.present[i] for feats in data.features.features.values() for u in feats)
    )  # fmt: skip
    spec = FeatureSpec.from_training(data.features.extractor, model.dims, present, sequences=False)
    info = save_checkpoint(model, out, metrics, provenance, spec)
    return {"model_id": info.model_id, "path": str(out), "metrics": metrics,
            "provenance": provenance}  # fmt: skip


def evaluate_checkpoint(
    path: Path,
    data: ErcData,
    split: str = "test",
    subset: int | None = None,
    causal: bool | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on ``split`` (first ``subset`` dialogues) of ``data``; ``causal``
    defaults to the mode it was trained in."""
    model = load_checkpoint(path)
    info = model.checkpoint_info
    if tuple(model.labels) != tuple(data.corpus.labels):
        raise DataError(
            f"{path} predicts {model.label_set} ({', '.join(model.labels)}) but {data.dataset} "
            f"has {data.corpus.label_set}: evaluate it on the dataset it was trained for"
        )
    if causal is None:
        causal = bool(info.provenance.get("causal", True))
    result = score(model, data, data.dialogues(split, subset), causal)
    return {"model_id": info.model_id, "split": split, "subset": subset, "causal": causal,
            **result}  # fmt: skip


def evaluate_saved(
    path: Path,
    data_dir: Path,
    split: str = "test",
    subset: int | None = None,
    dataset: DatasetSpec | str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score the checkpoint at ``path`` on ``split`` of ``dataset`` (default: the one it was
    trained on), its text encoded by the encoder its :class:`FeatureSpec` names."""
    payload = read_checkpoint(path)
    name = dataset or (payload.get("provenance") or {}).get("dataset")
    if not name:
        raise DataError(f"{path} does not say its dataset: pass --data")
    spec = FeatureSpec.from_checkpoint(payload, f"checkpoint {path}")
    data = load_data(
        name, data_dir, encoder_identity=spec.text, progress=progress, only=(split, subset)
    )
    return evaluate_checkpoint(path, data, split, subset)


DATASETS: tuple[str, ...] = CORPORA


def live_dims(text_dim: int | None = None) -> FeatureDims:
    """The dims the live feature stage produces with the default configuration (and a text
    encoder of width ``text_dim``)."""
    from realtime_erc.config import Config
    from realtime_erc.features.dims import feature_dims

    return feature_dims(Config().features, text_dim)


def text_encoder(identity: str | None = None, adapter: Path | None = None, base: str = "minilm"):
    """The pooled text encoder: the packaged ``base`` encoder, or the one ``identity`` names,
    emotion-adapted by ``adapter`` (a file, which brings its own base) or by the adapter
    ``identity`` names (found among the packaged and trained adapters)."""
    from realtime_erc.features.text import resolve_encoder
    from realtime_erc.features.text_adapter import find_adapter
    from realtime_erc.training.text_features import SentencePooled

    if adapter is None and identity and "+" in identity:
        found = find_adapter(identity.split("+", 1)[1])
        if found is None:
            raise DataError(
                f"text encoder {identity!r} is not available here: its adapter file is neither "
                "packaged nor under the cache; pass it with --text-adapter"
            )
        adapter = found.path
    if identity:
        base = resolve_encoder("auto", identity)
    encoder = SentencePooled(adapter=adapter, encoder=base)
    if identity not in (None, encoder.identity):
        raise DataError(
            f"text encoder {identity!r} is not available here (this program has "
            f"{encoder.identity}): evaluate with the encoder the checkpoint was trained with"
        )
    return encoder


@dataclass(frozen=True)
class DataRequest:
    """A dataset name resolved without reading any data: what :func:`load_data` will load and
    the ``spec`` it will carry (``meld+mpnet+lora4``, ``assembled+heads``, a pickle's path)."""

    spec: DatasetSpec
    encoder: Any = None
    """The pooled text encoder (not loaded yet) for the text corpora and the assembled one."""
    folds: tuple[Any, ...] = ()
    """With ``crossfit``: the fold encoders (see :func:`_fold_adapters`)."""
    text: str | None = None
    """What the text features will come from, as :func:`text_identity` gives it for the loaded
    data (None: not known before loading)."""

    @property
    def name(self) -> str:
        return str(self.spec)

    @property
    def heads(self) -> bool:
        return self.spec.heads

    @property
    def crossfit(self) -> bool:
        return self.spec.crossfit

    @property
    def causal(self) -> bool:
        """Assembled ``+heads+causal``: the speech head's input standardised per speaker
        causally along each dialogue, as live (``AssembledOptions.speech_norm = "running"``)."""
        return self.spec.causal


def text_identity(extractor: dict[str, str]) -> str:
    """The text encoder(s) of a corpus's features (``CorpusFeatures.extractor``, as checkpoints
    store it): the encoder identity, and the cross-fitted fold encoders where there are."""
    folds = extractor.get("text_train")
    return extractor.get("text", "") + (f" | {folds}" if folds else "")


def resolve_data(
    dataset: DatasetSpec | str,
    encoder_identity: str | None = None,
    text_adapter: Path | None = None,
) -> DataRequest:
    """Check ``dataset`` (a name is parsed: :meth:`DatasetSpec.parse`) against the encoder it
    needs and give the spec of what will be loaded, cheaply (adapter files are read, no model
    and no corpus); see :func:`load_data`."""
    spec = DatasetSpec.parse(dataset)
    if spec.corpus is None:
        return DataRequest(spec)
    # "+lora4" (the name of data from an adapter of the top 4 layers) asks for "+lora": the
    # adapter itself says how many layers it covers
    encoder = text_encoder(encoder_identity, text_adapter, spec.encoder)
    if spec.adapter is not None and encoder.adapter is None:
        raise DataError(f"{spec} needs the emotion-adapted encoder: pass --text-adapter")
    if spec.adapter == "ctx" and not encoder.context_turns:
        raise DataError(
            f"{spec} needs an adapter that reads context: pass one trained with "
            "`realtime-erc train-text-encoder --context-turns N`"
        )
    if spec.corpus == "assembled" and encoder.context_turns:
        raise DataError(
            "an adapter that reads context is for the text corpora (iemocap, meld, "
            "emorynlp); the assembled corpus takes one trained without --context-turns"
        )
    if spec.crossfit and encoder.adapter is None:
        raise DataError(f"{spec} needs the emotion-adapted encoder: pass --text-adapter")
    adapter = "ctx" if encoder.context_turns else "lora" if encoder.adapter else None
    layers = (encoder.partial_layers or None) if adapter == "lora" else None
    resolved = replace(spec, encoder=encoder.encoder, adapter=adapter, lora_layers=layers)
    text = {"text": encoder.identity}
    folds: tuple[Any, ...] = ()
    if spec.crossfit and spec.is_text:
        folds = tuple(text_encoder(adapter=p) for p in _fold_adapters(encoder.adapter, spec.corpus))
        text["text_train"] = "cross-fitted: " + ", ".join(f.identity for f in folds)
    return DataRequest(resolved, encoder, folds, text_identity(text))


def load_data(
    dataset: DatasetSpec | str,
    data_dir: Path,
    encoder_identity: str | None = None,
    progress: Progress | None = None,
    text_adapter: Path | None = None,
    only: tuple[str, int | None] | None = None,
) -> ErcData:
    """``iemocap`` | ``meld`` | ``emorynlp`` (text features from our encoder, cached),
    ``assembled`` (the assembled multimodal conversations) or a path to a published feature
    pickle (DialogueGCN / MMGCN layout). With ``text_adapter`` (or a ``+lora`` name and an
    ``encoder_identity`` that names an adapter) text comes from the emotion-adapted encoder and
    the data are named ``<dataset>+lora`` (``<dataset>+ctx`` when the adapter reads each
    utterance with the turns before it). Text from the larger encoder (``+mpnet`` in the
    name, or an adapter of it) adds ``+mpnet``: ``meld+mpnet``, ``meld+mpnet+lora``; an adapter
    of the top K layers only is named ``+loraK`` (``meld+mpnet+lora4``). ``+xfit``
    (with an adapter): training dialogues are encoded by the adapter's cross-fitted folds
    (:func:`~realtime_erc.training.datasets.crossfit_text_features`), valid and test by it.
    A name is parsed here (:meth:`DatasetSpec.parse`); the data carry the resolved spec.
    ``only`` = (split, subset): a text corpus keeps just those dialogues, so scoring a few
    encodes a few (each utterance's vector depends on its dialogue alone)."""
    from realtime_erc.training.datasets import (
        crossfit_text_features,
        infer_dims,
        load_feature_pickle,
        load_text_corpus,
        text_features,
    )

    request = resolve_data(dataset, encoder_identity, text_adapter)
    spec, encoder = request.spec, request.encoder
    if spec.is_text:
        dims = live_dims(encoder.dim)
        corpus = load_text_corpus(spec.corpus, data_dir)
        if request.crossfit:
            features = crossfit_text_features(
                corpus, encoder, request.folds, dims, progress=progress
            )
        else:
            corpus = corpus.only(*only) if only is not None else corpus
            features = text_features(corpus, encoder, dims, progress=progress)
        return ErcData(corpus, features, dims, spec)
    if spec.corpus == "assembled":
        try:
            from realtime_erc.training.assembled import load_assembled
        except ImportError:
            raise DataError(
                "the assembled multimodal corpus is not available in this version"
            ) from None
        from realtime_erc.config import FeaturesConfig, TextFeaturesConfig
        from realtime_erc.training.assembled import AssembledOptions

        adapter = str(encoder.adapter) if encoder.adapter is not None else "none"
        config = FeaturesConfig(text=TextFeaturesConfig(adapter=adapter, encoder=encoder.encoder))
        corpus, features = load_assembled(
            data_dir,
            options=AssembledOptions(
                head_scores=request.heads, speech_norm="running" if request.causal else "actor"
            ),
            features_config=config,
            progress=progress,
        )
        return ErcData(corpus, features, infer_dims(features, live_dims(encoder.dim)), spec)
    pickle = load_feature_pickle(Path(str(spec.pickle)))
    return ErcData(pickle.corpus, pickle.features, pickle.dims, spec)


def _fold_adapters(adapter: Path, corpus: str) -> list[Path]:
    """``adapter``'s cross-fitted siblings, checked to be its folds (same corpus, base encoder
    and context) and complete."""
    from realtime_erc.features.text_adapter import TextAdapter
    from realtime_erc.training.datasets import fold_adapters

    main = TextAdapter.load(adapter)
    paths = fold_adapters(adapter)
    options = main.info.get("options", {})
    fold_command = (
        f"`realtime-erc train-text-encoder --data {corpus} --encoder {options.get('encoder')} "
        f"--lora-layers {options.get('lora_layers', 0)} --epochs {options.get('epochs')} "
        f"--context-turns {main.context_turns} --fold K/N --out "
        f"{adapter.parent / adapter.stem}_foldKofN.pt` for each K < N"
    )
    missing = [p.name for p in paths if not p.is_file()]
    if not paths or missing:
        raise DataError(
            f"{corpus}+xfit needs the cross-fitted adapters beside {adapter.name} "
            f"({', '.join(missing) or 'none found'}): train them with {fold_command}"
        )
    for k, path in enumerate(paths):
        fold = TextAdapter.load(path)
        got = fold.info.get("options", {})
        if (
            (got.get("fold"), got.get("folds")) != (k, len(paths))
            or fold.info.get("dataset") != main.info.get("dataset")
            or (fold.base, fold.context_turns, fold.top_layers)
            != (main.base, main.context_turns, main.top_layers)
        ):
            raise DataError(
                f"{path.name} is not fold {k} of {len(paths)} of {adapter.name} (another "
                f"corpus, encoder, context, depth or fold): retrain it with {fold_command}"
            )
    return paths


def run_name(dataset: DatasetSpec | str, options: ErcTrainOptions) -> str:
    """``<dataset>-<model>-<causal|bidir>-seed<N>``: names the run's work directory. A spec
    gives its :attr:`~DatasetSpec.stem`; a str is a label used as it is (``ErcData.dataset`` of
    data built otherwise)."""
    stem = dataset.stem if isinstance(dataset, DatasetSpec) else dataset
    mode = "causal" if options.causal else "bidir"
    sub = f"-sub{options.subset}" if options.subset else ""
    drop = f"-mdrop{options.modality_dropout:g}" if options.modality_dropout else ""
    return f"{stem}-{options.model}-{mode}-seed{options.seed}{drop}{sub}"


def run_dir(name: str) -> Path:
    """``<cache>/train/erc/<name>``: where ``last.pt`` (resumable state) lives."""
    from realtime_erc.features.assets import cache_root

    return cache_root() / "train" / "erc" / name
