"""BIG-FUSION (Wang et al., AAAI 2025): global and local conversational context processed in
parallel and aligned, instead of a Transformer → GNN → GCL sequence.

Pipeline for a dialogue (``N`` utterances, hidden size ``H``):

1. **Modality fusion** — pooled text/audio/visual vectors, presence-masked
   (:class:`~realtime_erc.models.layers.fusion.ModalityFusion`) → ``x [N, H]``.
2. Two branches on ``x``, in parallel:

   - **Dual-attention spiking Transformer** (``layers`` ×
     :class:`~realtime_erc.models.layers.dual_attention.DualAttentionBlock`): global attention
     over the past within ``horizon`` and sliding-window attention over the last ``window``
     utterances (both sides when bidirectional), each through multi-step LIF neurons
     (:mod:`~realtime_erc.models.layers.lif`), fused by a learned gate → ``h_t [N, H]``.
   - **Speaker graph branch** (:class:`~realtime_erc.models.layers.speaker_graph.
     SpeakerGraphBranch`): relational GNN over the conversation graph (window ``graph_past``,
     self / same-speaker / other-speaker relations) → ``h_g [N, H]``.

3. **Classifier** on ``[h_t; h_g]`` → logits ``[N, C]``.
4. **GCL** (training only, :mod:`~realtime_erc.models.layers.gcl`): node importance from the
   dual evaluation (global + local), two adaptively augmented views of the graph branch,
   InfoNCE; ``aux_losses["gcl"] = λ · InfoNCE``.

Interpretations (the paper gives only its abstract; each is a hyperparameter in
:class:`BigFusionConfig`): LIF with T = 4, τ = 2, threshold 1, hard reset, arctan surrogate, input
repeated over T, output = mean firing rate × learned gain, LayerNorm before each LIF (no
BatchNorm); per-channel gate ``g = σ(W[h_glob; h_loc])``; the graph branch reads the fused
utterance vectors (parallel, not after the Transformer) and its output is concatenated with the
Transformer's; importance = attention mass received (global branch / window branch) or PageRank /
neighbour similarity, ``s = α·global + (1−α)·local``; GCA-style edge dropping and feature masking
``p = min(p_max, p_mean (s_max − s)/(s_max − s_mean))``; GRACE InfoNCE (τ = 0.5), λ = 0.2.

Streaming: :meth:`BigFusion.step` caches, per attention layer, the keys/values of the last
``horizon`` (global) and ``window + 1`` (local) utterances, and per graph layer the inputs of the
last ``graph_past`` utterances; the spiking dynamics are per utterance. In causal mode a step
equals the ``forward`` row of the newest utterance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from realtime_erc.conversation.context import RingCache
from realtime_erc.conversation.graph import IncrementalGraph, build_graph
from realtime_erc.events import MODALITIES, UtteranceFeatures
from realtime_erc.models.base import (
    ConversationState,
    DialogueBatch,
    ERCModel,
    FeatureDims,
    ModelOutput,
)
from realtime_erc.models.layers import gcl
from realtime_erc.models.layers.dual_attention import DualAttentionBlock, ReceivedAttention
from realtime_erc.models.layers.fusion import ModalityFusion
from realtime_erc.models.layers.lif import LIFOptions
from realtime_erc.models.layers.speaker_graph import SpeakerGraphBranch
from realtime_erc.models.options import hyperparameters


@hyperparameters
class BigFusionConfig:
    """BIG-FUSION hyperparameters (mirrored in ``configs/models/bigfusion.toml``)."""

    hidden: int = 128
    fusion: str = "mean"  # modality fusion: "mean" | "concat"
    dropout: float = 0.1
    # dual-attention spiking Transformer
    layers: int = 2
    heads: int = 4
    ffn: int = 256
    window: int = Field(
        4, ge=0
    )  # sliding-window attention: utterances each side (past only when causal)
    horizon: int = Field(
        256, ge=1
    )  # global attention reaches this many utterances back (self included)
    # LIF neurons
    lif_steps: int = 4
    lif_tau: float = 2.0
    lif_threshold: float = 1.0
    lif_reset: str = "hard"  # "hard" | "soft"
    lif_surrogate: str = "atan"  # "atan" | "sigmoid"
    lif_alpha: float = 2.0
    # speaker graph branch
    graph_layers: int = 2
    graph_past: int = Field(
        10, ge=0
    )  # conversation-graph window (future window too when bidirectional)
    graph_bases: int = 0  # RGCN basis decomposition; 0 = one matrix per relation
    # graph contrastive learning (training only)
    gcl_weight: float = 0.2  # λ; 0 disables GCL
    gcl_tau: float = 0.5
    gcl_proj: int = 64
    gcl_max_nodes: int = 2048  # InfoNCE over a random subset when a batch has more nodes
    importance_alpha: float = 0.5  # s = α·global + (1−α)·local
    global_importance: Literal["attention", "pagerank"] = "attention"
    local_importance: Literal["attention", "similarity"] = "attention"
    edge_p_mean: float = 0.3
    edge_p_max: float = 0.7
    feature_p_mean: float = 0.3
    feature_p_max: float = 0.7

    @property
    def lif(self) -> LIFOptions:
        return LIFOptions(
            self.lif_steps,
            self.lif_tau,
            self.lif_threshold,
            self.lif_reset,
            self.lif_surrogate,
            self.lif_alpha,
        )

    @property
    def augment(self) -> gcl.AugmentOptions:
        return gcl.AugmentOptions(
            self.edge_p_mean, self.edge_p_max, self.feature_p_mean, self.feature_p_max
        )


@dataclass(kw_only=True)
class BigFusionState(ConversationState):
    """``attention``: per block, the keys/values of the last ``horizon`` utterances;
    ``graph``: the causal graph's last ``graph_past`` speakers; ``graph_inputs``: per graph
    layer, its inputs of the last ``graph_past`` utterances."""

    attention: list[RingCache]
    graph: IncrementalGraph
    graph_inputs: list[RingCache]


class BigFusion(ERCModel):
    """BIG-FUSION: dual-attention spiking Transformer ∥ speaker graph branch, GCL in training."""

    name = "bigfusion"
    Config = BigFusionConfig

    def __init__(
        self,
        dims: FeatureDims,
        labels: Sequence[str],
        label_set: str = "custom",
        config: BigFusionConfig | dict[str, Any] | None = None,
    ) -> None:
        if config is None:
            config = BigFusionConfig()
        elif isinstance(config, dict):
            config = BigFusionConfig(**config)
        super().__init__(dims, labels, label_set, config)
        c = config
        self.fusion = ModalityFusion(dims, c.hidden, c.fusion, c.dropout)
        self.blocks = nn.ModuleList(
            DualAttentionBlock(c.hidden, c.heads, c.window, c.horizon, c.ffn, c.dropout, c.lif)
            for _ in range(c.layers)
        )
        self.final_norm = nn.LayerNorm(c.hidden)
        self.graph = SpeakerGraphBranch(
            c.hidden, c.graph_layers, c.graph_past, c.graph_bases or None, c.dropout
        )
        self.head = nn.Sequential(
            nn.Linear(2 * c.hidden, c.hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, self.num_classes),
        )
        self.projection = gcl.ProjectionHead(c.hidden, c.gcl_proj)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    # -- whole dialogues --------------------------------------------------------------------
    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        c: BigFusionConfig = self.config
        x = self.fusion.from_batch(batch).fused  # [N, H]
        dense, valid = batch.dense(x)  # [B, L, H], [B, L]
        use_gcl = self.training and c.gcl_weight > 0 and batch.num_utterances > 1
        received: ReceivedAttention | None = None
        for k, block in enumerate(self.blocks):
            last = k == len(self.blocks) - 1
            dense, seen = block(dense, valid, causal, need_importance=use_gcl and last)
            received = seen if last else received
        h_t = batch.flat(self.final_norm(dense))
        graph = build_graph(
            batch.speaker, batch.position, c.graph_past, 0 if causal else c.graph_past
        )
        h_g = self.graph(x, graph.edge_index, graph.edge_type)
        logits = self.head(torch.cat([h_t, h_g], dim=-1))
        aux: dict[str, Tensor] = {}
        if use_gcl and received is not None:
            importance = self._importance(batch, x, graph.edge_index, received)
            aux["gcl"] = c.gcl_weight * self._gcl_loss(batch, x, graph, importance)
        return ModelOutput(logits, aux)

    def _importance(
        self, batch: DialogueBatch, x: Tensor, edge_index: Tensor, received: ReceivedAttention
    ) -> Tensor:
        """Dual-evaluation node importance ``[N]`` (detached), from the last block's attention
        or the graph (see :mod:`~realtime_erc.models.layers.gcl`)."""
        c: BigFusionConfig = self.config
        with torch.no_grad():
            if c.global_importance == "attention":
                glob = batch.flat(received.glob)
            else:
                glob = gcl.pagerank(edge_index, batch.num_utterances)
            if c.local_importance == "attention":
                local = batch.flat(received.loc)
            else:
                local = gcl.similarity_importance(x, edge_index)
            return gcl.dual_importance(glob, local, batch.dialogue, c.importance_alpha)

    def _gcl_loss(self, batch: DialogueBatch, x: Tensor, graph, importance: Tensor) -> Tensor:
        c: BigFusionConfig = self.config
        views = []
        for _ in range(2):
            xa, ei, et = gcl.augment(
                x, graph.edge_index, graph.edge_type, importance, batch.dialogue, c.augment
            )
            views.append(self.projection(self.graph(xa, ei, et)))
        z1, z2 = views
        n = z1.shape[0]
        if n > c.gcl_max_nodes:
            pick = torch.randperm(n, device=z1.device)[: c.gcl_max_nodes]
            z1, z2 = z1[pick], z2[pick]
        return gcl.info_nce(z1, z2, c.gcl_tau)

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self) -> BigFusionState:
        c: BigFusionConfig = self.config
        device = self.device
        return BigFusionState(
            attention=[block.new_cache(device) for block in self.blocks],
            graph=IncrementalGraph(c.graph_past, device=device),
            graph_inputs=self.graph.new_cache(device),
        )

    batched_step = True

    def step(
        self, state: BigFusionState, utterance: UtteranceFeatures
    ) -> tuple[Tensor, BigFusionState]:
        logits, states = self.step_many([state], [utterance])
        return logits[0], states[0]

    @torch.inference_mode()
    def step_many(
        self, states: Sequence[BigFusionState], utterances: Sequence[UtteranceFeatures]
    ) -> tuple[Tensor, list[BigFusionState]]:
        """One new utterance for each of ``S`` distinct conversations in one batch → logits
        ``[S, C]`` (the engine's micro-batch); each row equals what :meth:`step` gives."""
        for u in utterances:
            self.dims.check(u)
        device = self.device
        pooled = [
            torch.from_numpy(
                np.stack([np.asarray(u.modality(m).pooled, np.float32) for u in utterances])
            ).to(device)
            for m in MODALITIES
        ]
        present = torch.tensor([u.present for u in utterances], dtype=torch.bool, device=device)
        x = self.fusion(pooled, present).fused  # [S, H]
        h = x
        if len(states) == 1:  # one conversation: the unpadded attention path
            for block, cache in zip(self.blocks, states[0].attention, strict=True):
                h = block.step(h[0], cache)[None]
        else:
            for k, block in enumerate(self.blocks):
                h = block.step_many(h, [state.attention[k] for state in states])
        h_t = self.final_norm(h)
        edge_types = [
            state.graph.add(state.speaker_index(u.speaker))[1]
            for state, u in zip(states, utterances, strict=True)
        ]
        h_g = self.graph.step(x, edge_types, [state.graph_inputs for state in states])
        logits = self.head(torch.cat([h_t, h_g], dim=-1))
        for state in states:
            state.length += 1
        return logits, list(states)
