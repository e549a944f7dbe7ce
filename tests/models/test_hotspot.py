"""Emotion-Hotspots specifics (the generic contract — streaming equivalence, gradients to every
parameter, overfitting, checkpoints, feature dims — is tests/models/test_contract.py): hotspot
top-k, graceful T = 1, the routed experts and their load-balancing loss, masking of absent
modalities, aux losses only in training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from realtime_erc.events import ModalityFeatures
from realtime_erc.models.base import DialogueBatch, FeatureDims
from realtime_erc.models.hotspot import EmotionHotspots, HotspotConfig
from realtime_erc.models.layers.hotspot_detector import HotspotDetector
from realtime_erc.models.layers.mixture_of_aligners import load_balancing_loss
from realtime_erc.models.synthetic import random_dialogue

DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)
LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear")


def make(seed: int = 0, dims: FeatureDims = DIMS, **overrides) -> EmotionHotspots:
    torch.manual_seed(seed)
    return EmotionHotspots(dims, LABELS, "test6", replace(HotspotConfig(), **overrides))


def dialogues(seed: int, lengths=(30, 24), dims: FeatureDims = DIMS, p_missing: float = 0.3):
    rng = np.random.default_rng(seed)
    return [random_dialogue(rng, dims, n, 3, p_missing, max_seq=16) for n in lengths]


def labelled(dialogs, seed: int = 0, dims: FeatureDims = DIMS) -> DialogueBatch:
    rng = np.random.default_rng(seed)
    labels = [rng.integers(len(LABELS), size=len(d)).tolist() for d in dialogs]
    return DialogueBatch.from_dialogues(dialogs, dims, labels=labels)


def stepped(model, dialogs) -> torch.Tensor:
    out = []
    for d in dialogs:
        state = model.init_state()
        for u in d:
            logits, state = model.step(state, u)
            out.append(logits)
    return torch.stack(out)


def forward(model, dialogs, dims: FeatureDims = DIMS) -> torch.Tensor:
    with torch.no_grad():
        return model(DialogueBatch.from_dialogues(dialogs, dims)).logits


# -- hotspot detector --------------------------------------------------------------------------


@pytest.mark.parametrize("selection", ["straight_through", "sparsemax"])
def test_top_k_selects_a_quarter_of_the_valid_steps(selection):
    torch.manual_seed(0)
    det = HotspotDetector(8, modalities=2, selection=selection)
    lengths = torch.tensor([[1, 3], [4, 7], [8, 12], [16, 5]])  # [N, M]
    t = 16
    valid = torch.arange(t)[None, None, :] < lengths[..., None]  # [N, M, T]
    steps = torch.randn(4, 2, t, 8)
    spots = det(steps, valid)
    expected = torch.clamp(torch.div(lengths, 4, rounding_mode="floor"), min=1)
    assert torch.equal(spots.k, expected)
    assert torch.equal(spots.selected.sum(-1), expected)
    assert not (spots.selected & ~valid).any()
    # The selected steps are the highest-scoring valid ones: recompute the scores.
    with torch.no_grad():
        scores = det.scores(det.local_context(steps * valid.unsqueeze(-1)))
    scores = scores.masked_fill(~valid, -1e9)
    for n in range(4):
        for m in range(2):
            top = scores[n, m].topk(int(expected[n, m])).indices
            assert spots.selected[n, m, top].all()
    weights = spots.weights.detach()
    assert torch.allclose(weights.sum(-1), torch.ones(4, 2), atol=1e-5)
    assert (weights[~spots.selected].abs() < 1e-6).all()
    if selection == "straight_through":
        hard = spots.selected / expected[..., None]
        assert torch.allclose(weights, hard, atol=1e-6)


def test_local_context_is_a_one_dimensional_convolution():
    torch.manual_seed(0)
    det = HotspotDetector(4, modalities=2, kernel=3)
    x = torch.randn(3, 2, 7, 4)
    expected = torch.stack(
        [
            F.conv1d(
                x[:, m].transpose(1, 2),
                det.conv_weight[m].permute(2, 0, 1),  # [H_out, H_in, k]
                det.conv_bias[m],
                padding=1,
            ).transpose(1, 2)
            for m in range(2)
        ],
        1,
    )
    assert torch.allclose(det.local_context(x), F.gelu(expected), atol=1e-5)


def test_straight_through_selection_trains_the_scorer():
    torch.manual_seed(0)
    det = HotspotDetector(8, modalities=3)
    valid = torch.ones(5, 3, 12, dtype=torch.bool)
    det(torch.randn(5, 3, 12, 8), valid).vector.pow(2).sum().backward()
    assert det.score_weight.grad.abs().sum() > 0 and det.score_bias.grad.abs().sum() > 0


def test_rows_without_valid_steps_give_zero_vectors():
    det = HotspotDetector(8, modalities=1)
    valid = torch.zeros(2, 1, 5, dtype=torch.bool)
    spots = det(torch.randn(2, 1, 5, 8), valid)
    assert torch.equal(spots.vector, torch.zeros(2, 1, 8))
    assert torch.equal(spots.context, torch.zeros(2, 1, 8))


# -- graceful T = 1 ------------------------------------------------------------------------------


def test_pooled_only_features_degrade_to_utterance_level():
    dims = FeatureDims(text=32, audio=16, visual=16, text_seq=None, audio_seq=None, visual_seq=None)
    model = make(dims=dims).eval()
    dialogs = dialogues(3, lengths=(30,), dims=dims)
    batch = DialogueBatch.from_dialogues(dialogs, dims)
    with torch.no_grad():
        utt = model._utterances(batch)
    assert utt.hotspots.weights.shape[-1] == 1  # T = 1
    assert torch.equal(utt.hotspots.k, torch.ones_like(utt.hotspots.k))
    assert torch.equal(utt.present, batch.present)
    full = forward(model, dialogs, dims)
    assert torch.isfinite(full).all()
    assert (stepped(model, dialogs) - full).abs().max().item() <= 1e-4


def test_utterance_without_a_sequence_uses_its_pooled_vector():
    """Audio sequence dim (8) ≠ pooled dim (16): an utterance with only a pooled audio vector
    still counts as having audio (one step)."""
    model = make().eval()
    utt = dialogues(4, lengths=(1,), p_missing=0.0)[0][0]
    pooled_only = replace_modality(utt, "audio", ModalityFeatures(utt.audio.pooled))
    batch = DialogueBatch.from_dialogues([[pooled_only]], DIMS)
    with torch.no_grad():
        out = model._utterances(batch)
    assert out.present[0].tolist() == [True, True, True]
    assert int(out.hotspots.k[0, 1]) == 1
    logits, _ = model.step(model.init_state(), pooled_only)
    assert torch.isfinite(logits).all()


def replace_modality(utt, name: str, feats: ModalityFeatures):
    mods = {m: (feats if m == name else utt.modality(m)) for m in ("text", "audio", "visual")}
    return type(utt)(utt.utterance_id, utt.speaker, utt.start, utt.end, **mods)


def test_absent_modalities_are_ignored():
    """Whatever an absent modality's vectors hold, the logits do not change."""
    model = make().eval()
    dialog = dialogues(5, lengths=(20,), p_missing=0.4)[0]
    rng = np.random.default_rng(0)
    noisy = []
    for u in dialog:
        for m in ("audio", "visual"):
            f = u.modality(m)
            if not f.present:
                junk = ModalityFeatures(
                    rng.standard_normal(f.pooled.shape).astype(np.float32),
                    rng.standard_normal((5, DIMS.seq(m))).astype(np.float32),
                    present=False,
                )
                u = replace_modality(u, m, junk)
        noisy.append(u)
    assert any(not u.visual.present for u in dialog)
    assert torch.allclose(forward(model, [dialog]), forward(model, [noisy]), atol=1e-6)


# -- mixture of aligners -----------------------------------------------------------------------


def test_load_balancing_loss_is_lower_for_balanced_routing():
    n, e = 40, 4
    balanced_probs = torch.full((n, e), 1.0 / e)
    balanced_routes = torch.zeros(n, e)
    for i in range(n):  # every pair of experts equally often
        balanced_routes[i, [i % e, (i + 1) % e]] = 0.5
    collapsed_probs = torch.tensor([[0.45, 0.45, 0.05, 0.05]]).expand(n, e)
    collapsed_routes = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).expand(n, e)
    balanced = load_balancing_loss(balanced_probs, balanced_routes)
    collapsed = load_balancing_loss(collapsed_probs, collapsed_routes)
    assert balanced.item() == pytest.approx(1.0)
    assert collapsed.item() == pytest.approx(4 * 0.45)
    assert balanced < collapsed


def test_model_load_balance_loss_rises_when_the_router_collapses():
    dialogs = dialogues(6)
    batch = labelled(dialogs)
    model = make(dropout=0.0).train()
    spread = model(batch).aux_losses["load_balance"]
    with torch.no_grad():
        model.aligners.router.weight.zero_()
        model.aligners.router.bias.copy_(torch.tensor([5.0, 5.0, -5.0, -5.0]))
    collapsed = model(batch).aux_losses["load_balance"]
    assert collapsed > spread
    assert collapsed.item() == pytest.approx(HotspotConfig().load_balance_weight * 2, rel=1e-3)


def test_gradients_reach_every_routed_expert_and_no_other():
    model = make(dropout=0.0).train()
    with torch.no_grad():
        model.aligners.router.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -50.0]))  # 3 never routed
    batch = labelled(dialogues(7))
    out = model(batch)
    routed = (model._utterances(batch).alignment.routes > 0).any(0)
    assert routed.tolist() == [True, True, True, False]
    (F.cross_entropy(out.logits, batch.labels) + out.aux_losses["load_balance"]).backward()
    grads = model.aligners.out.grad.abs().flatten(1).sum(-1)  # [E]
    assert (grads[:3] > 0).all() and grads[3] == 0
    assert model.aligners.router.weight.grad.abs().sum() > 0


def test_aux_losses_only_in_training():
    model = make()
    batch = labelled(dialogues(8))
    assert model.eval()(batch).aux_losses == {}
    aux = model.train()(batch).aux_losses
    assert set(aux) == {"load_balance"} and torch.isfinite(aux["load_balance"])


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"selection": "sparsemax"},
        {"horizon": 4, "graph_window": 2, "graph_layers": 3},
        {"pooled_in_global": False, "top_k_experts": 1},
    ],
)
def test_streaming_equals_causal_forward_for_variants(overrides):
    model = make(**overrides).eval()
    dialogs = dialogues(9, lengths=(31,))
    full = forward(model, dialogs)
    assert (stepped(model, dialogs) - full).abs().max().item() <= 1e-4


def test_causal_forward_ignores_the_future():
    model = make().eval()
    dialog = dialogues(10, lengths=(20,))[0]
    other = dialog[:12] + dialogues(11, lengths=(8,))[0]
    a, b = forward(model, [dialog]), forward(model, [other])
    assert torch.allclose(a[:12], b[:12], atol=1e-6)
    assert not torch.allclose(a[12:], b[12:], atol=1e-3)


def edge_case_dialogue(seed: int = 12) -> list:
    """Utterances that take the streaming path's special cases: gaps and invalid ends in the
    step masks, no sequence (text: the pooled vector stands in; audio: it cannot), an empty
    sequence, only one modality present, none present."""
    rng = np.random.default_rng(seed)
    base = dialogues(seed, lengths=(24,), p_missing=0.0)[0]

    def seq(name: str, t: int) -> np.ndarray:
        return rng.standard_normal((t, DIMS.seq(name))).astype(np.float32)

    def absent(name: str) -> ModalityFeatures:
        return ModalityFeatures.absent(DIMS.pooled(name), DIMS.seq(name))

    out = []
    for i, u in enumerate(base):
        kind = i % 8
        if kind == 1:  # gaps and invalid steps at both ends
            mask = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0], bool)
            u = replace_modality(u, "text", ModalityFeatures(u.text.pooled, seq("text", 9), mask))
        elif kind == 2:  # no sequence: text pooled stands in (same size), audio cannot
            u = replace_modality(u, "text", ModalityFeatures(u.text.pooled))
            u = replace_modality(u, "audio", ModalityFeatures(u.audio.pooled))
        elif kind == 3:  # empty sequence and an all-invalid mask
            empty = np.zeros((0, DIMS.seq("visual")), np.float32)
            u = replace_modality(u, "visual", ModalityFeatures(u.visual.pooled, empty))
            mask = np.zeros(4, bool)
            u = replace_modality(
                u, "audio", ModalityFeatures(u.audio.pooled, seq("audio", 4), mask)
            )
        elif kind == 4:  # only audio
            u = replace_modality(u, "text", absent("text"))
            u = replace_modality(u, "visual", absent("visual"))
        elif kind == 5:  # nothing present
            for name in ("text", "audio", "visual"):
                u = replace_modality(u, name, absent(name))
        elif kind == 6:  # long sequences: k > 1 hotspots
            for name in ("text", "audio", "visual"):
                feats = u.modality(name)
                u = replace_modality(u, name, ModalityFeatures(feats.pooled, seq(name, 13)))
        out.append(u)
    return out


@pytest.mark.parametrize("selection", ["straight_through", "sparsemax"])
def test_streaming_equals_causal_forward_on_edge_cases(selection):
    model = make(selection=selection, horizon=5, graph_window=3).eval()
    dialog = edge_case_dialogue()
    full = forward(model, [dialog])
    assert torch.isfinite(full).all()
    assert (stepped(model, [dialog]) - full).abs().max().item() <= 1e-4
