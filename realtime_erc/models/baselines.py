"""Baselines on the same features as the published models, causal and bidirectional.

- :class:`UtteranceMLP` (``utterance-mlp``): no context at all — what context buys.
- :class:`DialogueGCN` (``dialoguegcn``): GRU context + relational GCN over the speaker graph
  (Ghosal et al., EMNLP 2019).
- :class:`DialogueRNNLite` (``dialogue-rnn-lite``): a compact DialogueRNN (Majumder et al.,
  AAAI 2019): global, party and emotion GRUs.

Every model fuses the pooled modality vectors with presence masks first
(:class:`~realtime_erc.models.layers.fusion.ModalityFusion`), so missing modalities and any
number of speakers are normal inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch_geometric.nn import RGCNConv

from realtime_erc.conversation.context import RingCache
from realtime_erc.conversation.graph import NUM_RELATIONS, SELF, IncrementalGraph, build_graph
from realtime_erc.events import UtteranceFeatures
from realtime_erc.models.base import (
    ConversationState,
    DialogueBatch,
    ERCModel,
    FeatureDims,
    ModelOutput,
)
from realtime_erc.models.layers.dialogue_gru import DialogueGRU, reverse_index
from realtime_erc.models.layers.fusion import ModalityFusion
from realtime_erc.models.layers.incoming import incoming_edges
from realtime_erc.models.options import hyperparameters


def steps_batch(
    model: ERCModel, states: Sequence[ConversationState], utterances: Sequence[UtteranceFeatures]
) -> DialogueBatch:
    """One new utterance per conversation as a batch of ``S`` one-utterance dialogues (speakers
    indexed by each conversation's map, positions = each conversation's length), on the model's
    device. Registers new speakers in the states."""
    for state, utt in zip(states, utterances, strict=True):
        model.dims.check(utt)
        state.speaker_index(utt.speaker)
    batch = DialogueBatch.from_dialogues(
        [[u] for u in utterances], model.dims, speaker_maps=[s.speakers for s in states]
    )
    batch.position = torch.tensor([s.length for s in states], dtype=torch.long)
    return batch.to(model.device)


@dataclass(kw_only=True)
class UtteranceMLPState(ConversationState):
    """No context: only the speaker map and the length."""


@dataclass(kw_only=True)
class DialogueGCNState(ConversationState):
    """``graph``: the causal graph's last ``past`` speakers; ``seq`` / ``h1``: the GRU outputs
    and first graph layer's outputs of the last ``past + 1`` utterances (the graph layers'
    sources); ``gru``: the GRU hidden state ``[1, 1, H]``."""

    graph: IncrementalGraph
    seq: RingCache
    h1: RingCache
    gru: Tensor


@dataclass(kw_only=True)
class DialogueRNNLiteState(ConversationState):
    """``history``: past global states in arrival slots ``[horizon, H]`` (the attention is
    order-free); ``g`` / ``e``: global and emotion states ``[1, H]``; ``q``: each speaker's party
    state ``[speakers, H]``."""

    history: Tensor
    g: Tensor
    e: Tensor
    q: Tensor = field(default_factory=lambda: torch.zeros(0))


def _classifier(in_dim: int, hidden: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
    )


# ---------------------------------------------------------------------------------------------


@hyperparameters
class UtteranceMLPConfig:
    """``hidden``: fusion and MLP width; ``fusion``: "mean" | "concat" (see layers/fusion.py)."""

    hidden: int = 128
    fusion: str = "concat"
    dropout: float = 0.1


class UtteranceMLP(ERCModel):
    """Presence-masked fusion of the pooled modality vectors → MLP. No context: causal and
    bidirectional outputs are identical and ``step`` keeps no state beyond the speaker map.
    Batched ``step_many``."""

    name = "utterance-mlp"
    Config = UtteranceMLPConfig
    batched_step = True

    def __init__(
        self,
        dims: FeatureDims,
        labels: Sequence[str],
        label_set: str = "custom",
        config: UtteranceMLPConfig | None = None,
    ) -> None:
        config = config or UtteranceMLPConfig()
        super().__init__(dims, labels, label_set, config)
        self.fusion = ModalityFusion(dims, config.hidden, config.fusion, config.dropout)
        self.head = _classifier(config.hidden, config.hidden, self.num_classes, config.dropout)

    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        return ModelOutput(self.head(self.fusion.from_batch(batch).fused))

    def init_state(self) -> UtteranceMLPState:
        return UtteranceMLPState()

    @torch.inference_mode()
    def step(
        self, state: UtteranceMLPState, utterance: UtteranceFeatures
    ) -> tuple[Tensor, UtteranceMLPState]:
        logits, states = self.step_many([state], [utterance])
        return logits[0], states[0]

    @torch.inference_mode()
    def step_many(
        self, states: Sequence[UtteranceMLPState], utterances: Sequence[UtteranceFeatures]
    ) -> tuple[Tensor, list[UtteranceMLPState]]:
        logits = self.forward(steps_batch(self, states, utterances)).logits
        for s in states:
            s.length += 1
        return logits, list(states)


# ---------------------------------------------------------------------------------------------


@hyperparameters
class DialogueGCNConfig:
    """``hidden``: fusion and GRU width; ``graph_hidden``: width of both graph layers;
    ``past``/``future``: the graph window (future edges only when non-causal); ``num_bases``:
    basis decomposition of the relation weights (0 = one matrix per relation)."""

    hidden: int = 128
    graph_hidden: int = 128
    fusion: str = "concat"
    past: int = 10
    future: int = 10
    num_bases: int = 0
    dropout: float = 0.1


class DialogueGCN(ERCModel):
    """DialogueGCN (Ghosal et al. 2019), streaming interpretation.

    1. Sequential context: a GRU over the fused utterance vectors — unidirectional when causal
       (streaming carries its hidden state), forward + backward summed when bidirectional.
    2. Speaker-level context: a relational GCN layer over the conversation graph
       (:mod:`realtime_erc.conversation.graph`), then a second graph layer with separate
       self/neighbour weights (the paper's "GraphConv"), both mean-normalised per relation.
    3. Classifier on ``[sequential; speaker-level]``.

    Interpretations (hyperparameters): the paper's relations are speaker *pairs* × direction,
    which ties the model to a fixed speaker count; ours are self / same-speaker / other-speaker
    × past/future, so any number of speakers works. Causal mode uses past edges only (window
    ``past``); ``future`` applies to bidirectional mode. The paper's final attention over all
    utterances is left out (it would look at the future). Per-relation weights by default,
    ``num_bases`` > 0 for basis decomposition.

    Streaming: the GRU state and the last ``past`` + 1 rows of each graph layer's input are
    cached (:class:`RingCache`); the new node's in-edges come from :class:`IncrementalGraph`, so a
    step costs the same at every conversation length. ``step_many`` batches conversations.
    """

    name = "dialoguegcn"
    Config = DialogueGCNConfig
    batched_step = True

    def __init__(
        self,
        dims: FeatureDims,
        labels: Sequence[str],
        label_set: str = "custom",
        config: DialogueGCNConfig | None = None,
    ) -> None:
        config = config or DialogueGCNConfig()
        super().__init__(dims, labels, label_set, config)
        h, g = config.hidden, config.graph_hidden
        self.fusion = ModalityFusion(dims, h, config.fusion, config.dropout)
        self.gru = DialogueGRU(h, h)
        bases = config.num_bases or None
        self.rgcn = RGCNConv(h, g, NUM_RELATIONS, bases, aggr="mean", root_weight=False)
        # The paper's GraphConv: separate self / neighbour weights = RGCN with 2 relations.
        self.gconv = RGCNConv(g, g, 2, aggr="mean", root_weight=False)
        self.drop = nn.Dropout(config.dropout)
        self.head = _classifier(h + g, h, self.num_classes, config.dropout)

    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        cfg = self.config
        u = self.fusion.from_batch(batch).fused
        seq = self.gru(u, batch, causal)
        graph = build_graph(batch.speaker, batch.position, cfg.past, 0 if causal else cfg.future)
        h1 = torch.relu(self.rgcn(self.drop(seq), graph.edge_index, graph.edge_type))
        h2 = torch.relu(self.gconv(h1, graph.edge_index, (graph.edge_type != SELF).long()))
        return ModelOutput(self.head(torch.cat([seq, self.drop(h2)], -1)))

    def init_state(self) -> DialogueGCNState:
        cfg, dev = self.config, self.device
        return DialogueGCNState(
            graph=IncrementalGraph(cfg.past, dev),
            seq=RingCache(cfg.past + 1, (cfg.hidden,), device=dev),
            h1=RingCache(cfg.past + 1, (cfg.graph_hidden,), device=dev),
            gru=torch.zeros(1, 1, cfg.hidden, device=dev),
        )

    @torch.inference_mode()
    def step(
        self, state: DialogueGCNState, utterance: UtteranceFeatures
    ) -> tuple[Tensor, DialogueGCNState]:
        logits, states = self.step_many([state], [utterance])
        return logits[0], states[0]

    @torch.inference_mode()
    def step_many(
        self, states: Sequence[DialogueGCNState], utterances: Sequence[UtteranceFeatures]
    ) -> tuple[Tensor, list[DialogueGCNState]]:
        """Batched: one GRU step for all conversations, then each graph layer on the new nodes'
        incoming-edge subgraph, its sources read from the conversations' rings."""
        batch = steps_batch(self, states, utterances)
        u = self.fusion.from_batch(batch).fused  # [S, H]
        hidden = torch.cat([s.gru for s in states], 1)  # [1, S, H]
        seq, hidden = self.gru.step(u, hidden)
        edge_types = []
        for i, s in enumerate(states):
            s.gru = hidden[:, i : i + 1]
            edge_types.append(s.graph.add(int(batch.speaker[i]))[1])
            s.seq.append(seq[i])
        edge_index, edge_type = incoming_edges(edge_types)
        rows = _incoming_rows([s.seq for s in states], edge_types)
        h1 = torch.relu(self.rgcn((rows, seq), edge_index, edge_type))  # [S, G]
        for i, s in enumerate(states):
            s.h1.append(h1[i])
        rows = _incoming_rows([s.h1 for s in states], edge_types)
        h2 = torch.relu(self.gconv((rows, h1), edge_index, (edge_type != SELF).long()))
        logits = self.head(torch.cat([seq, h2], -1))
        for s in states:
            s.length += 1
        return logits, list(states)


def _incoming_rows(rings: Sequence[RingCache], edge_types: Sequence[Tensor]) -> Tensor:
    """Each conversation's newest ``K_s`` rows (newest first, matching its in-edges), one
    conversation after another: the sources of :func:`incoming_edges` ``[Σ K_s, D]``."""
    return torch.cat([r.last(len(t)) for r, t in zip(rings, edge_types, strict=True)])


# ---------------------------------------------------------------------------------------------


@hyperparameters
class DialogueRNNLiteConfig:
    """``hidden``: width of the fused input and of every GRU state; ``horizon``: how many past
    global states the attention may see."""

    hidden: int = 128
    fusion: str = "concat"
    horizon: int = 256
    dropout: float = 0.1


class _DialogueRNNCells(nn.Module):
    """One direction of DialogueRNN: global, party and emotion GRU cells + the attention."""

    def __init__(self, h: int) -> None:
        super().__init__()
        self.global_cell = nn.GRUCell(2 * h, h)
        self.party_cell = nn.GRUCell(2 * h, h)
        self.emotion_cell = nn.GRUCell(h, h)
        self.att = nn.Linear(h, h, bias=False)

    def update(
        self, u: Tensor, q_speaker: Tensor, g_prev: Tensor, e_prev: Tensor, keys: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``u``, ``q_speaker`` (the speaker's party state), ``g_prev``, ``e_prev``: ``[B, H]``;
        ``keys``: ``[B, k, H]`` past global states (None when there are none) →
        ``(g, q_speaker', e)`` each ``[B, H]``."""
        g = self.global_cell(torch.cat([u, q_speaker], -1), g_prev)
        if keys is None:
            context = torch.zeros_like(u)
        else:
            scores = torch.einsum("bkh,bh->bk", keys, self.att(u))
            context = torch.einsum("bk,bkh->bh", torch.softmax(scores, -1), keys)
        q = self.party_cell(torch.cat([u, context], -1), q_speaker)
        e = self.emotion_cell(q, e_prev)
        return g, q, e


class DialogueRNNLite(ERCModel):
    """A compact DialogueRNN (Majumder et al. 2019) on fused multimodal utterance vectors.

    Per utterance ``t`` by speaker ``s``:
    ``g_t = GRU_G([u_t; q_s], g_{t-1})`` (global state), ``c_t`` = attention of ``u_t`` over the
    previous global states ``g_{t-horizon} … g_{t-1}``, ``q_s ← GRU_P([u_t; c_t], q_s)`` (the
    speaker's party state; listeners unchanged, the paper's default), ``e_t = GRU_E(q_s,
    e_{t-1})`` (emotion state) → classifier.

    Interpretations (hyperparameters): attention over a bounded ``horizon`` of global states so a
    step's cost does not grow with the conversation; party states are created on a speaker's
    first utterance (any number of speakers). Bidirectional mode (BiDialogueRNN) adds a second set
    of cells run over each dialogue reversed, whose emotion states feed their own output layer.

    Streaming: the state carries ``g``, ``e``, every speaker's ``q`` and the last ``horizon``
    global states (a ring buffer read in slot order: the attention does not depend on order).
    ``forward`` loops over time (as DialogueRNN does).
    """

    name = "dialogue-rnn-lite"
    Config = DialogueRNNLiteConfig

    def __init__(
        self,
        dims: FeatureDims,
        labels: Sequence[str],
        label_set: str = "custom",
        config: DialogueRNNLiteConfig | None = None,
    ) -> None:
        config = config or DialogueRNNLiteConfig()
        super().__init__(dims, labels, label_set, config)
        h = config.hidden
        self.fusion = ModalityFusion(dims, h, config.fusion, config.dropout)
        self.cells = _DialogueRNNCells(h)
        self.back_cells = _DialogueRNNCells(h)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(h, self.num_classes)
        self.back_out = nn.Linear(h, self.num_classes, bias=False)

    def _run(self, cells: _DialogueRNNCells, u: Tensor, speaker: Tensor) -> Tensor:
        """``u``: ``[B, L, H]`` dense dialogues, ``speaker``: ``[B, L]`` → emotion states
        ``[B, L, H]`` (padding at the end never reaches valid steps)."""
        b, length, h = u.shape
        n_spk = int(speaker.max()) + 1 if speaker.numel() else 1
        q = u.new_zeros(b, n_spk, h)
        g = e = u.new_zeros(b, h)
        history: list[Tensor] = []
        outs = []
        rows = torch.arange(b, device=u.device)
        for t in range(length):
            s = speaker[:, t]
            past = history[max(0, t - self.config.horizon) : t]
            keys = torch.stack(past, 1) if past else None
            g, q_new, e = cells.update(u[:, t], q[rows, s], g, e, keys)
            onehot = nn.functional.one_hot(s, n_spk).to(u.dtype).unsqueeze(-1)  # [B, S, 1]
            q = q * (1 - onehot) + onehot * q_new.unsqueeze(1)
            history.append(g)
            outs.append(e)
        return torch.stack(outs, 1)

    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        u = self.fusion.from_batch(batch).fused
        dense, _ = batch.dense(u)
        speaker, _ = batch.dense(batch.speaker)
        logits = self.out(self.drop(batch.flat(self._run(self.cells, dense, speaker))))
        if not causal:
            rev = reverse_index(batch)
            dense_r, _ = batch.dense(u[rev])
            speaker_r, _ = batch.dense(batch.speaker[rev])
            e_back = batch.flat(self._run(self.back_cells, dense_r, speaker_r))[rev]
            logits = logits + self.back_out(self.drop(e_back))
        return ModelOutput(logits)

    def init_state(self) -> DialogueRNNLiteState:
        h, dev = self.config.hidden, self.device
        return DialogueRNNLiteState(
            history=torch.zeros(self.config.horizon, h, device=dev),
            g=torch.zeros(1, h, device=dev),
            e=torch.zeros(1, h, device=dev),
            q=torch.zeros(0, h, device=dev),
        )

    @torch.inference_mode()
    def step(
        self, state: DialogueRNNLiteState, utterance: UtteranceFeatures
    ) -> tuple[Tensor, DialogueRNNLiteState]:
        h = self.config.hidden
        batch = self.utterance_batch(state, utterance)
        s = int(batch.speaker[0])
        q = state.q
        if s >= q.shape[0]:  # a new speaker's party state starts at 0
            q = torch.cat([q, q.new_zeros(s + 1 - q.shape[0], h)])
        u = self.fusion.from_batch(batch).fused
        history, seen = state.history, state.length
        keys = history[: min(seen, len(history))].unsqueeze(0) if seen else None
        g, q_s, e = self.cells.update(u, q[s : s + 1], state.g, state.e, keys)
        q[s] = q_s[0]
        history[seen % len(history)] = g[0]
        state.g, state.e, state.q = g, e, q
        state.length += 1
        return self.out(e[0]), state
