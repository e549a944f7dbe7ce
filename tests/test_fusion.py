"""Late fusion of the model's scores with the heads': the pool, the gate, fitting, the file."""

from __future__ import annotations

import math

import pytest

from realtime_erc.fusion import (
    FusionError,
    FusionParams,
    confidence,
    fit_fusion,
    fuse,
    load_fusion,
    per_condition,
    rows_of,
    save_fusion,
)

LABELS = ("neutral", "joy", "anger")


def dist(**p: float) -> dict[str, float]:
    rest = (1.0 - sum(p.values())) / (len(LABELS) - len(p))
    return {k: p.get(k, rest) for k in LABELS}


def test_confidence_is_zero_for_uniform_and_one_for_certain() -> None:
    assert confidence([1 / 3] * 3) == pytest.approx(0.0, abs=1e-12)
    assert confidence([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert 0 < confidence([0.6, 0.3, 0.1]) < 1


def test_fuse_is_the_normalised_weighted_log_pool() -> None:
    model = dist(neutral=0.6, joy=0.3)
    audio = dist(anger=0.8, neutral=0.1)
    params = FusionParams(model="m", weights={"audio": 3.0})
    got = fuse(model, {"audio": audio}, params)
    gate = confidence(list(audio.values()))  # τ = 0: the weight scales with the confidence
    z = {k: math.log(model[k]) + gate * 3.0 * math.log(audio[k]) for k in LABELS}
    total = sum(math.exp(v) for v in z.values())
    assert got == pytest.approx({k: math.exp(v) / total for k, v in z.items()}, abs=1e-6)
    assert max(got, key=got.__getitem__) == "anger"  # the confident voice overrides


def test_a_head_below_its_gate_adds_nothing() -> None:
    model = dist(neutral=0.6, joy=0.3)
    flat_voice = dist(anger=0.4, neutral=0.3)  # confidence ~0.03
    params = FusionParams(model="m", weights={"audio": 3.0}, gates={"audio": 0.3})
    assert fuse(model, {"audio": flat_voice}, params) == pytest.approx(model, abs=1e-6)
    # without a weight for it, a head never counts
    assert fuse(model, {"visual": dist(joy=0.99)}, params) == pytest.approx(model, abs=1e-6)


def test_fit_chooses_the_weights_that_serve_each_condition() -> None:
    # "voice": neutral words (the model says neutral), the voice is right and confident;
    # "words": the words are right, the voice is flat and often wrong
    rows = []
    for truth in ("anger", "joy") * 5:
        rows.append(("voice", truth, dist(neutral=0.7), {"audio": dist(**{truth: 0.9})}))
    for truth in ("anger", "joy", "neutral") * 4:
        wrong = "joy" if truth != "joy" else "anger"
        rows.append(("words", truth, dist(**{truth: 0.6}), {"audio": dist(**{wrong: 0.45})}))
    before = per_condition(rows, None)
    params = fit_fusion(rows, "m@1", fitted_on="synthetic")
    after = per_condition(rows, params)
    assert before["voice"] == 0.0 and after["voice"] == 1.0
    assert after["words"] == before["words"] == 1.0
    assert params.weights["audio"] > 0
    assert params.valid["voice"] == {"unfused": 0.0, "fused": 1.0, "best_single": 1.0}


def test_fusion_file_round_trip_and_refusal(tmp_path) -> None:
    path = tmp_path / "fusion.toml"
    a = FusionParams(model="x/meld7@1", weights={"audio": 1.5, "visual": 0.0},
                     gates={"audio": 0.2, "visual": 0.0}, fitted_on='valid "sessions"',
                     valid={"voice": {"unfused": 0.3, "fused": 0.7}})  # fmt: skip
    save_fusion(a, path)
    save_fusion(FusionParams(model="y/meld7@2"), path)
    loaded = load_fusion(path)
    assert loaded["x/meld7@1"] == a and set(loaded) == {"x/meld7@1", "y/meld7@2"}
    path.write_text("[[fusion]]\nmodel = 3\nbogus = 1\n")
    with pytest.raises(FusionError, match="fit-fusion"):
        load_fusion(path)


def test_rows_of_an_evaluation_report() -> None:
    report = {
        "sessions": [
            {"condition": "voice", "per_utterance": [
                {"emotion": "joy", "scores": dist(joy=0.5), "heads": {"audio": dist(joy=0.9)}},
                {"emotion": "joy", "scores": None, "heads": None},  # no final event matched
            ]},
            {"condition": "words", "skipped": "label set"},
        ]
    }  # fmt: skip
    rows = rows_of(report)
    assert rows == [("voice", "joy", dist(joy=0.5), {"audio": dist(joy=0.9)})]


def test_fit_fusion_command_fits_on_a_valid_run_and_refuses_test_paths(tmp_path) -> None:
    import json

    from cli_support import cli

    rows = [("voice", t, dist(neutral=0.7), {"audio": dist(**{t: 0.9})}) for t in ("anger", "joy")]
    rows += [("words", t, dist(**{t: 0.6}), {"audio": dist(neutral=0.5)}) for t in LABELS]
    sessions = [
        {"path": f"/dev-sessions{'' if i % 2 else '-more'}/valid/{c}/s{i}", "condition": c,
         "per_utterance": [{"emotion": t, "scores": m, "heads": h}]}
        for i, (c, t, m, h) in enumerate(rows)
    ]  # fmt: skip
    valid = tmp_path / "valid" / "run.json"
    valid.parent.mkdir()
    valid.write_text(json.dumps({"model": "m/meld7@1", "sessions": sessions}))
    out = tmp_path / "fusion.toml"
    done = cli("fit-fusion", "--scores", str(valid), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "voice: final wF1 0.000 -> 1.000" in done.stdout
    fitted = load_fusion(out)["m/meld7@1"]
    assert fitted.weights["audio"] > 0 and fitted.fitted_on.endswith(
        "5 sessions under /dev-sessions-more/valid and /dev-sessions/valid"
    )
    test = tmp_path / "test" / "run.json"
    test.parent.mkdir()
    test.write_text(valid.read_text())
    refused = cli("fit-fusion", "--scores", str(test), "--out", str(out))
    assert refused.returncode == 2 and "valid half only" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
