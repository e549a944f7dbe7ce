"""Emotion Hotspots (Liu et al., 2025): hotspot-gated fusion + routed mixture of aligners.

What the paper states: emotional evidence is sparse, local and asynchronous across modalities.
The model detects per-utterance hotspots in text, audio and video, fuses them with whole-utterance
features (Hotspot-Gated Fusion), aligns the modalities with a routed Mixture-of-Aligners that also
builds a modality memory, and encodes the conversation with a cross-modal graph; the MoA path and
the graph path run in parallel, are concatenated and feed the classifier.

Pipeline (``N`` utterances, ``H`` = ``hidden``):

1. Per modality: steps (tokens / audio frames / video frames) → :class:`SequenceEncoder` →
   :class:`HotspotDetector` (1-D conv + scorer, top ``k = max(1, ⌊hotspot_fraction · T_valid⌋)``
   steps, ``selection`` = straight-through or sparsemax) → hotspot vector h and masked mean of
   the steps; the global view g is that mean, averaged with the projected pooled vector when
   ``pooled_in_global`` (the extractor's utterance-level vector, e.g. the sentence embedding, is
   then not lost) → :class:`HotspotGatedFusion` → ``u_m`` ``[N, H]``.
2. Shared utterance representation ``s = GELU(W · mean_{m present} u_m)``.
3. MoA path: :class:`MixtureOfAligners` (``experts`` cross-attention aligners, ``top_k_experts``
   routed per utterance by a softmax router on s) → aligned ``â_m``; ``a`` = their mean; the
   modality memory (:class:`ModalityMemory`, attention over the aligned vectors of the last
   ``horizon`` utterances) → ``r``; ``moa = GELU(W [a; r])``.
4. Graph path: :class:`CrossModalGraphLayer` × ``graph_layers`` over (utterance × modality)
   nodes (cross-modal edges within an utterance, temporal edges within a modality over a past
   ``graph_window``; future too when bidirectional) → mean over present modalities.
5. Classifier on ``[moa; graph]``.

Interpretations (each a hyperparameter of :class:`HotspotConfig`): the hotspot selection rule,
k as a fraction of the valid length, cross-attention aligners with top-k softmax routing and a
Switch-style load-balancing loss (``aux_losses["load_balance"]``, weighted, training only), the
modality memory as bounded attention over past aligned vectors, graph attention with edge-type
biases (a torch-geometric ``MessagePassing`` layer that ``forward`` runs on the batched graph and
``step`` on the new utterance's incoming-edge subgraph).

Graceful degradation: the model wants *sequence* features. Where a modality has only a pooled
vector (no sequence in the feature configuration, or none for an utterance), that vector is a
one-step sequence: ``k = 1``, the hotspot is the whole utterance and HGF mixes two views of the
same vector — the model then works at utterance level (report results as such). Absent modalities
are masked everywhere (no hotspot, no aligner input, no graph node).

Streaming: the state (:class:`HotspotState`) holds the modality memory (keys/values of the last
``horizon`` utterances), each graph layer's inputs of the last ``graph_window`` utterances and
the speakers and modality presence of those utterances; everything else is per utterance.
``step`` equals the causal ``forward`` but takes a path of its own for the one new utterance (no
batch collation, absent modalities skipped, the modalities batched, the masks of each presence
pattern built once per conversation, preallocated caches read in storage order): the layers'
``encode_one``, ``detect_step``, ``fuse_step`` and ``step`` methods, and the graph layers on the
incoming-edge subgraph of the new utterance's three nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from realtime_erc.events import MODALITIES, UtteranceFeatures
from realtime_erc.models.base import (
    ConversationState,
    DialogueBatch,
    ERCModel,
    FeatureDims,
    ModelOutput,
)
from realtime_erc.models.layers.cross_modal_graph import (
    CrossModalGraphLayer,
    CrossModalHistory,
    cross_modal_graph,
)
from realtime_erc.models.layers.gated_fusion import HotspotGatedFusion
from realtime_erc.models.layers.hotspot_detector import HotspotDetector, Hotspots
from realtime_erc.models.layers.mixture_of_aligners import (
    Alignment,
    MixtureOfAligners,
    load_balancing_loss,
)
from realtime_erc.models.layers.modality_memory import MemoryCache, ModalityMemory
from realtime_erc.models.layers.sequence_encoder import SequenceEncoder
from realtime_erc.models.options import hyperparameters


@hyperparameters
class HotspotConfig:
    """``hidden``: width of every vector; ``conv_kernel``: hotspot detector's conv width (odd);
    ``hotspot_fraction``: k as a share of the valid steps; ``pooled_in_global``: HGF's global
    view g averages the step mean with the pooled vector (False: step mean only);
    ``selection``: "straight_through" | "sparsemax"; ``selection_temperature``: score
    temperature; ``experts`` / ``top_k_experts``: MoA size and routing;
    ``load_balance_weight``: weight of the load-balancing loss; ``memory_heads`` / ``horizon``:
    modality memory; ``graph_window`` / ``graph_layers`` / ``graph_heads``: cross-modal graph."""

    hidden: int = 128
    conv_kernel: int = 3
    hotspot_fraction: float = 0.25
    pooled_in_global: bool = True
    selection: str = "straight_through"
    selection_temperature: float = 1.0
    experts: int = 4
    top_k_experts: int = 2
    load_balance_weight: float = 0.01
    memory_heads: int = 4
    horizon: int = 256
    graph_window: int = 8
    graph_layers: int = 2
    graph_heads: int = 4
    dropout: float = 0.2


@dataclass
class _Utterances:
    """Per-utterance part of the model (everything before the context): ``u`` ``[N, 3, H]``,
    ``present`` ``[N, 3]`` (modality has a valid step), ``alignment``, ``aligned`` ``[N, H]``,
    ``hotspots`` (all modalities, ``[N, 3, …]``)."""

    u: Tensor
    present: Tensor
    alignment: Alignment
    aligned: Tensor
    hotspots: Hotspots


@dataclass
class _Presence:
    """The masks of one modality-presence pattern (built once per conversation and pattern):
    ``mask`` ``[3]`` additive (−1e9 where absent); ``present`` ``[3, 1]`` float (None: all
    present); ``node_present`` ``[3]`` bool; ``count`` present modalities (at least 1, a
    divisor) and ``n_present`` (exact);
    ``moa_blocked`` ``[3, 3]`` bool and ``moa_attends`` ``[3, 1]`` float (None: all 1) for the
    aligners."""

    mask: Tensor
    present: Tensor | None
    node_present: Tensor
    count: int
    n_present: int
    moa_blocked: Tensor
    moa_attends: Tensor | None

    @classmethod
    def of(cls, present: tuple[bool, ...], device: torch.device) -> _Presence:
        m = len(present)
        mask = torch.tensor(present, dtype=torch.bool, device=device)
        other = ~torch.eye(m, dtype=torch.bool, device=device)
        attends = [any(present[p] for p in range(m) if p != i) for i in range(m)]
        return cls(
            mask=(~mask).float() * -1e9,
            present=None if all(present) else mask.float().unsqueeze(-1),
            node_present=mask,
            count=max(1, sum(present)),
            n_present=sum(present),
            moa_blocked=~(other & mask),
            moa_attends=None
            if all(attends)
            else torch.tensor(attends, dtype=torch.float32, device=device).unsqueeze(-1),
        )


@dataclass(kw_only=True)
class HotspotState(ConversationState):
    """``memory``: the modality memory's keys/values of the last ``horizon`` utterances;
    ``graph``: the last ``graph_window`` utterances' speakers, presence and graph-layer inputs;
    ``presence``: the masks of each modality-presence pattern met so far."""

    memory: MemoryCache
    graph: CrossModalHistory
    presence: dict[tuple[bool, ...], _Presence] = field(default_factory=dict)


def _pad_time(x: Tensor, length: int) -> Tensor:
    """Zero-pad ``[N, T, ...]`` to ``[N, length, ...]`` (padding is invalid / zero)."""
    if x.shape[1] == length:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))], 1)


class EmotionHotspots(ERCModel):
    """Emotion Hotspots, streaming interpretation (see the module docstring)."""

    name = "hotspot"
    Config = HotspotConfig

    def __init__(
        self,
        dims: FeatureDims,
        labels: Sequence[str],
        label_set: str = "custom",
        config: HotspotConfig | None = None,
    ) -> None:
        config = config or HotspotConfig()
        super().__init__(dims, labels, label_set, config)
        h = config.hidden
        self.encoders = nn.ModuleList(
            [SequenceEncoder(dims.pooled(m), dims.seq(m), h) for m in MODALITIES]
        )
        self.detector = HotspotDetector(
            h,
            len(MODALITIES),
            config.conv_kernel,
            config.hotspot_fraction,
            config.selection,
            config.selection_temperature,
        )
        self.gate = HotspotGatedFusion(h, len(MODALITIES))
        self.shared = nn.Linear(h, h)
        self.aligners = MixtureOfAligners(h, config.experts, config.top_k_experts)
        self.memory = ModalityMemory(h, config.memory_heads, config.horizon)
        self.moa_out = nn.Linear(2 * h, h)
        self.modality_embedding = nn.Parameter(torch.zeros(len(MODALITIES), h))
        self.graph = nn.ModuleList(
            [
                CrossModalGraphLayer(h, config.graph_heads, config.graph_window)
                for _ in range(config.graph_layers)
            ]
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Sequential(
            nn.Linear(2 * h, h), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(h, len(labels))
        )

    def _utterances(self, batch: DialogueBatch) -> _Utterances:
        encoded = [
            enc(batch.modality(m), batch.present[:, k])
            for k, (m, enc) in enumerate(zip(MODALITIES, self.encoders, strict=True))
        ]
        length = max(e[0].shape[1] for e in encoded)
        steps = torch.stack([_pad_time(e[0], length) for e in encoded], 1)  # [N, 3, T, H]
        valid = torch.stack([_pad_time(e[1], length) for e in encoded], 1)  # [N, 3, T]
        spots = self.detector(steps, valid)
        mask = valid.any(-1)  # [N, 3]
        context = spots.context
        if self.config.pooled_in_global:
            context = 0.5 * (context + torch.stack([e[2] for e in encoded], 1))
        u = self.drop(self.gate(spots.vector, context)) * mask.unsqueeze(-1)  # [N, 3, H]
        count = mask.sum(1, keepdim=True).clamp(min=1).to(u.dtype)
        s = nn.functional.gelu(self.shared(u.sum(1) / count))
        alignment = self.aligners(u, mask, s)
        aligned = alignment.tokens.sum(1) / count
        return _Utterances(u, mask, alignment, aligned, spots)

    def _output(self, aligned: Tensor, read: Tensor, nodes: Tensor, present: Tensor) -> Tensor:
        """``aligned``/``read`` ``[N, H]``, graph ``nodes`` ``[N, 3, H]`` → logits ``[N, C]``."""
        moa = nn.functional.gelu(self.moa_out(torch.cat([aligned, read], -1)))
        count = present.sum(-1, keepdim=True).clamp(min=1).to(nodes.dtype)
        graph = nodes.sum(-2) / count
        return self.head(self.drop(torch.cat([moa, graph], -1)))

    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        utt = self._utterances(batch)
        aligned, mask = batch.dense(utt.aligned)
        tokens, _ = batch.dense(utt.alignment.tokens)
        present, _ = batch.dense(utt.present)
        read = batch.flat(self.memory(aligned, tokens, present, causal))
        nodes = utt.u + self.modality_embedding * utt.present.unsqueeze(-1)  # [N, 3, H]
        graph = cross_modal_graph(
            batch.speaker,
            batch.dialogue,
            batch.position,
            utt.present,
            self.config.graph_window,
            causal,
        )
        nodes = nodes.reshape(-1, nodes.shape[-1])
        for layer in self.graph:
            nodes = layer(nodes, graph.edge_index, graph.kind, graph.present)
        logits = self._output(utt.aligned, read, nodes.view_as(utt.u), utt.present)
        aux: dict[str, Tensor] = {}
        if self.training:
            balance = load_balancing_loss(utt.alignment.probs, utt.alignment.routes)
            aux["load_balance"] = self.config.load_balance_weight * balance
        return ModelOutput(logits, aux)

    def init_state(self) -> HotspotState:
        cfg, dev = self.config, self.device
        return HotspotState(
            memory=self.memory.new_cache(dev),
            graph=CrossModalHistory(cfg.graph_window, cfg.graph_layers, cfg.hidden, dev),
        )

    def _utterance_one(self, utterance: UtteranceFeatures) -> tuple[Tensor, tuple[bool, ...]]:
        """The per-utterance part of :meth:`_utterances` for one utterance: ``u`` ``[3, H]``
        (zero where absent) and the modalities' presence."""
        dims, hid = self.dims, self.config.hidden
        encoded = [
            encoder.encode_one(utterance.modality(name), dims.pooled(name), dims.seq(name))
            for name, encoder in zip(MODALITIES, self.encoders, strict=True)
        ]
        present = tuple(e is not None for e in encoded)
        length = max((len(e[0]) for e in encoded if e is not None), default=1)
        steps = self.shared.bias.new_zeros((len(MODALITIES), length, hid))
        valid = np.zeros((len(MODALITIES), length), bool)
        zero = None if all(present) else self.shared.bias.new_zeros(hid)
        pooled = []
        for k, e in enumerate(encoded):
            if e is None:
                pooled.append(zero)
                continue
            rows, row_valid, row_pooled = e
            steps[k, : len(rows)] = rows
            valid[k, : len(rows)] = True if row_valid is None else row_valid
            pooled.append(row_pooled)
        h, g = self.detector.detect_step(steps, valid)
        if self.config.pooled_in_global:
            g = torch.add(g, torch.stack(pooled)).mul_(0.5)
        u = self.gate.fuse_step(h, g)
        return (self.drop(u) if self.training else u), present

    @torch.inference_mode()
    def step(
        self, state: HotspotState, utterance: UtteranceFeatures
    ) -> tuple[Tensor, HotspotState]:
        self.dims.check(utterance)
        speaker = state.speaker_index(utterance.speaker)
        u, present = self._utterance_one(utterance)
        p = state.presence.get(present)
        if p is None:
            p = state.presence[present] = _Presence.of(present, u.device)
        s = F.gelu(F.linear(u.sum(0) / p.count, self.shared.weight, self.shared.bias))
        tokens = self.aligners.step(u, s, p.moa_blocked, p.moa_attends, p.present)
        aligned = tokens.sum(0) / p.count
        read = self.memory.step(aligned, tokens, p.mask, p.n_present, state.memory)
        embedding = self.modality_embedding
        nodes = u + (embedding if p.present is None else embedding * p.present)
        graph = state.graph.subgraph(speaker, p.node_present)
        for k, layer in enumerate(self.graph):
            sources = state.graph.sources(k, nodes)
            nodes = layer((sources, nodes), graph.edge_index, graph.kind, graph.present)
        state.graph.add(speaker, p.node_present)
        moa = F.gelu(F.linear(torch.cat([aligned, read]), self.moa_out.weight, self.moa_out.bias))
        hidden = torch.cat([moa, nodes.sum(0) / p.count])
        if self.training:
            hidden = self.drop(hidden)
        first, last = self.head[0], self.head[3]
        hidden = F.gelu(F.linear(hidden, first.weight, first.bias))
        if self.training:
            hidden = self.head[2](hidden)
        logits = F.linear(hidden, last.weight, last.bias)
        state.length += 1
        return logits, state
