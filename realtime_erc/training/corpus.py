"""The shape every ERC training corpus takes: labelled dialogues in train/valid/test splits, and
their per-utterance features.

Loaders (``training/datasets.py`` for IEMOCAP, MELD, EmoryNLP and the published feature pickles;
``training/assembled.py`` for the assembled multimodal conversations) return an
:class:`ErcCorpus`; feature builders return a :class:`CorpusFeatures` for it, which the trainer
collates with :meth:`~realtime_erc.models.base.DialogueBatch.from_dialogues`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from realtime_erc.events import UtteranceFeatures

SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class Dialogue:
    """One labelled dialogue. ``speakers[i]`` is a speaker id (any string, consistent within the
    dialogue); ``labels[i]`` an index into the corpus's ``labels``."""

    id: str
    speakers: tuple[str, ...]
    labels: tuple[int, ...]
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.speakers) == len(self.labels) == len(self.texts)):
            raise ValueError(f"dialogue {self.id}: speakers, labels and texts differ in length")

    def __len__(self) -> int:
        return len(self.labels)


def in_fold(dialogues: list[Dialogue], folds: int, fold: int) -> list[Dialogue]:
    """Fold ``fold`` of ``folds`` (every ``folds``-th dialogue from the ``fold``-th, so each
    fold samples the whole split): what a cross-fitted encoder holds out."""
    return dialogues[fold::folds]


@dataclass(frozen=True)
class ErcCorpus:
    """Dialogues of one dataset. ``label_set`` names ``labels`` (``iemocap6``, ``meld7`` ...)."""

    name: str
    label_set: str
    labels: tuple[str, ...]
    splits: dict[str, list[Dialogue]]
    provenance: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> list[Dialogue]:
        if name not in self.splits:
            raise KeyError(f"{self.name} has no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    def dialogues(self) -> Iterator[Dialogue]:
        for name in SPLITS:
            yield from self.splits.get(name, [])

    def only(self, split: str, subset: int | None = None) -> ErcCorpus:
        """This corpus with only ``split``'s first ``subset`` dialogues (all when None)."""
        kept = self.split(split)
        return replace(self, splits={split: kept[:subset] if subset else kept})


@dataclass(frozen=True)
class CorpusFeatures:
    """Per dialogue id, one :class:`UtteranceFeatures` per utterance (same order as the
    dialogue). ``extractor`` describes what produced them (stored in checkpoints)."""

    features: dict[str, list[UtteranceFeatures]]
    extractor: dict[str, str]

    def of(self, dialogue: Dialogue) -> list[UtteranceFeatures]:
        return self.features[dialogue.id]
