"""The contract every registered model keeps (MODELS.md), run for every name in the registry:
streaming equivalence, bidirectional mode, gradients, overfitting, checkpoints, feature dims,
any number of speakers, the config file, and the CUDA path."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, fields, replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from realtime_erc.events import ModalityFeatures
from realtime_erc.models.base import DialogueBatch, ERCModel, FeatureDimError, FeatureDims
from realtime_erc.models.checkpoint import load_checkpoint, save_checkpoint
from realtime_erc.models.options import MODEL_CONFIG_DIR
from realtime_erc.models.registry import MODELS, model_class
from realtime_erc.models.synthetic import random_dialogue

DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)
LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
CONTEXT_FREE = {"utterance-mlp"}  # no context: bidirectional output equals causal output


def _cls(name: str) -> type[ERCModel]:
    return model_class(name)


def make_model(name: str, seed: int = 0, **overrides) -> ERCModel:
    cls = _cls(name)
    torch.manual_seed(seed)
    return cls(DIMS, LABELS, "test7", replace(cls.Config(), **overrides))


def dialogues(seed: int, lengths=(32, 30), speakers: int = 3, p_missing: float = 0.3):
    rng = np.random.default_rng(seed)
    return [random_dialogue(rng, DIMS, n, speakers, p_missing) for n in lengths]


def stepped(model: ERCModel, dialogs) -> torch.Tensor:
    """Logits ``[N, C]`` from feeding each dialogue through ``step`` one utterance at a time."""
    out = []
    for d in dialogs:
        state = model.init_state()
        for u in d:
            logits, state = model.step(state, u)
            out.append(logits)
    return torch.stack(out)


def forward_logits(model: ERCModel, dialogs, causal: bool = True) -> torch.Tensor:
    with torch.no_grad():
        return model(DialogueBatch.from_dialogues(dialogs, DIMS), causal=causal).logits


names = pytest.mark.parametrize("name", list(MODELS))


@names
def test_streaming_equals_causal_forward(name):
    model = make_model(name).eval()
    dialogs = dialogues(1)
    full = forward_logits(model, dialogs)
    steps = stepped(model, dialogs)
    assert full.shape == steps.shape == (62, len(LABELS))
    assert torch.isfinite(full).all()
    assert (steps - full).abs().max().item() <= 1e-4


@names
def test_streaming_equivalence_beyond_the_horizon(name):
    """With a short horizon the cached context must drop exactly what forward masks out."""
    cls = _cls(name)
    small = {f.name: 6 for f in fields(cls.Config()) if f.name == "horizon"}
    if not small:
        pytest.skip(f"{name} has no horizon hyperparameter")
    model = make_model(name, **small).eval()
    dialogs = dialogues(2, lengths=(30,))
    assert (stepped(model, dialogs) - forward_logits(model, dialogs)).abs().max().item() <= 1e-4


@names
def test_bidirectional_forward_runs_and_differs(name):
    model = make_model(name).eval()
    dialogs = dialogues(3)
    causal = forward_logits(model, dialogs, causal=True)
    bidir = forward_logits(model, dialogs, causal=False)
    assert bidir.shape == causal.shape and torch.isfinite(bidir).all()
    diff = (bidir - causal).abs().max().item()
    if name in CONTEXT_FREE:
        assert diff == 0.0
    else:
        assert diff > 1e-5
        # The first utterance sees no past: only the future can make it differ.
        assert (bidir[0] - causal[0]).abs().max().item() > 1e-6


def _labelled_batch(dialogs, seed: int) -> DialogueBatch:
    rng = np.random.default_rng(seed)
    labels = [rng.integers(len(LABELS), size=len(d)).tolist() for d in dialogs]
    return DialogueBatch.from_dialogues(dialogs, DIMS, labels=labels)


@names
def test_gradients_reach_every_parameter(name):
    model = make_model(name).train()
    batch = _labelled_batch(dialogues(4, lengths=(24, 20)), seed=4)
    loss = torch.zeros(())
    for causal in (True, False):
        out = model(batch, causal=causal)
        loss = loss + F.cross_entropy(out.logits, batch.labels)
        loss = loss + sum(out.aux_losses.values(), torch.zeros(()))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is not None and not p.grad.abs().sum() > 0
    ]
    assert not missing, f"no gradient reaches {missing}"
    assert not zero, f"zero gradient for {zero}"


@pytest.mark.slow
@names
def test_overfits_a_tiny_batch(name):
    model = make_model(name)
    batch = _labelled_batch(dialogues(5, lengths=(8, 8)), seed=5)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(batch).logits, batch.labels).item()

    start = best = eval_loss()
    for i in range(300):
        model.train()
        out = model(batch)
        loss = F.cross_entropy(out.logits, batch.labels)
        loss = loss + sum(out.aux_losses.values(), torch.zeros(()))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if i % 20 == 19:
            best = min(best, eval_loss())
            if best <= 0.1 * start:
                break
    assert best <= 0.1 * start, f"loss fell from {start:.3f} only to {best:.3f}"


@names
def test_checkpoint_round_trip(name, tmp_path):
    model = make_model(name, seed=7).eval()
    dialogs = dialogues(6, lengths=(12,))
    info = save_checkpoint(model, tmp_path / "m.pt", metrics={"wf1": 0.5}, provenance={"x": 1})
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert not loaded.training
    assert type(loaded) is type(model) and loaded.labels == LABELS
    assert loaded.checkpoint_info.content_hash == info.content_hash
    assert loaded.checkpoint_info.model_id == f"{name}/test7@{info.content_hash[:8]}"
    assert loaded.checkpoint_info.metrics == {"wf1": 0.5}
    assert asdict(loaded.config) == asdict(model.config) and loaded.dims == DIMS
    assert torch.equal(forward_logits(loaded, dialogs), forward_logits(model, dialogs))
    assert torch.equal(stepped(loaded, dialogs), stepped(model, dialogs))


@names
@pytest.mark.parametrize("modality", ["text", "audio", "visual"])
def test_wrong_feature_dims_refused(name, modality):
    model = make_model(name).eval()
    utt = dialogues(8, lengths=(3,))[0][1]
    wrong = ModalityFeatures(np.zeros(DIMS.pooled(modality) + 3, np.float32))
    bad = type(utt)(utt.utterance_id, utt.speaker, utt.start, utt.end,
                    **{m: (wrong if m == modality else utt.modality(m))
                       for m in ("text", "audio", "visual")})  # fmt: skip
    state = model.init_state()
    with pytest.raises(FeatureDimError, match=modality):
        model.step(state, bad)
    with pytest.raises(FeatureDimError, match=modality):
        DialogueBatch.from_dialogues([[bad]], DIMS)
    seq_dim = DIMS.seq(modality)
    wrong_seq = ModalityFeatures(
        np.zeros(DIMS.pooled(modality), np.float32), np.zeros((4, seq_dim + 1), np.float32)
    )
    bad_seq = type(utt)(utt.utterance_id, utt.speaker, utt.start, utt.end,
                        **{m: (wrong_seq if m == modality else utt.modality(m))
                           for m in ("text", "audio", "visual")})  # fmt: skip
    with pytest.raises(FeatureDimError, match=f"{modality} sequence"):
        model.step(model.init_state(), bad_seq)


@names
def test_seven_speakers(name):
    model = make_model(name).eval()
    dialogs = dialogues(9, lengths=(30,), speakers=7)
    assert len({u.speaker for u in dialogs[0]}) >= 6
    full = forward_logits(model, dialogs)
    assert torch.isfinite(full).all()
    assert (stepped(model, dialogs) - full).abs().max().item() <= 1e-4


@names
def test_config_file_mirrors_the_defaults(name):
    cls = _cls(name)
    path = MODEL_CONFIG_DIR / f"{name}.toml"
    assert path.is_file(), f"configs/models/{name}.toml is missing"
    with path.open("rb") as f:
        assert tomllib.load(f) == asdict(cls.Config())


@pytest.mark.gpu
@names
def test_cuda_path(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    model = make_model(name).eval()
    dialogs = dialogues(10, lengths=(30,))
    cpu = forward_logits(model, dialogs)
    model = model.to("cuda")
    assert model.device.type == "cuda"
    with torch.no_grad():
        gpu_batch = model(DialogueBatch.from_dialogues(dialogs, DIMS).to("cuda")).logits
    steps = stepped(model, dialogs)
    assert steps.device.type == "cuda"
    assert (steps - gpu_batch).abs().max().item() <= 1e-3
    assert (gpu_batch.cpu() - cpu).abs().max().item() <= 1e-3
