"""Emotion-adapt the text encoder: LoRA fine-tuning on an ERC corpus's training split.

Every non-empty training utterance is one example: the encoder (MiniLM by default; LoRA on every
projection of every layer, or of the top ``lora_layers`` only, see
:mod:`~realtime_erc.features.lora`) → mean pooling → L2 normalisation (the live sentence vector
``v``) → a linear classifier on ``scale · v``; cross-entropy with label smoothing, AdamW, linear
warm-up then linear decay. With ``context_turns = K > 0`` the encoder reads each utterance with
the K turns before it (:func:`~realtime_erc.features.text.turn_context`) and pools over the
utterance's own tokens, as it will live. The validation split is scored ``evals_per_epoch``
times per epoch (weighted F1); the adapters and head with the best score are written as an
adapter file (:mod:`~realtime_erc.features.text_adapter`). The test split is never read here.
After every epoch the whole state goes to ``<work_dir>/last.pt`` so a killed run resumes.

Context models then train on the adapted vectors (``realtime-erc train --text-adapter PATH``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realtime_erc.features.lora import add_lora, lora_state
from realtime_erc.features.text import (
    encode_in_context,
    encoder_spec,
    load_sentence_encoder,
    turn_context,
)
from realtime_erc.features.text_adapter import TextAdapter, save_adapter
from realtime_erc.training.corpus import Dialogue, ErcCorpus, in_fold
from realtime_erc.training.erc_metrics import scores
from realtime_erc.training.progress import Progress
from realtime_erc.training.resume import load_last, save_last

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextFinetuneOptions:
    """Hyperparameters (stored in the adapter's ``info``)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    label_smoothing: float = 0.1
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    scale: float = 20.0
    """Multiplies the unit-norm sentence vector before the classifier (a fixed temperature)."""
    max_tokens: int = 128
    context_turns: int = 0
    """Earlier turns read with each utterance (a second segment; 0 = the utterance alone)."""
    encoder: str = "minilm"
    """The base encoder (``minilm`` or ``mpnet``, see :data:`~realtime_erc.features.text.
    TEXT_ENCODERS`)."""
    lora_layers: int = 0
    """Adapt only the top ``lora_layers`` transformer layers (0 = all): gradients then stop
    below them, which makes the larger encoder affordable on a CPU."""
    folds: int = 1
    fold: int = 0
    """With ``folds > 1``: train on every train dialogue except fold ``fold``
    (:func:`~realtime_erc.training.corpus.in_fold`), which it then encodes unseen: the
    cross-fitted training features of ``<dataset>+xfit``."""
    evals_per_epoch: int = 2
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    """Where to train (``cuda``: bf16 autocast; the adapters saved are float32 either way)."""
    subset: int | None = None
    """Only the first ``subset`` dialogues of each split (tests, smoke runs)."""

    def run_name(self, corpus: str) -> str:
        """The run's folder name under the cache, e.g. ``meld-mpnet-r8-top2-ctx2-seed0``."""
        sub = f"-sub{self.subset}" if self.subset else ""
        ctx = f"-ctx{self.context_turns}" if self.context_turns else ""
        base = "" if self.encoder == "minilm" else f"-{self.encoder}"
        top = f"-top{self.lora_layers}" if self.lora_layers else ""
        part = f"-fold{self.fold}of{self.folds}" if self.folds > 1 else ""
        return f"{corpus}{base}-r{self.rank}{top}{ctx}{part}-seed{self.seed}{sub}"


Example = tuple[str, str]
"""An utterance and its context segment (``""`` without context)."""


def examples(
    dialogues: Sequence[Dialogue], context_turns: int = 0
) -> tuple[list[Example], np.ndarray]:
    """Non-empty utterances with their contexts, and their labels, in corpus order."""
    pairs = [
        ((t.strip(), turn_context(d.texts, d.speakers, i, context_turns)), y)
        for d in dialogues
        for i, (t, y) in enumerate(zip(d.texts, d.labels, strict=True))
        if t.strip()
    ]
    return [x for x, _ in pairs], np.array([y for _, y in pairs], np.int64)


class _Classifier(nn.Module):
    """Sentence encoder + linear head: ``texts -> logits [B, C]``."""

    def __init__(
        self,
        encoder: nn.Module,
        dim: int,
        n_labels: int,
        scale: float,
        in_context: bool,
        max_tokens: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, n_labels)
        self.scale = scale
        self.in_context = in_context
        self.max_tokens = max_tokens

    def embed(self, batch: Sequence[Example]) -> torch.Tensor:
        texts = [t for t, _ in batch]
        if self.in_context:
            contexts = [c for _, c in batch]
            return encode_in_context(self.encoder, texts, contexts, self.max_tokens)[0]
        features = self.encoder.preprocess(texts)
        device = self.head.weight.device
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        return self.encoder(features)["sentence_embedding"]  # [B, D], unit norm

    def forward(self, batch: Sequence[Example]) -> torch.Tensor:
        device = self.head.weight.device
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            return self.head(self.scale * self.embed(batch)).float()


@torch.no_grad()
def _predict(model: _Classifier, texts: list[Example], batch_size: int = 128) -> np.ndarray:
    was = model.training
    model.eval()
    out = []
    order = np.argsort([len(t) + len(c) for t, c in texts])  # similar lengths: less padding
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size]
        out.append((idx, model([texts[j] for j in idx]).argmax(-1).cpu().numpy()))
    model.train(was)
    pred = np.zeros(len(texts), np.int64)
    for idx, p in out:
        pred[idx] = p
    return pred


def head_scores(adapter: TextAdapter, data_dir: Path | str, split: str = "valid") -> dict[str, Any]:
    """``adapter``'s head on its corpus's ``split``, scored as training scored it (the recorded
    ``info["valid"]`` for the valid split): :func:`~realtime_erc.training.erc_metrics.scores`
    of the encoder with the adapter merged + the head, on the CPU. The corpus is read from
    ``data_dir`` (see :func:`~realtime_erc.training.datasets.load_text_corpus`)."""
    from realtime_erc.training.datasets import load_text_corpus

    corpus = load_text_corpus(adapter.info["dataset"], data_dir)
    texts, labels = examples(corpus.split(split), adapter.context_turns)
    max_tokens = int(adapter.info.get("options", {}).get("max_tokens", 128))
    encoder = load_sentence_encoder("cpu", max_tokens, adapter)
    weight = adapter.head["weight"]
    model = _Classifier(encoder, weight.shape[1], weight.shape[0], adapter.head["scale"],
                        adapter.context_turns > 0, max_tokens)  # fmt: skip
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(adapter.head["bias"])
    return scores(labels, _predict(model, texts), corpus.labels)


def _fingerprint(corpus: ErcCorpus, options: TextFinetuneOptions) -> str:
    data = {"options": asdict(options), "corpus": corpus.provenance, "labels": corpus.labels,
            "lora": "peft"}  # fmt: skip  # a run saved by the hand-written LoRA does not resume
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finetune_text_encoder(
    corpus: ErcCorpus,
    out: Path,
    work_dir: Path,
    options: TextFinetuneOptions = TextFinetuneOptions(),
    progress: Progress | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train adapters on ``corpus``'s train split, select on valid, write them to ``out``.
    Returns the adapter's ``info``."""
    if options.threads:
        torch.set_num_threads(options.threads)
    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)

    if not 0 <= options.fold < options.folds:
        raise ValueError(f"fold {options.fold} of {options.folds}: need 0 <= fold < folds")

    def split(name: str) -> tuple[list[Example], np.ndarray]:
        ds = corpus.split(name)
        if name == "train" and options.folds > 1:
            held = {d.id for d in in_fold(ds, options.folds, options.fold)}
            ds = [d for d in ds if d.id not in held]
        return examples(ds[: options.subset] if options.subset else ds, options.context_turns)

    train_x, train_y = split("train")
    valid_x, valid_y = split("valid")
    spec = encoder_spec(options.encoder)
    encoder = load_sentence_encoder("cpu", options.max_tokens, spec=spec)
    transformer = encoder[0].auto_model
    targets = spec.lora_targets(options.lora_layers)
    lora = {"rank": options.rank, "alpha": options.alpha, "targets": list(targets)}
    adapted = add_lora(transformer, targets, options.rank, options.alpha, options.dropout)
    model = _Classifier(
        encoder, spec.dim, len(corpus.labels), options.scale, options.context_turns > 0,
        options.max_tokens,
    ).to(options.device)  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / options.batch_size)
    total = options.epochs * steps_per_epoch
    warmup = max(1, int(options.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_state": None, "history": [],
                             "train_seconds": 0.0}  # fmt: skip
    signature = _fingerprint(corpus, options)
    work_dir.mkdir(parents=True, exist_ok=True)
    last = work_dir / "last.pt"
    gen = torch.Generator().manual_seed(options.seed)
    saved = load_last(last, signature) if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"], strict=False)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        state = saved["state"]
    eval_at = {
        round(steps_per_epoch * (k + 1) / options.evals_per_epoch)
        for k in range(options.evals_per_epoch)
    }
    model.train()
    for epoch in range(state["epoch"], options.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(train_x), generator=gen).numpy()
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * options.batch_size : (step + 1) * options.batch_size]
            logits = model([train_x[i] for i in idx])
            target = torch.from_numpy(train_y[idx]).to(options.device)
            loss = F.cross_entropy(logits, target, label_smoothing=options.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach())
            if progress is not None:
                progress("fine-tune", step + 1, steps_per_epoch,
                         {"epoch": epoch + 1, "loss": running / (step + 1)})  # fmt: skip
            if step + 1 in eval_at:
                valid = scores(valid_y, _predict(model, valid_x), corpus.labels)
                entry = {"epoch": epoch + 1, "step": step + 1,
                         "loss": round(running / (step + 1), 5),
                         "valid_weighted_f1": valid["weighted_f1"],
                         "valid_accuracy": valid["accuracy"]}  # fmt: skip
                state["history"].append(entry)
                log.info("%s", entry)
                if valid["weighted_f1"] > state["best"]:
                    state["best"] = valid["weighted_f1"]
                    state["best_state"] = {
                        "lora": lora_state(adapted),
                        "head": {
                            k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()
                        },
                        "at": entry,
                    }
        state["epoch"] = epoch + 1
        state["train_seconds"] += time.perf_counter() - t0
        trained = {k: v for k, v in model.state_dict().items() if ".lora_" in k or "head." in k}
        save_last(last, signature, model=trained, optimizer=opt.state_dict(),
                  scheduler=sched.state_dict(), generator=gen.get_state(), state=state)  # fmt: skip
    best = state["best_state"]
    info = {
        "dataset": corpus.name,
        "label_set": corpus.label_set,
        "training_data": f"{corpus.name} train split ({len(train_x)} utterances)"
        + (f", fold {options.fold} of {options.folds} held out" if options.folds > 1 else ""),
        "selection_data": f"{corpus.name} valid split ({len(valid_x)} utterances), weighted F1",
        "valid": best["at"],
        "train_seconds": round(state["train_seconds"], 1),
        "history": state["history"],
        "options": asdict(options),
    }
    head = {"labels": list(corpus.labels), "weight": best["head"]["weight"],
            "bias": best["head"]["bias"], "scale": options.scale}  # fmt: skip
    save_adapter(out, lora, best["lora"], head, info, options.context_turns, spec.name)
    return info
