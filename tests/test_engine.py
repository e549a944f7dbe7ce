"""The inference engine: predictions, session isolation, micro-batching, checkpoints, devices."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch

from realtime_erc.engine import AsyncEngine, Engine, EngineError, ResumableEngine, pick_device
from realtime_erc.events import ModalityFeatures
from realtime_erc.models.base import FeatureDimError, FeatureDims
from realtime_erc.models.checkpoint import CheckpointError, build_model, save_checkpoint
from realtime_erc.models.synthetic import random_dialogue

DIMS = FeatureDims(text=32, audio=16, visual=16, text_seq=32, audio_seq=8, visual_seq=16)
LABELS = ("neutral", "joy", "sadness", "anger")
BASELINES = ["utterance-mlp", "dialoguegcn", "dialogue-rnn-lite"]


def _engine(name: str = "dialoguegcn", seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    return Engine(build_model(name, DIMS, LABELS, "test4"), device="cpu")


def _dialogue(seed: int, n: int = 12):
    return random_dialogue(np.random.default_rng(seed), DIMS, n, speakers=3)


def test_scores_are_a_softmax_over_the_label_order():
    engine = _engine()
    for utt in _dialogue(0):
        pred = engine.step("s", utt)
        assert list(pred.scores) == list(LABELS)
        assert math.isclose(sum(pred.scores.values()), 1.0, abs_tol=1e-5)
        assert pred.label == max(pred.scores, key=pred.scores.get)
        expected = torch.softmax(torch.tensor(pred.logits), -1).tolist()
        assert np.allclose(list(pred.scores.values()), expected, atol=1e-6)


@pytest.mark.parametrize("name", BASELINES)
def test_sessions_are_isolated(name):
    a, b = _dialogue(1), _dialogue(2)
    alone = _engine(name)
    ref_a = [alone.step("a", u).logits for u in a]
    other = _engine(name)
    ref_b = [other.step("b", u).logits for u in b]
    mixed = _engine(name)
    got_a, got_b = [], []
    for ua, ub in zip(a, b, strict=True):
        got_b.append(mixed.step("b", ub).logits)
        got_a.append(mixed.step("a", ua).logits)
    assert np.allclose(got_a, ref_a, atol=1e-5) and np.allclose(got_b, ref_b, atol=1e-5)
    assert sorted(mixed.sessions) == ["a", "b"]
    mixed.end_session("a")
    assert mixed.sessions == ["b"]
    assert np.allclose(mixed.step("a", a[0]).logits, ref_a[0], atol=1e-5)  # a fresh conversation


@pytest.mark.parametrize("name", BASELINES)
def test_micro_batched_steps_equal_single_steps(name):
    sessions = {f"s{k}": _dialogue(10 + k, n=8) for k in range(5)}
    single = _engine(name)
    expected = {sid: [single.step(sid, u).logits for u in d] for sid, d in sessions.items()}
    batched = _engine(name)
    got: dict[str, list] = {sid: [] for sid in sessions}
    for t in range(8):
        items = [(sid, d[t]) for sid, d in sessions.items()]
        for (sid, _), pred in zip(items, batched.step_many(items), strict=True):
            got[sid].append(pred.logits)
    for sid in sessions:
        assert np.allclose(got[sid], expected[sid], atol=1e-5)


def test_step_many_keeps_the_order_of_one_sessions_utterances():
    d = _dialogue(3, n=6)
    reference = _engine()
    expected = [reference.step("x", u).logits for u in d]
    engine = _engine()
    preds = engine.step_many([("x", u) for u in d[:3]] + [("y", d[0])] + [("x", d[3])])
    assert np.allclose([p.logits for p in preds[:3]] + [preds[4].logits], expected[:4], atol=1e-5)
    assert np.allclose(preds[3].logits, expected[0], atol=1e-5)


@pytest.mark.parametrize("name", BASELINES)
def test_a_resumed_session_goes_on_from_its_last_published_utterance(name):
    d = _dialogue(5, n=6)
    reference = _engine(name)
    expected = [reference.step("s", u).logits for u in d]
    torch.manual_seed(0)
    engine = ResumableEngine(build_model(name, DIMS, LABELS, "test4"), device="cpu")
    assert engine.resume("s") is None  # nothing known: a fresh start
    for u in d[:4]:
        engine.step("s", u)
    engine.commit("s", d[1].utterance_id)  # 2 and 3 were stepped, never published
    progress = engine.resume("s")
    assert (progress.utterance_id, progress.end) == (d[1].utterance_id, d[1].end)
    # stepped again after the rollback, 2..5 score as if the server had never been lost
    again = [engine.step("s", u).logits for u in d[2:]]
    assert np.allclose(again, expected[2:], atol=1e-5)
    engine.commit("s", d[3].utterance_id)
    engine.commit("s", d[2].utterance_id)  # late and out of order: changes nothing
    assert engine.resume("s").utterance_id == d[3].utterance_id


def test_a_session_nobody_touches_is_forgotten(monkeypatch):
    engine = ResumableEngine(build_model("utterance-mlp", DIMS, LABELS, "test4"), device="cpu")
    d = _dialogue(6, n=2)
    clock = [1000.0]
    monkeypatch.setattr("realtime_erc.engine.time.monotonic", lambda: clock[0])
    for sid in ("lost", "open"):
        engine.step(sid, d[0])
        engine.commit(sid, d[0].utterance_id)
    clock[0] += 100.0
    engine.touch(["open"])  # still streaming somewhere; "lost" went with its replica
    clock[0] += 250.0
    assert engine.expire(300.0) == ["lost"]
    assert engine.sessions == ["open"] and engine.resume("lost") is None
    assert engine.resume("open").utterance_id == d[0].utterance_id


def test_wrong_dims_are_refused_before_any_state_changes():
    engine = _engine()
    d = _dialogue(4, n=2)
    bad = type(d[1])(1, "S0", 0.0, 1.0, d[1].text, ModalityFeatures(np.zeros(5, np.float32)),
                     d[1].visual)  # fmt: skip
    with pytest.raises(FeatureDimError, match="audio"):
        engine.step_many([("s", d[0]), ("s", bad)])
    assert engine.sessions == []


def test_engine_loads_a_checkpoint_and_names_it_by_hash(tmp_path):
    torch.manual_seed(0)
    model = build_model("dialogue-rnn-lite", DIMS, LABELS, "meld7-assembled")
    info = save_checkpoint(model, tmp_path / "m.pt")
    engine = Engine(tmp_path / "m.pt", device="cpu")
    assert engine.model_id == f"dialogue-rnn-lite/meld7-assembled@{info.content_hash[:8]}"
    assert engine.labels == LABELS and engine.label_set == "meld7-assembled"
    assert engine.device == torch.device("cpu")
    direct = Engine(model, device="cpu")
    assert direct.model_id == engine.model_id
    u = _dialogue(5, n=1)[0]
    assert np.allclose(engine.step("s", u).logits, direct.step("s", u).logits, atol=1e-6)
    with torch.no_grad():
        model.out.bias += 1.0  # other weights: another name
    assert Engine(model, device="cpu").model_id != engine.model_id


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine(tmp_path / "missing.pt", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a realtime-erc checkpoint"):
        Engine(junk, device="cpu")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a realtime-erc checkpoint"):
        Engine(other, device="cpu")
    good = tmp_path / "good.pt"
    save_checkpoint(build_model("utterance-mlp", DIMS, LABELS), good)
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["head.0.weight"] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="hash"):
        Engine(tmp_path / "tampered.pt", device="cpu")
    payload = torch.load(good, weights_only=True)
    payload["config"]["no_such_key"] = 1
    torch.save(payload, tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="no_such_key"):
        Engine(tmp_path / "badcfg.pt", device="cpu")


def test_device_selection():
    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EngineError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.gpu
def test_engine_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    torch.manual_seed(0)
    model = build_model("dialoguegcn", DIMS, LABELS)
    cpu = Engine(model, device="cpu")
    d = _dialogue(6)
    expected = [cpu.step("s", u).logits for u in d]
    gpu = Engine(model, device="auto")
    assert gpu.device.type == "cuda"
    got = [gpu.step("s", u).logits for u in d]
    assert np.allclose(got, expected, atol=1e-3)


async def test_async_engine_coalesces_concurrent_requests():
    sessions = {f"s{k}": _dialogue(20 + k, n=4) for k in range(6)}
    reference = _engine("utterance-mlp")
    expected = {sid: [reference.step(sid, u).logits for u in d] for sid, d in sessions.items()}
    async with AsyncEngine(_engine("utterance-mlp"), window_s=0.01) as engine:

        async def talk(sid):
            return [(await engine.step(sid, u)).logits for u in sessions[sid]]

        results = await asyncio.gather(*(talk(sid) for sid in sessions))
        assert engine.batches < 6 * 4  # requests were coalesced
    for sid, got in zip(sessions, results, strict=True):
        assert np.allclose(got, expected[sid], atol=1e-5)


async def test_async_engine_reports_errors_to_the_caller():
    d = _dialogue(7, n=1)
    bad = type(d[0])(0, "S0", 0.0, 1.0, ModalityFeatures(np.zeros(3, np.float32)), d[0].audio,
                     d[0].visual)  # fmt: skip
    async with AsyncEngine(_engine()) as engine:
        with pytest.raises(FeatureDimError, match="text"):
            await engine.step("s", bad)
        assert (await engine.step("s", d[0])).label in LABELS
