"""DF-GCN (Meng et al., 2026): dynamic fusion-aware graph ODE for multimodal ERC.

What the paper states: fixed fusion parameters force one compromise for all emotion types, so
prompts generated from a *global information vector* (GIV) of the utterances dynamically generate
the fusion parameters, and a graph ODE captures the continuous dynamics of emotional dependencies.

Pipeline (``N`` utterances, ``H`` = ``hidden``):

1. Per modality, a presence-masked encoder of the pooled vector → ``h_m`` ``[N, 3, H]``; static
   fusion ``f`` = mean over the present modalities ``[N, H]``.
2. GIV prompt (:mod:`.layers.giv_prompt`): ``p_t = MLP(mean(f_0 … f_t))`` ``[N, P]``.
3. Dynamic fusion (:mod:`.layers.dynamic_fusion`): a hypernetwork maps ``[p; f]`` to modality
   weights and a rank-``fusion_rank`` update of the fusion matrix → fused ``x`` ``[N, H]``.
4. Graph ODE (:mod:`.layers.graph_ode`) over the speaker-aware conversation graph (window
   ``window``), ``H(0) = x`` → ``H(t_end)``.
5. Classifier on ``[H(t_end); x]``.

Interpretations (each a hyperparameter of :class:`DFGCNConfig`):

- GIV = *causal* running mean of the static fusion ``f`` (the authors' code uses the whole-
  dialogue mean, which leaks the future; that is our bidirectional mode). The GIV is built from
  ``f``, not from the dynamic fusion it conditions, to avoid a circular definition; the GIV path
  is never detached (the authors' code detaches it).
- Dynamic fusion = modality weights + low-rank fusion-matrix update from a hypernetwork
  (``fusion_rank``); the authors' code scales one 512 × 512 matrix by a softmax vector.
- Graph ODE ``dH/dt = σ(Σ_r Â_r H W_r) − H`` (``ode_form="sigmoid"``) or the CGNN form
  (``"cgnn"``); relations self / same-speaker / other-speaker (× future when bidirectional);
  the speaker graph is built from speaker ids (the authors' code builds it from a feature
  tensor). rk4, ``t ∈ [0, ode_time]``, step ``ode_step``.
- Per-modality Transformers over the dialogue (authors' code) are left out: context comes from
  the GIV and the graph ODE.
- Loss: the trainer's fusion CE plus ``aux_losses["unimodal"] = unimodal_weight · Σ_m CE_m²``
  (authors: ``Σ CE² / 10``), CE_m over the utterances where modality m is present and labelled;
  training mode only, and only when the batch carries labels.

Streaming: the state keeps the GIV running sum (O(1)), the incremental graph and, for the last
``window`` utterances, their ODE states at every solver evaluation (see :mod:`.layers.graph_ode`):
``step`` integrates only the new node, so its cost is bounded by ``window`` whatever the
conversation's length, and it equals the causal ``forward`` (same solver, same evaluations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from realtime_erc.conversation.context import RingCache, RunningMean
from realtime_erc.conversation.graph import (
    NUM_RELATIONS,
    NUM_RELATIONS_CAUSAL,
    IncrementalGraph,
    build_graph,
)
from realtime_erc.events import MODALITIES, UtteranceFeatures
from realtime_erc.models.base import (
    ConversationState,
    DialogueBatch,
    ERCModel,
    FeatureDims,
    ModelOutput,
)
from realtime_erc.models.layers.dynamic_fusion import DynamicFusion
from realtime_erc.models.layers.fusion import ModalityEncoder
from realtime_erc.models.layers.giv_prompt import GIVPrompt, global_information
from realtime_erc.models.layers.graph_ode import GraphODE
from realtime_erc.models.options import hyperparameters


@hyperparameters
class DFGCNConfig:
    """``hidden``: width of every node vector; ``prompt_dim``: GIV prompt size; ``fusion_rank``:
    rank of the generated fusion-matrix update; ``window``: past (and, bidirectional, future)
    graph window; ``ode_form``: "sigmoid" | "cgnn"; ``ode_method``: "rk4" | "midpoint" |
    "euler"; ``ode_step``/``ode_time``: solver step and end time; ``unimodal_weight``: weight of
    Σ(unimodal CE)² (authors: 0.1)."""

    hidden: int = 128
    prompt_dim: int = 64
    fusion_rank: int = 4
    window: int = 10
    ode_form: str = "sigmoid"
    ode_method: str = "rk4"
    ode_step: float = 0.25
    ode_time: float = 1.0
    unimodal_weight: float = 0.1
    dropout: float = 0.3


@dataclass(kw_only=True)
class DFGCNState(ConversationState):
    """``graph``: the causal graph's last ``window`` speakers; ``giv``: the running sum of the
    static fusion (O(1)); ``stages``: the ODE states ``[num_stages, H]`` of the last ``window``
    utterances at every solver evaluation."""

    graph: IncrementalGraph
    giv: RunningMean
    stages: RingCache


class DFGCN(ERCModel):
    """DF-GCN, streaming interpretation (see the module docstring)."""

    name = "dfgcn"
    Config = DFGCNConfig

    def __init__(
        self,
        dims: FeatureDims,
        labels: Sequence[str],
        label_set: str = "custom",
        config: DFGCNConfig | None = None,
    ) -> None:
        config = config or DFGCNConfig()
        super().__init__(dims, labels, label_set, config)
        h = config.hidden
        self.encoders = nn.ModuleList(
            [ModalityEncoder(dims.pooled(m), h, config.dropout) for m in MODALITIES]
        )
        self.unimodal_heads = nn.ModuleList([nn.Linear(h, self.num_classes) for _ in MODALITIES])
        self.prompt = GIVPrompt(h, config.prompt_dim)
        self.fusion = DynamicFusion(h, config.prompt_dim, config.fusion_rank, len(MODALITIES))
        self.ode = GraphODE(
            h, NUM_RELATIONS, config.ode_form, config.ode_method, config.ode_step, config.ode_time
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Sequential(
            nn.Linear(2 * h, h), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(h, len(labels))
        )

    def _encode(self, batch: DialogueBatch) -> tuple[Tensor, Tensor]:
        """→ per-modality vectors ``[N, 3, H]`` (zero where absent), static fusion ``[N, H]``."""
        present = batch.present
        per = torch.stack(
            [
                enc(batch.modality(m).pooled, present[:, k])
                for k, (m, enc) in enumerate(zip(MODALITIES, self.encoders, strict=True))
            ],
            dim=1,
        )
        static = per.sum(1) / present.sum(1, keepdim=True).clamp(min=1).to(per.dtype)
        return per, static

    def forward(self, batch: DialogueBatch, causal: bool = True) -> ModelOutput:
        cfg = self.config
        per, static = self._encode(batch)
        dense, mask = batch.dense(static)
        prompt = self.prompt(batch.flat(global_information(dense, mask, causal)))
        fused, _ = self.fusion(per, batch.present, prompt, static)
        graph = build_graph(batch.speaker, batch.position, cfg.window, 0 if causal else cfg.window)
        relations = NUM_RELATIONS_CAUSAL if causal else NUM_RELATIONS
        h_t = self.ode(self.drop(fused), graph.edge_index, graph.edge_type, relations)
        logits = self.head(torch.cat([self.drop(h_t), fused], -1))
        aux: dict[str, Tensor] = {}
        if self.training and batch.labels is not None:
            aux["unimodal"] = cfg.unimodal_weight * self._unimodal_loss(per, batch)
        return ModelOutput(logits, aux)

    def _unimodal_loss(self, per: Tensor, batch: DialogueBatch) -> Tensor:
        """Σ_m CE_m², CE_m over utterances with modality m present and a label (≥ 0)."""
        assert batch.labels is not None
        total = per.new_zeros(())
        labelled = batch.labels >= 0
        for k, head in enumerate(self.unimodal_heads):
            rows = labelled & batch.present[:, k]
            if rows.any():
                ce = nn.functional.cross_entropy(head(per[rows, k]), batch.labels[rows])
                total = total + ce**2
        return total

    def init_state(self) -> DFGCNState:
        cfg, dev = self.config, self.device
        return DFGCNState(
            graph=IncrementalGraph(cfg.window, dev),
            giv=RunningMean(),
            stages=RingCache(cfg.window, (self.ode.num_stages, cfg.hidden), device=dev),
        )

    @torch.inference_mode()
    def step(self, state: DFGCNState, utterance: UtteranceFeatures) -> tuple[Tensor, DFGCNState]:
        batch = self.utterance_batch(state, utterance)
        per, static = self._encode(batch)
        prompt = self.prompt(state.giv.update(static))
        fused, _ = self.fusion(per, batch.present, prompt, static)
        _, edge_type = state.graph.add(state.speakers[utterance.speaker])
        h_t, own = self.ode.step(fused[0], state.stages.last(self.config.window), edge_type)
        state.stages.append(own)
        logits = self.head(torch.cat([h_t, fused[0]], -1))
        state.length += 1
        return logits, state
