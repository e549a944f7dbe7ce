"""BIG-FUSION specifics (the generic contract — streaming equivalence, gradients to every
parameter, overfitting, checkpoints, feature dims — is tests/models/test_contract.py): both
attention branches and the gate learn, the LIF neurons fire as specified and pass a surrogate
gradient, GCL augmentation keeps important nodes, GCL runs only in training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from realtime_erc.conversation.graph import SELF, build_graph
from realtime_erc.models.base import DialogueBatch, FeatureDims
from realtime_erc.models.bigfusion import BigFusion, BigFusionConfig
from realtime_erc.models.layers import gcl
from realtime_erc.models.layers.dual_attention import DualAttentionBlock
from realtime_erc.models.layers.lif import LIFOptions, MultiStepLIF
from realtime_erc.models.synthetic import random_dialogue

DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)
LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear")


def make(seed: int = 0, **overrides) -> BigFusion:
    torch.manual_seed(seed)
    return BigFusion(DIMS, LABELS, "test6", replace(BigFusionConfig(), **overrides))


def dialogues(seed: int, lengths=(30, 24), speakers: int = 3):
    rng = np.random.default_rng(seed)
    return [random_dialogue(rng, DIMS, n, speakers, p_missing=0.3) for n in lengths]


def labelled(dialogs, seed: int = 0) -> DialogueBatch:
    rng = np.random.default_rng(seed)
    labels = [rng.integers(len(LABELS), size=len(d)).tolist() for d in dialogs]
    return DialogueBatch.from_dialogues(dialogs, DIMS, labels=labels)


# -- LIF neurons -----------------------------------------------------------------------------


def test_lif_fires_at_the_rates_the_dynamics_give():
    """T=4, τ=2, V_th=1, hard reset: H_t = x(1 − 2^−t) restarts after every spike."""
    lif = MultiStepLIF(5)
    x = torch.tensor([0.5, 1.1, 1.2, 1.5, 3.0])
    # 0.5 never reaches 1; 1.1 fires at t=4 only; 1.2 at t=3 (7/8·1.2 ≥ 1); 1.5 every 2nd step
    # (3/4·1.5 ≥ 1); 3.0 every step (x/2 ≥ 1).
    expected = torch.tensor([0.0, 0.25, 0.25, 0.5, 1.0])
    with torch.no_grad():
        assert torch.equal(lif.rate(x), expected)
    assert torch.equal(lif.rate(x.clone().requires_grad_(True)).detach(), expected)


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("tau", [1.5, 2.0, 3.0])
def test_lif_inference_path_equals_the_autograd_path(reset, tau):
    lif = MultiStepLIF(1, LIFOptions(steps=5, tau=tau, reset=reset))
    x = torch.linspace(-2.0, 6.0, 40001)[:, None]
    with torch.no_grad():
        fast = lif(x)
    slow = lif(x.clone().requires_grad_(True)).detach()
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
def test_lif_surrogate_gradient_is_nonzero(surrogate):
    lif = MultiStepLIF(4, LIFOptions(surrogate=surrogate))
    x = torch.tensor([[0.3, 0.9, 1.3, 2.5]], requires_grad=True)
    lif(x).sum().backward()
    # The Heaviside step has zero derivative almost everywhere; the surrogate does not —
    # including for a neuron that never fires (0.3, 0.9).
    assert x.grad is not None and (x.grad.abs() > 0).all()
    assert lif.gain.grad is not None and lif.gain.grad[2:].abs().min() > 0


def test_lif_options_refuse_unknown_choices():
    with pytest.raises(ValueError, match="surrogate"):
        LIFOptions(surrogate="relu")
    with pytest.raises(ValueError, match="reset"):
        LIFOptions(reset="none")


# -- gradients through both branches ---------------------------------------------------------


def test_gradients_reach_both_attention_branches_and_the_gate():
    model = make(gcl_weight=0.0).train()  # classification loss only: no GCL shortcut
    batch = labelled(dialogues(1))
    F.cross_entropy(model(batch).logits, batch.labels).backward()
    h = model.config.hidden
    for block in model.blocks:
        qkv = block.qkv.weight.grad
        assert qkv[: 3 * h].abs().sum() > 0, "global attention q/k/v get no gradient"
        assert qkv[3 * h :].abs().sum() > 0, "window attention q/k/v get no gradient"
        # The branch outputs reach the loss only through the spiking neurons: a non-zero
        # gradient here is the surrogate gradient at work inside the model.
        assert block.out_glob.weight.grad.abs().sum() > 0
        assert block.out_loc.weight.grad.abs().sum() > 0
        assert block.rel_bias.grad.abs().sum() > 0
        assert block.gate.weight.grad.abs().sum() > 0
        assert (block.lif.gain.grad.abs().sum(-1) > 0).all(), "a branch's LIF gain is idle"
    assert model.graph.convs[0].weight.grad.abs().sum() > 0


# -- graph contrastive learning --------------------------------------------------------------


def test_aux_gcl_loss_only_in_training():
    model = make()
    batch = labelled(dialogues(2))
    out = model.train()(batch)
    assert set(out.aux_losses) == {"gcl"}
    loss = out.aux_losses["gcl"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0 and loss.requires_grad
    with torch.no_grad():
        assert model.eval()(batch).aux_losses == {}
        assert make(gcl_weight=0.0).train()(batch).aux_losses == {}


def test_gcl_loss_is_weighted_by_lambda():
    batch = labelled(dialogues(3))
    losses = []
    for weight in (0.2, 0.4):
        model = make(seed=1, gcl_weight=weight, dropout=0.0).train()
        torch.manual_seed(5)  # same augmentation draws
        losses.append(model(batch).aux_losses["gcl"].item())
    assert losses[1] == pytest.approx(2 * losses[0], rel=1e-5)


@pytest.mark.parametrize(
    ("global_importance", "local_importance"),
    [("pagerank", "similarity"), ("attention", "similarity")],
)
def test_importance_variants_train(global_importance, local_importance):
    model = make(global_importance=global_importance, local_importance=local_importance).train()
    batch = labelled(dialogues(4))
    out = model(batch)
    (F.cross_entropy(out.logits, batch.labels) + out.aux_losses["gcl"]).backward()
    assert torch.isfinite(out.aux_losses["gcl"])
    assert model.projection.net[0].weight.grad.abs().sum() > 0


def test_model_importance_is_normalised_per_dialogue():
    model = make().train()
    batch = labelled(dialogues(5))
    x = model.fusion.from_batch(batch).fused
    dense, valid = batch.dense(x)
    for block in model.blocks:
        dense, received = block(dense, valid, True, need_importance=True)
    graph = build_graph(batch.speaker, batch.position, model.config.graph_past)
    s = model._importance(batch, x, graph.edge_index, received)
    assert s.shape == (batch.num_utterances,) and not s.requires_grad
    for d in range(batch.num_dialogues):
        part = s[batch.dialogue == d]
        assert part.min() >= 0 and part.max() <= 1 and part.max() > part.min()


def test_received_attention_is_the_mean_mass_from_the_queries_that_see_a_node():
    block = DualAttentionBlock(8, heads=2, window=1, horizon=100)
    with torch.no_grad():
        block.qkv.weight.zero_()
        block.qkv.bias.zero_()  # all scores 0: uniform attention over the allowed keys
    x, valid = torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool)
    _, received = block(x, valid, causal=True, need_importance=True)
    # Global, causal: query i spreads 1/(i+1) over keys 0…i; key j is seen by queries j…4.
    expected = [sum(1 / (i + 1) for i in range(j, 5)) / (5 - j) for j in range(5)]
    assert torch.allclose(received.glob[0], torch.tensor(expected))
    # Window 1, causal: query 0 gives all to itself, later queries 1/2 to themselves and 1/2 to
    # their predecessor.
    assert torch.allclose(received.loc[0], torch.tensor([0.75, 0.5, 0.5, 0.5, 0.5]))


def _chain(n: int = 40, dialogues_: int = 2):
    speaker = torch.arange(n * dialogues_) % 3
    position = torch.arange(n).repeat(dialogues_)
    dialogue = torch.arange(dialogues_).repeat_interleave(n)
    return build_graph(speaker, position, past=10), dialogue


def test_drop_probability_follows_gca():
    s = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 0.0, 1.0])
    dialogue = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    p = gcl.drop_probability(s, dialogue, p_mean=0.3, p_max=0.7)
    # dialogue 0: s_max = 1, s_mean = 0.5 → p = 0.3 · (1 − s) / 0.5, capped at 0.7
    expected = torch.tensor([0.6, 0.54, 0.3, 0.06, 0.0, 0.6, 0.0])
    assert torch.allclose(p, expected, atol=1e-6)
    p = gcl.drop_probability(
        torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.zeros(4, dtype=torch.long), 0.3, 0.7
    )
    assert p[0] == pytest.approx(0.7)  # capped


def test_augmentation_keeps_important_nodes_and_edges_more_often():
    graph, dialogue = _chain()
    n = graph.num_nodes
    importance = torch.rand(n, generator=torch.Generator().manual_seed(0))
    x = torch.ones(n, 16)
    generator = torch.Generator().manual_seed(1)
    draws = 400
    edge_kept = torch.zeros(graph.edge_type.shape[0])
    feat_kept = torch.zeros(n)
    key = graph.edge_index[0] * n + graph.edge_index[1]
    for _ in range(draws):
        xa, ei, et = gcl.augment(
            x, graph.edge_index, graph.edge_type, importance, dialogue, gcl.AugmentOptions(),
            generator,
        )  # fmt: skip
        edge_kept += torch.isin(key, ei[0] * n + ei[1]).float()
        feat_kept += xa.mean(1)
        assert (et == SELF).sum() == n  # self loops are never dropped
    edge_rate, feat_rate = edge_kept / draws, feat_kept / draws
    src_s = importance[graph.edge_index[0]]
    not_self = graph.edge_type != SELF
    hi, lo = src_s >= src_s.quantile(0.75), src_s <= src_s.quantile(0.25)
    assert edge_rate[hi & not_self].mean() > edge_rate[lo & not_self].mean() + 0.25
    node_hi, node_lo = (
        importance >= importance.quantile(0.75),
        importance <= importance.quantile(0.25),
    )
    assert feat_rate[node_hi].mean() > feat_rate[node_lo].mean() + 0.25
    # Frequencies match the GCA probabilities, and the ranking is monotone in importance.
    p_edge = gcl.drop_probability(importance, dialogue, 0.3, 0.7)
    assert (edge_rate[not_self] - (1 - p_edge[graph.edge_index[0]][not_self])).abs().max() < 0.1
    rho = np.corrcoef(importance.numpy(), feat_rate.numpy())[0, 1]
    assert rho > 0.9


def test_info_nce_prefers_aligned_views():
    torch.manual_seed(0)
    z = torch.randn(50, 16)
    aligned = gcl.info_nce(z, z + 0.01 * torch.randn_like(z))
    unrelated = gcl.info_nce(z, torch.randn(50, 16))
    assert aligned < unrelated


def test_pagerank_ranks_much_used_context_higher():
    # Utterance 0 is everyone's context; 5 is nobody's.
    src = torch.tensor([0, 0, 0, 0, 1, 2])
    dst = torch.tensor([1, 2, 3, 4, 5, 5])
    rank = gcl.pagerank(torch.stack([src, dst]), 6)
    assert rank.sum() == pytest.approx(1.0, abs=1e-5)
    assert rank[0] == rank.max() and rank[5] == rank.min()


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"lif_reset": "soft", "lif_surrogate": "sigmoid", "graph_bases": 2},
        {"fusion": "concat", "layers": 1, "window": 2, "horizon": 5, "graph_past": 3},
    ],
)
def test_streaming_equivalence_with_other_hyperparameters(overrides):
    model = make(**overrides).eval()
    dialogs = dialogues(6, lengths=(31,))
    with torch.no_grad():
        full = model(DialogueBatch.from_dialogues(dialogs, DIMS)).logits
    state, rows = model.init_state(), []
    for u in dialogs[0]:
        logits, state = model.step(state, u)
        rows.append(logits)
    assert (torch.stack(rows) - full).abs().max().item() <= 1e-4


def test_streaming_caches_stay_bounded():
    model = make(horizon=8, graph_past=3).eval()
    (dialog,) = dialogues(7, lengths=(40,))
    state = model.init_state()
    for u in dialog:
        _, state = model.step(state, u)
    assert state.length == 40
    assert all(len(ring) == 8 for ring in state.attention)
    assert all(len(ring) == 3 for ring in state.graph_inputs)


def test_config_is_checked():
    with pytest.raises(ValueError, match="global_importance"):
        BigFusionConfig(global_importance="degree")
    with pytest.raises(ValueError, match="horizon"):
        make(horizon=3, window=4)


@pytest.mark.parametrize("horizon", [256, 6])
def test_step_many_equals_step_per_conversation(horizon):
    """The engine's micro-batch: concurrent conversations of different lengths (past the
    horizon too) stepped together give each conversation's own step logits."""
    model = make(horizon=horizon, graph_past=4).eval()
    assert model.batched_step
    dialogs = dialogues(8, lengths=(25, 12, 18))
    single = [model.init_state() for _ in dialogs]
    batched = [model.init_state() for _ in dialogs]
    for t in range(25):
        live = [k for k, d in enumerate(dialogs) if t < len(d)]
        expected = torch.stack([model.step(single[k], dialogs[k][t])[0] for k in live])
        logits, states = model.step_many([batched[k] for k in live], [dialogs[k][t] for k in live])
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max().item() <= 1e-4
        assert all(s.length == t + 1 for s in states)
