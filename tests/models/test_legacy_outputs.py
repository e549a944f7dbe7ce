"""The torch-geometric graph layers compute what the hand-written ones they replaced computed.

``data/legacy_graph_outputs.pt`` was recorded with the previous code (its relational graph
convolution, graph ODE aggregation, speaker graph branch and dense cross-modal graph attention)
before that code was removed: each layer's weights, inputs and outputs on one batched
conversation graph; every registered model's weights and its causal, bidirectional and
streamed logits (small hyperparameters); and the causal and streamed logits of every committed
ERC checkpoint on synthetic dialogues. The new layers load the same weights (the state-dict keys
did not change) and must give the same numbers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from realtime_erc.conversation.graph import NUM_RELATIONS
from realtime_erc.models.base import DialogueBatch, FeatureDims
from realtime_erc.models.checkpoint import load_checkpoint
from realtime_erc.models.layers.cross_modal_graph import CrossModalGraphLayer, cross_modal_graph
from realtime_erc.models.layers.graph_ode import GraphODE
from realtime_erc.models.layers.speaker_graph import SpeakerGraphBranch
from realtime_erc.models.presets import ASSETS_DIR
from realtime_erc.models.registry import MODELS, model_class
from realtime_erc.models.synthetic import random_dialogue

FIXTURE = torch.load(Path(__file__).parent / "data" / "legacy_graph_outputs.pt", weights_only=True)
DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)
LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
ATOL = 1e-5


def outputs(model, dims: FeatureDims, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    dialogs = [random_dialogue(rng, dims, n, 3, 0.3) for n in (14, 11)]
    batch = DialogueBatch.from_dialogues(dialogs, dims)
    with torch.no_grad():
        out = {c: model(batch, causal=c == "causal").logits for c in ("causal", "bidirectional")}
    steps = []
    for d in dialogs:
        state = model.init_state()
        for u in d:
            logits, state = model.step(state, u)
            steps.append(logits)
    out["stepped"] = torch.stack(steps)
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("bases", [0, 2])
def test_rgcn_conv_equals_the_old_relational_convolution(bases):
    from torch_geometric.nn import RGCNConv

    g = FIXTURE["graph"]
    conv = RGCNConv(16, 12, NUM_RELATIONS, bases or None, aggr="mean", root_weight=False)
    conv.load_state_dict(g[f"rgcn_bases{bases}"]["state_dict"])
    with torch.no_grad():
        out = conv(g["x"], g["edge_index"], g["edge_type"])
    assert max_diff(out, g[f"rgcn_bases{bases}"]["out"]) <= ATOL


@pytest.mark.parametrize("form", ["sigmoid", "cgnn"])
def test_graph_ode_equals_the_old_one(form):
    g = FIXTURE["graph"]
    ode = GraphODE(16, NUM_RELATIONS, form)
    ode.load_state_dict(g[f"ode_{form}"]["state_dict"])
    with torch.no_grad():
        out = ode(g["x"], g["edge_index"], g["edge_type"], NUM_RELATIONS)
    assert max_diff(out, g[f"ode_{form}"]["out"]) <= ATOL


def test_speaker_graph_branch_equals_the_old_one():
    g = FIXTURE["graph"]
    branch = SpeakerGraphBranch(16, 2, 3, None, 0.0)
    branch.load_state_dict(g["speaker_graph"]["state_dict"])
    with torch.no_grad():
        out = branch(g["x"], g["edge_index"], g["edge_type"])
    assert max_diff(out, g["speaker_graph"]["out"]) <= ATOL


@pytest.mark.parametrize("causal", [True, False])
def test_cross_modal_layer_equals_the_old_dense_one(causal):
    f = FIXTURE["graph"]["cross_modal"]
    layer = CrossModalGraphLayer(16, 2, 3)
    layer.load_state_dict(f["state_dict"])
    lengths = (7, 6)  # the old dense batch: [2, 7, 3, H], the second dialogue padded

    def flat(t):
        return torch.cat([t[b, :n] for b, n in enumerate(lengths)])

    dialogue = torch.repeat_interleave(torch.arange(2), torch.tensor(lengths))
    position = torch.cat([torch.arange(n) for n in lengths])
    graph = cross_modal_graph(
        flat(f["speaker"]), dialogue, position, flat(f["node_mask"]), 3, causal
    )
    with torch.no_grad():
        out = layer(flat(f["x"]).reshape(-1, 16), graph.edge_index, graph.kind, graph.present)
    expected = flat(f["causal" if causal else "bidirectional"])
    assert max_diff(out.view(-1, 3, 16), expected) <= ATOL


@pytest.mark.parametrize("name", list(MODELS))
def test_models_give_the_old_logits(name):
    f = FIXTURE["models"][name]
    cls = model_class(name)
    model = cls(DIMS, LABELS, "test7", replace(cls.Config(), **f["config"])).eval()
    model.load_state_dict(f["state_dict"])
    out = outputs(model, DIMS, 11)
    for key in ("causal", "bidirectional", "stepped"):
        assert max_diff(out[key], f[key]) <= ATOL, key


@pytest.mark.parametrize("checkpoint", sorted(FIXTURE["checkpoints"]))
def test_committed_checkpoints_give_the_old_logits(checkpoint):
    """Same weights (and content hash), same logits: the stored scores still hold."""
    f = FIXTURE["checkpoints"][checkpoint]
    model = load_checkpoint(ASSETS_DIR / checkpoint)
    out = outputs(model, model.dims, 12)
    assert max_diff(out["causal"], f["causal"]) <= ATOL
    assert max_diff(out["stepped"], f["stepped"]) <= ATOL
