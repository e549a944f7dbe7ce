"""Dataset names (``meld``, ``meld+mpnet+lora4+xfit``, ``assembled+heads+causal``, a feature
pickle's path), parsed once into a typed :class:`DatasetSpec`.

The grammar::

    name     := corpus ("+" variant)* | PATH          (a published feature pickle: *.pkl or a file)
    corpus   := iemocap | meld | emorynlp | assembled
    variant  := ENCODER        text from that encoder instead of MiniLM (``mpnet``)
              | "lora" [K]     text from an emotion-adapted encoder (``train-text-encoder``);
                               K: its adapter covers only the top K layers (``--lora-layers K``)
              | "ctx"          from an adapted encoder that reads the turns before each utterance
                               (text corpora only)
              | "xfit"         training dialogues encoded by the adapter's cross-fitted folds
                               (text corpora only)
              | "heads"        the emotion heads' scores appended to audio and visual (assembled)
              | "causal"       with ``heads``: the speech head's input standardised per speaker
                               causally (assembled)

Each variant at most once, in any order; ``lora`` and ``ctx`` exclude each other. ``str(spec)``
gives the canonical name, ``corpus[+ENCODER][+lora[K]|+ctx][+heads][+causal][+xfit]``, which
is how datasets are named in run directories, checkpoints and the results ledger.

A name can ask for more than it says: ``meld`` with ``--text-adapter`` loads adapted text, and
:func:`~realtime_erc.training.erc_trainer.resolve_data` returns the spec of what is loaded
(``meld+mpnet+lora4``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from realtime_erc.training.emotion_data import DataError

TEXT_CORPORA: tuple[str, ...] = ("iemocap", "meld", "emorynlp")
"""The text-only corpora (their files and label sets: ``datasets.TEXT_DATASETS``)."""
CORPORA: tuple[str, ...] = (*TEXT_CORPORA, "assembled")
ENCODERS: tuple[str, ...] = ("minilm", "mpnet")
"""The pooled text encoders (``features.text.TEXT_ENCODERS``); the first is the default, which
the name does not mention."""
DEFAULT_ENCODER = ENCODERS[0]

Adapter = Literal["lora", "ctx"]

_LORA = re.compile(r"lora(\d*)")


def variants_of(corpus: str) -> tuple[str, ...]:
    """The variants ``corpus`` takes, as its error message lists them."""
    larger = tuple(e for e in ENCODERS if e != DEFAULT_ENCODER)
    if corpus == "assembled":
        return (*larger, "lora", "heads", "causal")
    return (*larger, "lora", "ctx", "xfit")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset name: a corpus and its variants, or a feature pickle (``pickle`` set,
    ``corpus`` None). Build one with :meth:`parse`; ``str()`` gives the canonical name."""

    corpus: str | None
    encoder: str = DEFAULT_ENCODER
    """The pooled text encoder the name asks for (``+mpnet``)."""
    adapter: Adapter | None = None
    """``lora``: text from an emotion-adapted encoder; ``ctx``: from one reading context."""
    lora_layers: int | None = None
    """``+loraK``: the adapter covers the encoder's top K layers only (None: all of them)."""
    heads: bool = False
    causal: bool = False
    crossfit: bool = False
    pickle: str | None = None
    """A published feature pickle (DialogueGCN / MMGCN layout): its path."""

    def __post_init__(self) -> None:
        if (self.corpus is None) == (self.pickle is None):
            raise ValueError("a DatasetSpec names either a corpus or a pickle")
        if self.lora_layers is not None and self.adapter != "lora":
            raise ValueError("lora_layers is for a +lora adapter")

    @classmethod
    def parse(cls, name: str | DatasetSpec) -> DatasetSpec:
        """``name`` checked against the grammar (see the module); a :class:`DataError` names
        the bad part and the valid choices."""
        if isinstance(name, DatasetSpec):
            return name
        corpus, *variants = name.split("+")
        if corpus not in CORPORA:
            path = Path(name)
            if path.suffix == ".pkl" or path.is_file():
                return cls(None, pickle=str(path))
            raise DataError(
                f"unknown dataset {name!r}: choose {', '.join(CORPORA)} or a published feature .pkl"
            )
        known = variants_of(corpus)
        choices = f"{corpus} takes " + ", ".join(f"+{v}" for v in known)
        seen: set[str] = set()
        fields: dict[str, object] = {}
        for variant in variants:
            lora = _LORA.fullmatch(variant)
            kind = "lora" if lora else variant
            if kind not in known:
                raise DataError(f"unknown dataset variant {'+' + variant!r} in {name!r}: {choices}")
            if kind in seen:
                raise DataError(f"{name!r} has +{kind} twice: {choices}")
            seen.add(kind)
            if lora:
                fields["adapter"] = "lora"
                if lora.group(1):
                    layers = int(lora.group(1))
                    if layers < 1 or lora.group(1) != str(layers):
                        raise DataError(
                            f"{'+' + variant!r} in {name!r}: K in +loraK is a layer count >= 1"
                        )
                    fields["lora_layers"] = layers
            elif variant == "ctx":
                fields["adapter"] = "ctx"
            elif variant in ENCODERS:
                fields["encoder"] = variant
            else:
                fields[{"xfit": "crossfit"}.get(variant, variant)] = True
        if {"lora", "ctx"} <= seen:
            raise DataError(
                f"{name!r}: +ctx is itself an adapted encoder (one that reads context); give "
                "+lora or +ctx, not both"
            )
        if fields.get("causal") and not fields.get("heads"):
            raise DataError(f"{name}: +causal (running speaker standardisation) needs +heads")
        return cls(corpus, **fields)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.corpus is None:
            return str(self.pickle)
        name = self.corpus
        if self.encoder != DEFAULT_ENCODER:
            name += f"+{self.encoder}"
        if self.adapter == "ctx":
            name += "+ctx"
        elif self.adapter == "lora":
            name += f"+lora{self.lora_layers or ''}"
        name += "+heads" if self.heads else ""
        name += "+causal" if self.causal else ""
        return name + ("+xfit" if self.crossfit else "")

    @property
    def stem(self) -> str:
        """The name in a run directory's name: the canonical name, a pickle's file stem."""
        return Path(self.pickle).stem if self.pickle is not None else str(self)

    @property
    def is_text(self) -> bool:
        """A text-only corpus (iemocap, meld, emorynlp)."""
        return self.corpus in TEXT_CORPORA
