"""DF-GCN specifics (the generic contract — streaming equivalence, gradients to every parameter,
overfitting, checkpoints, feature dims — is tests/models/test_contract.py): the GIV path and the
hypernetwork learn and stay causal, fusion parameters differ per utterance, the graph ODE streams
exactly for every solver and form (beyond its window too), the unimodal loss only in training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from realtime_erc.models.base import DialogueBatch, FeatureDims
from realtime_erc.models.dfgcn import DFGCN, DFGCNConfig
from realtime_erc.models.layers.graph_ode import GraphODE
from realtime_erc.models.synthetic import random_dialogue

DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)
LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear")


def make(seed: int = 0, **overrides) -> DFGCN:
    torch.manual_seed(seed)
    return DFGCN(DIMS, LABELS, "test6", replace(DFGCNConfig(), **overrides))


def dialogues(seed: int, lengths=(30, 24), p_missing: float = 0.3):
    rng = np.random.default_rng(seed)
    return [random_dialogue(rng, DIMS, n, 3, p_missing) for n in lengths]


def labelled(dialogs, seed: int = 0) -> DialogueBatch:
    rng = np.random.default_rng(seed)
    labels = [rng.integers(len(LABELS), size=len(d)).tolist() for d in dialogs]
    return DialogueBatch.from_dialogues(dialogs, DIMS, labels=labels)


def stepped(model, dialogs) -> torch.Tensor:
    out = []
    for d in dialogs:
        state = model.init_state()
        for u in d:
            logits, state = model.step(state, u)
            out.append(logits)
    return torch.stack(out)


def forward(model, dialogs, causal: bool = True) -> torch.Tensor:
    with torch.no_grad():
        return model(DialogueBatch.from_dialogues(dialogs, DIMS), causal=causal).logits


def test_gradients_reach_the_giv_path_and_the_hypernetwork():
    model = make().train()
    batch = labelled(dialogues(1))
    F.cross_entropy(model(batch).logits, batch.labels).backward()  # fusion CE alone
    giv = [p for n, p in model.named_parameters() if n.startswith("prompt.")]
    hyper = [model.fusion.u.weight, model.fusion.v.weight, model.fusion.modality_logits.weight]
    assert giv and all(p.grad is not None and p.grad.abs().sum() > 0 for p in giv + hyper)


def test_giv_prompt_is_causal_and_sees_the_past():
    """Utterance t's prompt depends on utterances ≤ t (the running mean) and not on later ones."""
    model = make().eval()
    dialog = dialogues(2, lengths=(16,))[0]
    changed_past = dialogues(3, lengths=(4,))[0] + dialog[4:]
    changed_future = dialog[:10] + dialogues(4, lengths=(6,))[0]

    def prompts(d):
        batch = DialogueBatch.from_dialogues([d], DIMS)
        with torch.no_grad():
            _, static = model._encode(batch)
            return model.prompt(torch.cumsum(static, 0) / torch.arange(1, 17)[:, None])

    base = prompts(dialog)
    assert not torch.allclose(prompts(changed_past)[10], base[10], atol=1e-4)
    assert torch.allclose(prompts(changed_future)[:10], base[:10], atol=1e-6)
    a, b = forward(model, [dialog]), forward(model, [changed_future])
    assert torch.allclose(a[:10], b[:10], atol=1e-6)


def test_fusion_parameters_differ_per_utterance():
    model = make().eval()
    batch = DialogueBatch.from_dialogues(dialogues(5, lengths=(20,), p_missing=0.0), DIMS)
    with torch.no_grad():
        per, static = model._encode(batch)
        prompt = model.prompt(static)
        _, weights = model.fusion(per, batch.present, prompt, static)
        c = torch.cat([prompt, static], -1)
        u = model.fusion.u(c)
    assert torch.allclose(weights.sum(-1), torch.ones(20), atol=1e-5)
    assert weights.std(0).min() > 1e-4  # modality weights vary across utterances
    assert (u[1:] - u[:1]).abs().amax(-1).min() > 1e-4  # so does the low-rank update


def test_absent_modalities_get_no_fusion_weight():
    model = make().eval()
    batch = DialogueBatch.from_dialogues(dialogues(6, p_missing=0.5), DIMS)
    with torch.no_grad():
        per, static = model._encode(batch)
        _, weights = model.fusion(per, batch.present, model.prompt(static), static)
    assert (weights[~batch.present] == 0).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {"window": 3},
        {"ode_form": "cgnn", "window": 4},
        {"ode_method": "midpoint", "ode_step": 0.5},
        {"ode_method": "euler", "ode_step": 0.1, "ode_time": 0.5},
    ],
)
def test_streaming_equals_causal_forward_for_every_solver_and_form(overrides):
    model = make(**overrides).eval()
    dialogs = dialogues(7, lengths=(32,))
    full = forward(model, dialogs)
    assert (stepped(model, dialogs) - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("method", "step", "stages"), [("rk4", 0.25, 16), ("midpoint", 0.25, 8), ("euler", 0.5, 2)]
)
def test_solver_evaluation_points_are_finite_and_counted(method, step, stages):
    assert GraphODE(8, 3, method=method, step_size=step).num_stages == stages


def test_graph_ode_step_matches_joint_integration_of_a_chain():
    """Node 2 of a 3-node chain, integrated alone against cached neighbour trajectories."""
    torch.manual_seed(0)
    ode = GraphODE(8, 3)
    h0 = torch.randn(3, 8)
    # edges: self loops (type 0), 0→1 and 1→2 same speaker (1), 0→2 other speaker (2)
    edge_index = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 1, 2, 2]])
    edge_type = torch.tensor([0, 0, 0, 1, 1, 2])
    with torch.no_grad():
        joint = ode(h0, edge_index, edge_type, 3)
        out0, st0 = ode.step(h0[0], torch.zeros(0, 16, 8), torch.tensor([0]))
        out1, st1 = ode.step(h0[1], st0[None], torch.tensor([0, 1]))
        out2, _ = ode.step(h0[2], torch.stack([st1, st0]), torch.tensor([0, 1, 2]))
    assert torch.allclose(torch.stack([out0, out1, out2]), joint, atol=1e-6)


def test_unimodal_loss_only_in_training_with_labels():
    model = make(dropout=0.0)
    batch = labelled(dialogues(8))
    unlabelled = DialogueBatch.from_dialogues(dialogues(8), DIMS)
    assert model.eval()(batch).aux_losses == {}
    model.train()
    assert model(unlabelled).aux_losses == {}
    loss = model(batch).aux_losses["unimodal"]
    assert torch.isfinite(loss) and loss > 0
    doubled = replace(model.config, unimodal_weight=0.2)
    model.config = doubled
    assert model(batch).aux_losses["unimodal"].item() == pytest.approx(2 * loss.item(), rel=1e-5)


def test_bidirectional_mode_sees_the_future():
    model = make().eval()
    dialog = dialogues(9, lengths=(20,))[0]
    other = dialog[:12] + dialogues(10, lengths=(8,))[0]
    a, b = forward(model, [dialog], causal=False), forward(model, [other], causal=False)
    assert not torch.allclose(a[:12], b[:12], atol=1e-4)


def test_bad_solver_settings_are_refused():
    with pytest.raises(ValueError, match="fixed-grid"):
        make(ode_method="dopri5")
    with pytest.raises(ValueError, match="form"):
        make(ode_form="linear")
