"""The contract every ERC model keeps, and the batches it consumes.

A model sees a conversation two ways:

- ``forward(batch, causal)`` over whole dialogues (training, offline evaluation), and
- ``init_state()`` / ``step(state, utterance)`` one utterance at a time (live streaming).

For ``causal=True`` the two must agree: stepping through a dialogue gives the logits ``forward``
gives for it (max abs difference ≤ 1e-4; a test for every model). ``step`` reuses cached state,
so its cost is bounded by the model's context horizon, not by the conversation's length.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from realtime_erc.errors import UserError
from realtime_erc.events import MODALITIES, ModalityFeatures, UtteranceFeatures


class FeatureDimError(UserError, ValueError):
    """Features whose shape does not match what the model was built (or trained) for."""


@dataclass(frozen=True)
class FeatureDims:
    """Per modality: the pooled vector size and the sequence step size (None = no sequence).

    Fixed by the feature configuration and stored in every checkpoint.
    """

    text: int = 384
    audio: int = 88
    visual: int = 64
    text_seq: int | None = 384
    audio_seq: int | None = 25
    visual_seq: int | None = 64

    def pooled(self, modality: str) -> int:
        return getattr(self, modality)

    def seq(self, modality: str) -> int | None:
        return getattr(self, f"{modality}_seq")

    def check(self, utterance: UtteranceFeatures) -> None:
        """Refuse an utterance whose vectors have other sizes than these dims."""
        for name in MODALITIES:
            feats: ModalityFeatures = utterance.modality(name)
            if feats.pooled.shape != (self.pooled(name),):
                raise FeatureDimError(
                    f"{name} features have shape {tuple(feats.pooled.shape)}, but the model "
                    f"expects ({self.pooled(name)},): use the feature configuration the model "
                    f"was trained with (features.{name}) or a checkpoint trained on these features"
                )
            seq_dim = self.seq(name)
            seq = feats.sequence
            if (
                seq is not None
                and seq_dim is not None
                and (seq.ndim != 2 or seq.shape[1] != seq_dim)
            ):
                raise FeatureDimError(
                    f"{name} sequence has shape {tuple(seq.shape)}, but the model "
                    f"expects (T, {seq_dim}): use the matching feature configuration"
                )

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureDims:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModalityBatch:
    """One modality over ``N`` utterances.

    ``pooled``: ``[N, D]``; ``sequence``: ``[N, T, D_seq]`` (zero-padded) or None;
    ``mask``: ``[N, T]`` bool, True = valid step (None when ``sequence`` is None).
    """

    pooled: Tensor
    sequence: Tensor | None = None
    mask: Tensor | None = None

    def to(self, device: torch.device | str) -> ModalityBatch:
        return ModalityBatch(
            self.pooled.to(device),
            None if self.sequence is None else self.sequence.to(device),
            None if self.mask is None else self.mask.to(device),
        )


@dataclass
class DialogueBatch:
    """Several dialogues flattened to ``N`` utterances (each dialogue contiguous, in order).

    ``present``: ``[N, 3]`` bool, modality presence in ``MODALITIES`` order.
    ``speaker``: ``[N]`` long, the speaker's index within its dialogue (order of appearance;
    any number of speakers). ``dialogue``: ``[N]`` long, 0..B-1. ``position``: ``[N]`` long,
    the utterance's index within its dialogue. ``labels``: ``[N]`` long, -1 = unlabelled.
    """

    text: ModalityBatch
    audio: ModalityBatch
    visual: ModalityBatch
    present: Tensor
    speaker: Tensor
    dialogue: Tensor
    position: Tensor
    labels: Tensor | None = None

    @property
    def num_utterances(self) -> int:
        return int(self.present.shape[0])

    @property
    def num_dialogues(self) -> int:
        return int(self.dialogue.max().item()) + 1 if self.num_utterances else 0

    @property
    def lengths(self) -> Tensor:
        """``[B]`` utterances per dialogue."""
        return torch.bincount(self.dialogue, minlength=self.num_dialogues)

    def modality(self, name: str) -> ModalityBatch:
        return getattr(self, name)

    def to(self, device: torch.device | str) -> DialogueBatch:
        return DialogueBatch(
            *(self.modality(m).to(device) for m in MODALITIES),
            present=self.present.to(device),
            speaker=self.speaker.to(device),
            dialogue=self.dialogue.to(device),
            position=self.position.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )

    def dense(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scatter ``[N, ...]`` into ``[B, L, ...]`` (L = longest dialogue) and its ``[B, L]``
        validity mask."""
        b, length = self.num_dialogues, int(self.lengths.max().item()) if self.num_utterances else 0
        out = x.new_zeros((b, length, *x.shape[1:]))
        out[self.dialogue, self.position] = x
        mask = torch.zeros(b, length, dtype=torch.bool, device=x.device)
        mask[self.dialogue, self.position] = True
        return out, mask

    def flat(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`dense`: ``[B, L, ...]`` → ``[N, ...]``."""
        return x[self.dialogue, self.position]

    @classmethod
    def from_dialogues(
        cls,
        dialogues: Sequence[Sequence[UtteranceFeatures]],
        dims: FeatureDims,
        labels: Sequence[Sequence[int]] | None = None,
        speaker_maps: Sequence[dict[str, int]] | None = None,
    ) -> DialogueBatch:
        """Collate dialogues of :class:`UtteranceFeatures` (checked against ``dims``).

        ``speaker_maps`` (one per dialogue) fixes speaker indices, e.g. a streaming state's map;
        otherwise speakers are numbered by order of appearance.
        """
        utterances = [u for d in dialogues for u in d]
        for u in utterances:
            dims.check(u)
        speaker, dialogue, position = [], [], []
        for i, d in enumerate(dialogues):
            mapping = dict(speaker_maps[i]) if speaker_maps is not None else {}
            for j, u in enumerate(d):
                speaker.append(mapping.setdefault(u.speaker, len(mapping)))
                dialogue.append(i)
                position.append(j)
        batches = [
            _collate_modality([u.modality(m) for u in utterances], dims, m) for m in MODALITIES
        ]
        label_tensor = None
        if labels is not None:
            label_tensor = torch.tensor([y for d in labels for y in d], dtype=torch.long)
        return cls(
            *batches,
            present=torch.tensor([u.present for u in utterances], dtype=torch.bool).reshape(-1, 3),
            speaker=torch.tensor(speaker, dtype=torch.long),
            dialogue=torch.tensor(dialogue, dtype=torch.long),
            position=torch.tensor(position, dtype=torch.long),
            labels=label_tensor,
        )


def _collate_modality(items: list[ModalityFeatures], dims: FeatureDims, name: str) -> ModalityBatch:
    pooled = torch.from_numpy(np.stack([f.pooled for f in items]).astype(np.float32, copy=False))
    seq_dim = dims.seq(name)
    if seq_dim is None:
        return ModalityBatch(pooled)
    seqs = [f.sequence if f.sequence is not None else f.pooled[None, :seq_dim] for f in items]
    length = max(1, *(len(s) for s in seqs)) if seqs else 1
    sequence = torch.zeros(len(items), length, seq_dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, (f, s) in enumerate(zip(items, seqs, strict=True)):
        if f.sequence is None and seq_dim != dims.pooled(name):
            continue  # no sequence and the pooled vector cannot stand in for one
        sequence[i, : len(s)] = torch.from_numpy(np.asarray(s, np.float32))
        valid = np.ones(len(s), bool) if f.mask is None else np.asarray(f.mask, bool)
        mask[i, : len(s)] = torch.from_numpy(valid & f.present)
    return ModalityBatch(pooled, sequence, mask)


@dataclass
class ModelOutput:
    """``logits``: ``[N, C]``. ``aux_losses``: named training losses (GCL, load balancing,
    unimodal CE ...) already weighted; the trainer adds them to the classification loss."""

    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


@dataclass(kw_only=True)
class ConversationState:
    """Streaming state of one conversation. ``speakers`` maps speaker ids to indices in order of
    appearance; ``length`` counts utterances seen. Each model subclasses it with its own typed
    fields (key/value caches, running vectors, the incremental graph), bounded by its horizon,
    and returns one from :meth:`ERCModel.init_state`."""

    speakers: dict[str, int] = field(default_factory=dict)
    length: int = 0

    def speaker_index(self, speaker: str) -> int:
        return self.speakers.setdefault(speaker, len(self.speakers))


class ERCModel(nn.Module, ABC):
    """Base class of every ERC model.

    Subclasses set ``name`` (the registry key) and ``Config`` (a frozen pydantic dataclass of
    explicit hyperparameters, :data:`~realtime_erc.models.options.hyperparameters`, mirrored in
    ``configs/models/<name>.toml``), and take
    ``(dims, labels, config)`` in their constructor. ``labels`` is the ordered class list (never
    hard-coded); ``label_set`` names it (``meld7``, ``iemocap6`` ...).
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, dims: FeatureDims, labels: Sequence[str], label_set: str, config: Any):
        super().__init__()
        self.dims = dims
        self.labels = tuple(labels)
        self.label_set = label_set
        self.config = config

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @abstractmethod
    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        """Logits ``[N, C]`` for every utterance of every dialogue in ``batch``."""

    @abstractmethod
    def init_state(self) -> ConversationState:
        """A fresh conversation."""

    @abstractmethod
    def step(
        self, state: ConversationState, utterance: UtteranceFeatures
    ) -> tuple[Tensor, ConversationState]:
        """Logits ``[C]`` for the newest utterance given only what came before it."""

    batched_step: ClassVar[bool] = False
    """True when :meth:`step_many` runs the conversations' steps as one batch."""

    def step_many(
        self, states: Sequence[ConversationState], utterances: Sequence[UtteranceFeatures]
    ) -> tuple[Tensor, list[ConversationState]]:
        """One new utterance for each of ``S`` distinct conversations → logits ``[S, C]``.
        This default loops over :meth:`step`; models that batch set ``batched_step``."""
        results = [self.step(s, u) for s, u in zip(states, utterances, strict=True)]
        return torch.stack([r[0] for r in results]), [r[1] for r in results]

    def utterance_batch(
        self, state: ConversationState, utterance: UtteranceFeatures
    ) -> DialogueBatch:
        """One utterance as a batch, its speaker indexed by the conversation's map, on the
        model's device. Registers a new speaker in ``state``."""
        self.dims.check(utterance)
        state.speaker_index(utterance.speaker)
        batch = DialogueBatch.from_dialogues(
            [[utterance]], self.dims, speaker_maps=[state.speakers]
        )
        batch.position.fill_(state.length)
        return batch.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
