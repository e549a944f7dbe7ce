"""The results report (from stored runs), the ``train`` / ``evaluate`` commands' errors, and the
packaged MELD checkpoint reproducing its stored score."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from cli_support import ROOT, cli

from realtime_erc.config import DataConfig
from realtime_erc.training.erc_trainer import ErcTrainOptions
from realtime_erc.training.results import (
    LIVE_CHECKPOINT_SUBSET,
    ResultsPlan,
    RunLedger,
    RunResult,
    run_one,
    write_report,
)

LABELS = ("calm", "angry")
ASSET = ROOT / "realtime_erc" / "assets" / "erc_meld7_text.pt"
DATA = DataConfig().resolve()


def _run(model: str, seed: int, causal: bool, f1: float) -> RunResult:
    test = {"weighted_f1": f1, "accuracy": f1 + 1, "per_class_f1": {"calm": f1, "angry": 10.0},
            "confusion": [[5, 1], [2, 3]]}  # fmt: skip
    return RunResult("iemocap", model, seed, causal, f"{model}/iemocap6@0000000{seed}", test,
                     {"weighted_f1": f1 - 1}, 5, 3, 12.0, "x.pt")  # fmt: skip


def test_report_has_mean_std_rows_seed_counts_published_numbers_and_plots(tmp_path: Path) -> None:
    results = [_run("dialoguegcn", s, True, 60.0 + s) for s in (0, 1, 2)]
    results += [_run("dialoguegcn", 0, False, 64.0), _run("utterance-mlp", 0, True, 50.0)]
    out = tmp_path / "docs" / "RESULTS.md"
    write_report(results, ["assembled multimodal: not run (no data)"], out,
                 tmp_path / "docs" / "results", {"iemocap": LABELS})  # fmt: skip
    text = out.read_text()
    assert "| dialoguegcn | 61.00 ± 1.00 | 62.00 ± 1.00 | 3 |" in text  # causal, 3 seeds
    assert "| dialoguegcn | 64.00 | 65.00 | 1 |" in text  # bidirectional, 1 seed
    assert "| utterance-mlp | 50.00 | 51.00 | 1 |" in text
    assert "| dialoguegcn | 61.00: missed, beats it on 1/1 | not run |" in text  # vs target
    assert "| utterance-mlp | 50.00: missed | not run |" in text
    assert "COSMIC | 65.28" in text and "not run (no data)" in text
    assert "| dialoguegcn | 61.0 | 10.0 |" in text  # per-class F1, mean over seeds
    png = tmp_path / "docs" / "results" / "confusion-iemocap-dialoguegcn.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](results/confusion-iemocap-dialoguegcn.png)" in text
    assert text.count("| IEMOCAP-6 | dialoguegcn |") == 4  # every run listed with its time


def test_the_summary_chooses_features_on_valid_never_on_test(tmp_path: Path) -> None:
    def run(dataset: str, model: str, seed: int, valid: float, test: float) -> RunResult:
        return replace(_run(model, seed, True, test), dataset=dataset,
                       valid={"weighted_f1": valid})  # fmt: skip

    results = [run("iemocap", "utterance-mlp", s, 50.0, 60.0 + s) for s in (0, 1, 2)]
    results += [run("iemocap+lora", "utterance-mlp", s, 49.0, 70.0) for s in (0, 1, 2)]
    # better on valid, worse on test: chosen all the same
    results += [run("iemocap+lora", "bigfusion", s, 58.0, 61.0 + s) for s in (0, 1, 2)]
    results += [run("iemocap", "bigfusion", s, 55.0, 80.0) for s in (0, 1, 2)]
    results += [run("iemocap+ctx", "bigfusion", 0, 90.0, 90.0)]  # one seed: not a candidate
    results += [run(d, m, s, 60.0, 64.0 + s) for d in ("meld", "meld+lora")
                for m in ("utterance-mlp", "bigfusion") for s in (0, 1, 2)]  # fmt: skip
    out = tmp_path / "RESULTS.md"
    write_report(results, [], out, tmp_path / "plots",
                 {d: LABELS for d in ("iemocap", "iemocap+lora", "iemocap+ctx", "meld",
                                      "meld+lora")})  # fmt: skip
    text = out.read_text().split("## Chosen on validation")[1].split("\n## ")[0]
    assert (
        "| bigfusion | IEMOCAP-6, adapted text: 58.00 → 62.00 ± 1.00, missed, beats it on "
        "3/3 | MELD-7: 60.00 → 65.00 ± 1.00, met, beats it on 0/3 | no |" in text
    )
    assert (
        "| utterance-mlp | IEMOCAP-6: 50.00 → 61.00 ± 1.00, missed | MELD-7: 60.00 → "
        "65.00 ± 1.00, met | no |" in text
    )


def test_the_ledger_replaces_training_and_a_changed_recipe_retrains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_erc_trainer import synthetic_data

    monkeypatch.setenv("REALTIME_ERC_CACHE", str(tmp_path / "cache"))
    ledger = RunLedger(tmp_path / "runs.jsonl")
    options = ErcTrainOptions("utterance-mlp", max_epochs=2, patience=2)
    loads: list[str] = []

    def load():
        loads.append("loaded")
        return synthetic_data()

    trained = run_one(load, options, ledger=ledger, dataset="toy")
    assert loads == ["loaded"] and trained.labels == ("calm", "angry", "happy")
    assert sum(trained.test["confusion"], []) and trained.checkpoint.endswith("model.pt")

    # another machine: no run directories, only the committed ledger
    monkeypatch.setenv("REALTIME_ERC_CACHE", str(tmp_path / "fresh"))
    again = run_one(load, options, ledger=RunLedger(tmp_path / "runs.jsonl"), dataset="toy")
    assert loads == ["loaded"]  # neither trained nor even loaded
    assert (again.model_id, again.test, again.valid) == (trained.model_id, trained.test,
                                                         trained.valid)  # fmt: skip
    assert (again.epochs, again.labels, again.checkpoint) == (trained.epochs, trained.labels, "")
    recorded_text = json.loads((tmp_path / "runs.jsonl").read_text())["text"]
    assert ledger.get("toy-utterance-mlp-causal-seed0", options, recorded_text) is not None
    assert ledger.get("toy-utterance-mlp-causal-seed0", options, "another adapter") is None

    changed = run_one(load, ErcTrainOptions("utterance-mlp", max_epochs=1, patience=2),
                      ledger=ledger, dataset="toy")  # fmt: skip
    assert loads == ["loaded", "loaded"] and changed.epochs == 1
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"max_epochs": 1' in lines[0]  # the run's record is replaced

    (tmp_path / "runs.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="runs.jsonl:1 is not a ledger record"):
        RunLedger(tmp_path / "runs.jsonl")


def test_plan_runs_first_seed_and_bidirectional_first() -> None:
    plan = ResultsPlan(seeds=(0, 1, 2), bidirectional_seeds=(0,))
    assert plan.rounds() == [(True, 0), (False, 0), (True, 1), (True, 2)]
    assert plan.options("meld", "dfgcn", 1, True).batch_dialogues == 16
    assert plan.options("iemocap", "dfgcn", 1, False).causal is False
    assert plan.options("meld+lora", "dfgcn", 1, True).batch_dialogues == 16  # as its base
    assert ResultsPlan(datasets=("meld+lora",)).datasets[0].adapter == "lora"  # parsed


OLD_ROWS = (
    "iemocap", "meld", "assembled", "iemocap+lora", "meld+lora", "iemocap+ctx", "meld+ctx",
    "iemocap+mpnet+lora4", "meld+mpnet+lora4", "iemocap+mpnet+lora4+xfit",
    "meld+mpnet+lora4+xfit", "iemocap+mpnet+lora", "meld+mpnet+lora", "iemocap+mpnet+lora+xfit",
    "meld+mpnet+lora+xfit", "iemocap+mpnet+ctx", "meld+mpnet+ctx", "iemocap+mpnet+ctx+xfit",
    "meld+mpnet+ctx+xfit", "assembled+lora", "assembled+heads", "assembled+lora+heads",
)  # fmt: skip
"""The report's row groups as results.py listed them before the matrix moved to TOML."""


def test_the_experiment_matrix_is_read_from_its_toml_file() -> None:
    from realtime_erc.models.registry import model_class
    from realtime_erc.training.dataset_spec import DatasetSpec
    from realtime_erc.training.results import (
        DATASET_TITLES,
        EXPERIMENTS,
        EXPERIMENTS_FILE,
        TARGETS,
        packaged_adapters,
    )

    assert EXPERIMENTS_FILE.name == "experiments.toml"
    assert tuple(DATASET_TITLES) == OLD_ROWS and len(EXPERIMENTS.rows) == 22
    assert DATASET_TITLES["meld+mpnet+lora4+xfit"] == (
        "MELD-7, MPNet adapted on its top 4 layers, cross-fitted"
    )
    assert {d: 65.0 if d.startswith("iemocap") else 63.0 for d in OLD_ROWS
                       if d.startswith(("iemocap", "meld"))} == TARGETS  # fmt: skip
    plan = ResultsPlan()
    assert plan.models == ("utterance-mlp", "dialoguegcn", "dfgcn", "dialogue-rnn-lite",
                           "bigfusion", "hotspot")  # fmt: skip
    assert plan.datasets == tuple(
        DatasetSpec.parse(d) for d in ("iemocap", "meld", "assembled", "assembled+heads")
    )
    assert (plan.seeds, plan.bidirectional_seeds) == ((0, 1, 2), (0,))
    assert (plan.max_epochs, plan.patience, plan.lr) == (10, 3, 2e-3)
    assert plan.per_dataset == {"meld": {"batch_dialogues": 16}}
    for model in plan.models:
        model_class(model)  # registered
    adapters = packaged_adapters()
    assert set(adapters) <= {"iemocap", "meld", "assembled"}
    assert all(p.is_file() and p.parent.name == "assets" for ps in adapters.values() for p in ps)
    if "assembled" in adapters:
        assert [p.name for p in adapters["assembled"]] == ["text_adapter_meld7.pt"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("seeds = [0, 1, 2]", "seeds = [0, 1, 2]\nfolds = 3"), "folds: unknown"),
        (('"meld+ctx" =', '"meld+ctx+lora" ='), "titles.'meld+ctx+lora': 'meld+ctx+lora': "
                                                 "+ctx is itself"),
        (('"meld+mpnet+lora" =', '"meld+lora+mpnet" ='), "write 'meld+lora+mpnet' as "
                                                          "'meld+mpnet+lora'"),
        (('"assembled+heads"]', '"assembled+hedas"]'), "datasets: unknown dataset variant "
                                                       "'+hedas'"),
        (("batch_dialogues = 16", "batch = 16"), "per_corpus.meld: expected ErcTrainOptions"),
        (("seeds = [0, 1, 2]", "seeds = [0, 1, 1]"), "seeds: has duplicates"),
        (("patience = 3", "patience = 3.5"), "patience: expected an integer"),
    ],
)  # fmt: skip
def test_a_bad_experiment_matrix_is_refused_naming_file_and_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    from realtime_erc.training.emotion_data import DataError
    from realtime_erc.training.results import EXPERIMENTS_FILE, load_experiments

    text = EXPERIMENTS_FILE.read_text()
    assert edit[0] in text
    bad = tmp_path / "experiments.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(DataError) as e:
        load_experiments(bad)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value)


def test_train_and_evaluate_refuse_bad_input_with_one_line() -> None:
    cases = [
        (("train", "--model", "nope", "--data", "iemocap"), "unknown model 'nope'"),
        (("train", "--model", "dialoguegcn", "--data", "friends", "--data-dir", str(ROOT)),
         "unknown dataset 'friends'"),
        (("evaluate",), "give either a CHECKPOINT or --all"),
        (("evaluate", "missing.pt"), "does not exist"),
        (("train-text-encoder", "--data", "assembled"), "choose one of iemocap, meld, emorynlp"),
        (("train-text-encoder", "--data", "meld", "--fold", "2/2"),
         "--fold '2/2': give K/N with 0 <= K < N"),
        (("train", "--model", "dialoguegcn", "--text-adapter", str(ROOT / "README.md")),
         "cannot read the text adapter"),
    ]  # fmt: skip
    with ThreadPoolExecutor(4) as pool:  # each command's start is most of its time
        results = list(pool.map(lambda case: cli(*case[0]), cases))
    for (args, message), r in zip(cases, results, strict=True):
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, args


@pytest.mark.slow
@pytest.mark.skipif(not ASSET.is_file(), reason="no packaged MELD checkpoint")
@pytest.mark.skipif(
    not (DATA / "erc_text" / "meld.pkl").is_file(),
    reason=f"erc_text not found under {DATA} (set REALTIME_ERC_DATA to the data directory)",
)
def test_evaluate_reproduces_the_packaged_checkpoints_stored_score() -> None:
    from realtime_erc.models.checkpoint import read_checkpoint

    stored = read_checkpoint(ASSET)["metrics"]["test_subset"]
    r = cli("evaluate", str(ASSET), "--subset", str(LIVE_CHECKPOINT_SUBSET), timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["utterances"] == stored["utterances"]
    assert result["weighted_f1"] == stored["weighted_f1"]
    assert result["accuracy"] == stored["accuracy"]
