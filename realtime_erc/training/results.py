"""``realtime-erc evaluate --all``: train (or reuse) every run of the results table and write
``docs/RESULTS.md`` with its confusion-matrix plots in ``docs/results/``.

Runs (the matrix is the data file ``experiments.toml`` beside this module, read and checked by
:func:`load_experiments`): every listed model on text-only IEMOCAP-6 and MELD-7 (causal: seeds
0, 1, 2; bidirectional: seed 0), each also on text from the packaged emotion-adapted encoders,
and, where the assembled multimodal corpus is available, on it (causal, seed 0..). Each run's
checkpoint lives in its work directory; a finished run is read back, not retrained, so re-running
the command after an interruption continues where it stopped.

Every finished run is also written to the ledger, ``docs/results/runs.jsonl`` (committed): one
JSON line per run with its options and scores. A run the ledger holds with the same options is
not retrained, and its data are not even loaded, so the report regenerates on a machine that
never trained it; a changed recipe (options) retrains just the runs it changes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from realtime_erc.training.dataset_spec import CORPORA, DatasetSpec
from realtime_erc.training.emotion_data import DataError
from realtime_erc.training.erc_trainer import (
    ErcData,
    ErcTrainOptions,
    load_data,
    resolve_data,
    run_dir,
    run_name,
    text_identity,
    train_erc,
)
from realtime_erc.training.progress import Progress

log = logging.getLogger(__name__)


# Published test weighted F1 (IEMOCAP-6 / MELD-7), as quoted in MODELS.md.
PUBLISHED: dict[str, dict[str, str]] = {
    "bigfusion": {"iemocap": "72.91 (multimodal)", "meld": "67.17 (multimodal)"},
    "dialoguegcn": {"iemocap": "64.18 (text, GloVe CNN)", "meld": "58.10 (text, GloVe CNN)"},
    "COSMIC": {"iemocap": "65.28 (text, RoBERTa-large)", "meld": "65.21 (text, RoBERTa-large)"},
    "MMGCN": {"iemocap": "66.22 (multimodal)", "meld": "58.65 (multimodal)"},
    "M3Net": {"iemocap": "≈71.1 (multimodal)", "meld": "≈65.8 (multimodal)"},
    "SDT": {"iemocap": "≈74.1 (multimodal)", "meld": "≈66.6 (multimodal)"},
}
EXPERIMENTS_FILE = Path(__file__).resolve().with_name("experiments.toml")
"""The experiment matrix (models, datasets, seeds, recipe, adapters, report rows)."""
ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ReportRow:
    """A row group of the report: the runs on one dataset."""

    dataset: DatasetSpec
    title: str
    target: float | None = None
    """The issue target (causal text-only test weighted F1) of the row's corpus, if any."""


@dataclass(frozen=True)
class Experiments:
    """``experiments.toml``, checked: what ``evaluate --all`` runs and how it reports them."""

    models: tuple[str, ...]
    datasets: tuple[DatasetSpec, ...]
    seeds: tuple[int, ...]
    bidirectional_seeds: tuple[int, ...]
    max_epochs: int
    patience: int
    lr: float
    per_corpus: dict[str, dict[str, Any]]
    """Per-corpus overrides of :class:`ErcTrainOptions` fields."""
    adapters: dict[str, tuple[str, ...]]
    """Per corpus, the packaged adapter files (under ``assets/``) its datasets also run on."""
    rows: tuple[ReportRow, ...]


def load_experiments(path: Path = EXPERIMENTS_FILE) -> Experiments:
    """Read and check the experiment matrix; a :class:`DataError` names the file, the key and
    what it should be."""
    import tomllib

    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: not a readable TOML file ({e})") from None

    def bad(key: str, why: str) -> DataError:
        return DataError(f"{path}: {key}: {why}")

    def items(key: str, kind: type, value: Any = None) -> tuple[Any, ...]:
        value = raw.get(key) if value is None else value
        if not isinstance(value, list) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            raise bad(key, f"expected a list of {kind.__name__}")
        if len(set(value)) < len(value):
            raise bad(key, "has duplicates")
        return tuple(value)

    def table(key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict) or not set(value) <= set(CORPORA):
            raise bad(key, f"expected a table keyed by corpus ({', '.join(CORPORA)})")
        return value

    def spec(key: str, name: str) -> DatasetSpec:
        try:
            parsed = DatasetSpec.parse(name)
        except DataError as e:
            raise bad(key, str(e)) from None
        if str(parsed) != name:
            raise bad(key, f"write {name!r} as {str(parsed)!r}")
        return parsed

    expected = {"models", "datasets", "seeds", "bidirectional_seeds", "max_epochs", "patience",
                "lr", "per_corpus", "adapters", "targets", "titles"}  # fmt: skip
    if unknown := set(raw) - expected:
        raise bad(
            ", ".join(sorted(unknown)), f"unknown; the keys are {', '.join(sorted(expected))}"
        )
    for key, kinds in (("max_epochs", (int,)), ("patience", (int,)), ("lr", (int, float))):
        if not isinstance(raw.get(key), kinds) or isinstance(raw.get(key), bool):
            raise bad(key, "expected a number" if float in kinds else "expected an integer")
    settable = {f.name for f in fields(ErcTrainOptions)} - {"model", "seed", "causal"}
    per_corpus = table("per_corpus")
    for corpus, overrides in per_corpus.items():
        if not isinstance(overrides, dict) or not set(overrides) <= settable:
            raise bad(
                f"per_corpus.{corpus}",
                f"expected ErcTrainOptions fields ({', '.join(sorted(settable))})",
            )
    adapters = {c: items(f"adapters.{c}", str, v) for c, v in table("adapters").items()}
    targets = table("targets")
    for corpus, target in targets.items():
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            raise bad(f"targets.{corpus}", "expected a number")
    titles = raw.get("titles")
    if not isinstance(titles, dict) or not all(isinstance(t, str) for t in titles.values()):
        raise bad("titles", "expected a table of dataset name = title")
    rows = []
    for name, title in titles.items():
        row = spec(f"titles.{name!r}", name)
        target = targets.get(row.corpus)
        rows.append(ReportRow(row, title, None if target is None else float(target)))
    return Experiments(
        models=items("models", str),
        datasets=tuple(spec("datasets", name) for name in items("datasets", str)),
        seeds=items("seeds", int),
        bidirectional_seeds=items("bidirectional_seeds", int),
        max_epochs=raw["max_epochs"],
        patience=raw["patience"],
        lr=float(raw["lr"]),
        per_corpus=per_corpus,
        adapters=adapters,
        rows=tuple(rows),
    )


EXPERIMENTS = load_experiments()
DATASET_TITLES: dict[str, str] = {str(r.dataset): r.title for r in EXPERIMENTS.rows}
"""Row groups (canonical dataset names, in the report's order) and their titles."""
TARGETS: dict[str, float] = {
    str(r.dataset): r.target for r in EXPERIMENTS.rows if r.target is not None
}
"""Issue targets: causal text-only test weighted F1 with our encoders (base or adapted)."""


def packaged_adapters() -> dict[str, tuple[Path, ...]]:
    """The committed emotion-adapted encoders (``experiments.toml``'s ``[adapters]`` that are
    present), per corpus."""
    found = {c: tuple(ADAPTERS_DIR / f for f in fs if (ADAPTERS_DIR / f).is_file())
             for c, fs in EXPERIMENTS.adapters.items()}  # fmt: skip
    return {c: paths for c, paths in found.items() if paths}


def _corpus(dataset: str) -> str | None:
    """The corpus of a stored run's dataset name (None for a label that names none)."""
    try:
        return DatasetSpec.parse(dataset).corpus
    except DataError:
        return None


@dataclass
class ResultsPlan:
    """What ``evaluate --all`` runs (defaults: ``experiments.toml``). ``budget_minutes`` stops
    starting new runs once spent (the report lists what was left out), and a later call
    continues with the runs not yet done."""

    models: tuple[str, ...] = EXPERIMENTS.models
    """Cheapest first (measured CPU time per epoch), so a budget-cut table has whole rows."""
    datasets: tuple[DatasetSpec, ...] = EXPERIMENTS.datasets
    """Names are parsed (:meth:`DatasetSpec.parse`)."""
    seeds: tuple[int, ...] = EXPERIMENTS.seeds
    bidirectional_seeds: tuple[int, ...] = EXPERIMENTS.bidirectional_seeds
    max_epochs: int = EXPERIMENTS.max_epochs
    patience: int = EXPERIMENTS.patience
    lr: float = EXPERIMENTS.lr
    per_dataset: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {c: dict(o) for c, o in EXPERIMENTS.per_corpus.items()}
    )
    """Per-corpus overrides of :class:`ErcTrainOptions` fields (MELD: many short dialogues,
    so bigger batches)."""
    budget_minutes: float | None = None
    text_adapters: dict[str, tuple[Path, ...]] = field(default_factory=packaged_adapters)
    """Datasets also run on text from emotion-adapted encoders (rows ``<dataset>+lora`` and,
    for one that reads context, ``<dataset>+ctx``)."""

    def __post_init__(self) -> None:
        self.datasets = tuple(DatasetSpec.parse(d) for d in self.datasets)

    def options(
        self, dataset: DatasetSpec | str, model: str, seed: int, causal: bool
    ) -> ErcTrainOptions:
        base = ErcTrainOptions(
            model, seed=seed, causal=causal, max_epochs=self.max_epochs, patience=self.patience,
            lr=self.lr,
        )  # fmt: skip
        corpus = DatasetSpec.parse(dataset).corpus
        return replace(base, **self.per_dataset.get(corpus or "", {}))

    def rounds(self) -> list[tuple[bool, int]]:
        """(causal, seed) in the order each model runs them: the first causal seed and the
        bidirectional rows first."""
        first = [(True, self.seeds[0])] if self.seeds else []
        return (
            first
            + [(False, s) for s in self.bidirectional_seeds]
            + [(True, s) for s in self.seeds[1:]]
        )


@dataclass
class RunResult:
    dataset: str
    model: str
    seed: int
    causal: bool
    model_id: str
    test: dict[str, Any]
    valid: dict[str, Any]
    epochs: int
    best_epoch: int
    seconds: float
    checkpoint: str
    """The run's checkpoint ("" for a run read from the ledger on a machine that lacks it)."""
    labels: tuple[str, ...] = ()
    """The label set's names, in the order of the confusion matrix."""


LEDGER_FIELDS = ("dataset", "model", "seed", "causal", "model_id", "test", "valid", "epochs",
                 "best_epoch", "seconds", "labels")  # fmt: skip


class RunLedger:
    """Finished runs, one JSON line each (``{"run": name, "options": {...}, "text": <text
    encoder identity>, <RunResult fields>}``), sorted by run name so that the file diffs well;
    rewritten atomically after each new run. A record stands for a run only with the same
    options and the same text encoder (another adapter under the same dataset name retrains)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self._records[record["run"]] = record
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path}:{n} is not a ledger record ({e}): restore the file from git"
                    ) from None

    def get(self, name: str, options: ErcTrainOptions, text: str | None = None) -> RunResult | None:
        """The recorded run ``name`` if it was trained with exactly ``options`` (and on text
        from ``text``, see :func:`~realtime_erc.training.erc_trainer.text_identity`)."""
        record = self._records.get(name)
        if record is None or record["options"] != _options_dict(options):
            return None
        if text is not None and record.get("text") != text:
            return None
        fields = {k: record[k] for k in LEDGER_FIELDS}
        fields["labels"] = tuple(fields["labels"])
        return RunResult(checkpoint="", **fields)

    def add(self, name: str, options: ErcTrainOptions, result: RunResult, text: str) -> None:
        record = {"run": name, "options": _options_dict(options), "text": text}
        record.update({k: getattr(result, k) for k in LEDGER_FIELDS})
        record["labels"] = list(result.labels)
        if self._records.get(name) == record:
            return
        self._records[name] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        lines = (json.dumps(self._records[k], sort_keys=True) for k in sorted(self._records))
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)


def run_one(
    load: Callable[[], ErcData],
    options: ErcTrainOptions,
    progress: Progress | None = None,
    ledger: RunLedger | None = None,
    *,
    dataset: DatasetSpec | str,
    text: str | None = None,
    train: bool = True,
) -> RunResult | None:
    """The scores of run ``dataset``/``options``: from its checkpoint if it exists for these
    options (and text encoder ``text``, when given), else from the ledger, else trained now
    (resuming its ``last.pt``; None instead when not ``train``). ``load`` is called only to
    train; the ledger records the run."""
    from realtime_erc.models.checkpoint import read_checkpoint

    name = run_name(dataset, options)
    work = run_dir(name)
    out = work / "model.pt"
    result = None
    if out.is_file():
        payload = read_checkpoint(out)
        provenance = payload.get("provenance", {})
        same_text = text is None or text_identity(provenance.get("features", {})) == text
        if provenance.get("options") == _options_dict(options) and same_text:
            result = payload
    if result is None and ledger is not None and (recorded := ledger.get(name, options, text)):
        return recorded
    if result is None:
        if not train:
            return None
        log.info("training %s", name)
        train_erc(load(), options, out, work, progress=progress)
        result = read_checkpoint(out)
    p, m = result["provenance"], result["metrics"]
    run = RunResult(
        p["dataset"], options.model, options.seed, options.causal,
        f"{result['model']}/{result['label_set']}@{result['content_hash'][:8]}",
        m["test"], m["valid"], p["epochs"], p["best_epoch"], p["train_seconds"], str(out),
        tuple(result["labels"]),
    )  # fmt: skip
    if ledger is not None:
        ledger.add(name, options, run, text_identity(p.get("features", {})))
    return run


def _options_dict(options: ErcTrainOptions) -> dict[str, Any]:
    return options.to_dict()


def run_all(
    plan: ResultsPlan,
    data_dir: Path,
    progress: Progress | None = None,
    ledger: RunLedger | None = None,
) -> tuple[list[RunResult], list[str]]:
    """Every run of ``plan`` (within its budget); returns the results and notes on what was not
    run and why. A dataset is loaded only when one of its runs must be trained."""
    from realtime_erc.training.datasets import fold_adapters

    started = time.perf_counter()
    # resolved spec -> (the spec asked for, adapter, text)
    requests: dict[DatasetSpec, tuple[DatasetSpec, Path | None, str | None]] = {}
    notes: list[str] = []
    for dataset in plan.datasets:
        try:
            variants: list[tuple[DatasetSpec, Path | None]] = [(dataset, None)]
            for adapter in plan.text_adapters.get(dataset.corpus or "", ()):
                variants.append((dataset, adapter))
                if fold_adapters(adapter):
                    variants.append((replace(dataset, crossfit=True), adapter))
            for spec, adapter in variants:
                request = resolve_data(spec, text_adapter=adapter)
                requests[request.spec] = (spec, adapter, request.text)
        except DataError as e:
            notes.append(f"{DATASET_TITLES.get(str(dataset), dataset)}: not run ({e})")

    @functools.cache
    def load(resolved: DatasetSpec) -> ErcData:
        dataset, adapter, _ = requests[resolved]
        return load_data(dataset, data_dir, progress=progress, text_adapter=adapter)

    results: list[RunResult] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}  # dataset -> why it could not be loaded
    for model in plan.models:
        for causal, seed in plan.rounds():
            for dataset, (*_, text) in requests.items():
                if (dataset.corpus == "assembled" and not causal) or str(dataset) in failed:
                    continue
                spent = (time.perf_counter() - started) / 60
                label = f"{dataset} {model} {'causal' if causal else 'bidir'} seed {seed}"
                options = plan.options(dataset, model, seed, causal)
                # past the budget a finished or recorded run is still read back, not trained
                train = plan.budget_minutes is None or spent <= plan.budget_minutes
                try:
                    result = run_one(functools.partial(load, dataset), options, progress, ledger,
                                     dataset=dataset, text=text, train=train)  # fmt: skip
                except DataError as e:
                    failed[str(dataset)] = str(e)
                    continue
                if result is None:
                    skipped.append(label)
                    continue
                results.append(result)
                log.info("%s done (%.1f min in all)", label, spent)
    notes += [f"{DATASET_TITLES.get(d, d)}: not run ({e})" for d, e in failed.items()]
    if skipped:
        notes.append(
            f"{len(skipped)} runs not trained within the {plan.budget_minutes:g}-minute budget "
            f"(run `realtime-erc evaluate --all` again to add them): {'; '.join(skipped)}"
        )
    return results, notes


# ----------------------------------------------------------------------------------------------
# The report


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _group(results: Sequence[RunResult], dataset: str, model: str, causal: bool):
    return [r for r in results if (r.dataset, r.model, r.causal) == (dataset, model, causal)]


def plot_confusion(result: RunResult, labels: Sequence[str], path: Path) -> None:
    """A row-normalised confusion matrix (counts in the cells) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(result.test["confusion"], float)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    mode = "causal" if result.causal else "bidirectional"
    ax.set_title(f"{result.model} · {DATASET_TITLES.get(result.dataset, result.dataset)} · "
                 f"{mode} · seed {result.seed}\nwF1 {result.test['weighted_f1']:.2f}",
                 fontsize=9)  # fmt: skip
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _seed_wins(runs: Sequence[RunResult], baseline: Sequence[RunResult]) -> list[bool]:
    """For each run of ``runs`` whose seed ``baseline`` also ran: does it score higher on test?"""
    base = {r.seed: r.test["weighted_f1"] for r in baseline}
    return [r.test["weighted_f1"] > base[r.seed] for r in runs if r.seed in base]


def _targets(results: Sequence[RunResult], models: Sequence[str]) -> list[str]:
    """Where each model stands against the targets, and on how many seeds it beats the
    utterance-mlp baseline (same dataset, same seed)."""
    targets = {  # adapted-text columns only where such runs exist
        d: t for d, t in TARGETS.items() if "+" not in d or any(r.dataset == d for r in results)
    }
    lines = ["## Against the targets (causal, text only)", "",
             "Each cell: mean test weighted F1 over seeds, the verdict, and on how many seeds "
             "the model beats utterance-mlp trained with the same seed.", "",
             "| model | " + " | ".join(f"{DATASET_TITLES[d]} ≥ {t:g}" for d, t in targets.items())
             + " |",
             "|" + "---|" * (len(targets) + 1)]  # fmt: skip
    for m in models:
        cells = []
        for d, target in targets.items():
            g = _group(results, d, m, True)
            if not g:
                cells.append("not run")
                continue
            mean = statistics.mean(r.test["weighted_f1"] for r in g)
            cell = f"{mean:.2f}: {'met' if mean >= target else 'missed'}"
            paired = _seed_wins(g, _group(results, d, "utterance-mlp", True))
            if m != "utterance-mlp" and paired:
                cell += f", beats it on {sum(paired)}/{len(paired)}"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""]


def _chosen_on_valid(results: Sequence[RunResult], models: Sequence[str]) -> list[str]:
    """Per model and corpus, the text features whose causal runs score best on validation
    (mean over seeds; groups with fewer seeds than the most complete one are not candidates),
    then that group's test score (picking among the rows above by their test scores would tune
    on test). The utterance MLP chooses the same way; each seed is compared with its seed."""
    corpora = [c for c in ("iemocap", "meld") if any(_corpus(r.dataset) == c and r.causal
               for r in results)]  # fmt: skip
    if not corpora:
        return []

    def choose(model: str, corpus: str) -> list[RunResult]:
        groups = [_group(results, str(row.dataset), model, True) for row in EXPERIMENTS.rows
                  if row.target is not None and row.dataset.corpus == corpus]  # fmt: skip
        most = max((len(g) for g in groups), default=0)
        full = [g for g in groups if g and len(g) == most]
        return max(full, key=lambda g: statistics.mean(r.valid["weighted_f1"] for r in g),
                   default=[])  # fmt: skip

    lines = ["## Chosen on validation (causal, text only)", "",
             "Each model's text features per corpus chosen by mean validation weighted F1 over "
             "seeds, then scored on test once: features, valid → test, the verdict against the "
             "target, and on how many seeds the model beats utterance-mlp (itself chosen the "
             "same way) trained with the same seed.", "",
             "| model | " + " | ".join(f"{DATASET_TITLES[c]} ≥ {TARGETS[c]:g}" for c in corpora)
             + " | both targets |", "|" + "---|" * (len(corpora) + 2)]  # fmt: skip
    for m in models:
        cells, met = [], []
        for c in corpora:
            g = choose(m, c)
            if not g:
                cells.append("not run")
                met.append(False)
                continue
            scores = [r.test["weighted_f1"] for r in g]
            ok = statistics.mean(scores) >= TARGETS[c]
            cell = (f"{DATASET_TITLES[g[0].dataset]}: "
                    f"{statistics.mean(r.valid['weighted_f1'] for r in g):.2f} → "
                    f"{_mean_std(scores)}, {'met' if ok else 'missed'}")  # fmt: skip
            if m != "utterance-mlp":
                paired = _seed_wins(g, choose("utterance-mlp", c))
                cell += f", beats it on {sum(paired)}/{len(paired)}"
                ok = ok and bool(paired) and all(paired)
            cells.append(cell)
            met.append(ok)
        verdict = "yes" if len(corpora) == 2 and all(met) else "no"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {verdict} |")
    return lines + [""]


def write_report(
    results: Sequence[RunResult],
    notes: Sequence[str],
    out: Path,
    plots: Path,
    labels: dict[str, Sequence[str]],
    header: str = "",
    extra: str = "",
) -> None:
    """``docs/RESULTS.md`` (and the PNGs in ``plots``) from the runs."""
    datasets = [d for d in DATASET_TITLES if any(r.dataset == d for r in results)]
    models = list(dict.fromkeys(r.model for r in results))
    lines = ["# ERC results", "", header.strip(), ""] if header else ["# ERC results", ""]

    for causal in (True, False):
        mode = "causal (streaming)" if causal else "bidirectional (offline)"
        rows = [(m, d, _group(results, d, m, causal)) for m in models for d in datasets]
        if not any(g for *_, g in rows):
            continue
        lines += [f"## Test scores, {mode}", ""]
        head = "| model | " + " | ".join(
            f"{DATASET_TITLES[d]} wF1 | acc | seeds" for d in datasets) + " |"  # fmt: skip
        lines += [head, "|" + "---|" * (1 + 3 * len(datasets))]
        for m in models:
            cells = []
            for d in datasets:
                g = _group(results, d, m, causal)
                if not g:
                    cells += ["–", "–", "0"]
                    continue
                cells += [
                    _mean_std([r.test["weighted_f1"] for r in g]),
                    _mean_std([r.test["accuracy"] for r in g]),
                    str(len(g)),
                ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += _targets(results, models)
    lines += _chosen_on_valid(results, models)
    lines += ["## Through the live pipeline", "", SESSIONS_NOTE, ""]
    lines += ["## Published numbers (test weighted F1)", "",
              "| method | IEMOCAP-6 | MELD-7 |", "|---|---|---|"]  # fmt: skip
    for name, row in PUBLISHED.items():
        lines.append(f"| {name} | {row['iemocap']} | {row['meld']} |")
    lines.append("")

    lines += ["## Per-class test F1 (causal, mean over seeds)", ""]
    for d in datasets:
        names = list(labels[d])
        lines += [f"### {DATASET_TITLES[d]}", "", "| model | " + " | ".join(names) + " |",
                  "|" + "---|" * (1 + len(names))]  # fmt: skip
        for m in models:
            g = _group(results, d, m, True)
            if g:
                vals = [statistics.mean(r.test["per_class_f1"][n] for r in g) for n in names]
                lines.append(f"| {m} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
        lines.append("")

    lines += ["## Confusion matrices (test, causal, seed 0)", ""]
    for d in datasets:
        for m in models:
            g = [r for r in _group(results, d, m, True) if r.seed == min(x.seed for x in
                 _group(results, d, m, True))]  # fmt: skip
            if not g:
                continue
            png = plots / f"confusion-{d.replace('+', '-')}-{m}.png"
            if "confusion" in g[0].test:  # runs imported from an older report have none
                plot_confusion(g[0], labels[d], png)
            if png.is_file():
                lines.append(f"![{m} on {DATASET_TITLES[d]}](results/{png.name})")
        lines.append("")

    lines += ["## Every run", "",
              "| dataset | model | mode | seed | valid wF1 | test wF1 | test acc | epochs "
              "(best) | train s | model id |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(
            f"| {DATASET_TITLES.get(r.dataset, r.dataset)} | {r.model} | "
            f"{'causal' if r.causal else 'bidir'} | {r.seed} | {r.valid['weighted_f1']:.2f} | "
            f"{r.test['weighted_f1']:.2f} | {r.test['accuracy']:.2f} | {r.epochs} "
            f"({r.best_epoch}) | {r.seconds:.0f} | `{r.model_id}` |"
        )
    total = sum(r.seconds for r in results)
    lines += ["", f"Total training time: {total / 60:.1f} min over {len(results)} runs.", ""]
    if notes:
        lines += ["## Not run", ""] + [f"- {n}" for n in notes] + [""]
    if extra:
        lines += [extra.strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def regenerate(
    data_dir: Path, out: Path, plan: ResultsPlan | None = None, progress: Progress | None = None
) -> Path:
    """Run (or reuse) every run of ``plan`` and write the report to ``out`` (plots beside it in
    ``results/``, with the ledger ``results/runs.jsonl``)."""
    plan = plan or ResultsPlan()
    started = time.perf_counter()
    ledger = RunLedger(out.parent / "results" / "runs.jsonl")
    results, notes = run_all(plan, data_dir, progress, ledger)
    labels: dict[str, Sequence[str]] = {}
    for r in results:
        labels.setdefault(r.dataset, r.labels)
    header = (
        "Generated by `realtime-erc evaluate --all`. Text features: the packaged "
        "all-MiniLM-L6-v2 sentence vectors (frozen, pooled; no token sequences), audio and "
        "visual absent; rows marked *adapted text* use the emotion-adapted encoder instead "
        "(LoRA on MiniLM trained on that corpus's train split and chosen on its valid split: "
        "`realtime-erc train-text-encoder`), *read in context* with the turns before each "
        "utterance in the encoder's input (`--context-turns`), *MPNet* from the larger "
        "all-mpnet-base-v2 adapted the same way, on its top 4 layers (`--encoder mpnet "
        "--lora-layers 4`) or on all 12 (`--encoder mpnet`), *cross-fitted* with each "
        "training dialogue encoded by one of two "
        "adapters trained with its half of the train split held out (`--fold K/2`: the "
        "context model then learns from vectors as noisy as unseen speech gives; valid and "
        "test are encoded as in the plain rows); *+ head scores* rows append "
        "the speech and face emotion heads' log-probabilities to the audio and visual "
        "vectors (the speech head cross-fitted over the training actors, faces from FER "
        "PublicTest only: see docs/ASSEMBLED.md). Each run: early stopping on validation "
        "weighted F1 (patience "
        f"{plan.patience}, at most {plan.max_epochs} epochs), the test split scored once with "
        "the epoch chosen on validation. Causal rows: mean ± std over seeds "
        f"{', '.join(map(str, plan.seeds))}; bidirectional rows: seed "
        f"{', '.join(map(str, plan.bidirectional_seeds))}. Training ran on a shared 2-core CPU. "
        "Every run's options and scores are in the ledger [results/runs.jsonl]"
        "(results/runs.jsonl), from which this page regenerates without retraining (runs "
        "imported from the report that preceded the ledger carry their row's per-class F1)."
    )
    extra = f"Report regenerated in {(time.perf_counter() - started) / 60:.1f} min."
    write_report(results, notes, out, out.parent / "results", labels, header, extra)
    return out


DATA_TERMS = {
    "meld": "MELD is GPL-3.0, text from the TV series Friends; cite Poria et al. (ACL 2019).",
    "iemocap": "IEMOCAP is under the USC IEMOCAP research licence (research use only; the data "
    "may not be redistributed); cite Busso et al. (LRE 2008).",
    "assembled": "MELD text (GPL-3.0, from Friends; Poria et al., ACL 2019), RAVDESS speech "
    "(CC BY-NC-SA 4.0; Livingstone & Russo 2018), FER2013 faces (research use only; Goodfellow "
    "et al. 2013): non-commercial research use.",
}
"""The terms of each corpus's data, which bind a checkpoint trained on it (the exported note)."""

SESSIONS_NOTE = (
    "The packaged models scored on development sessions replayed through the live pipeline "
    "(ASR transcripts, live segmentation and speakers), per condition, provisional and final "
    "events apart, the previous default against the new one and the text model alone: "
    "[SESSIONS.md](SESSIONS.md)."
)

LIVE_CHECKPOINT_SUBSET = 20
"""Test dialogues the packaged checkpoint's reference score is computed on (a test checks that
``realtime-erc evaluate`` reproduces it exactly)."""


def export_live_checkpoint(
    source: Path, dest: Path, data: ErcData, subset: int = LIVE_CHECKPOINT_SUBSET
) -> dict[str, Any]:
    """Copy a trained checkpoint to ``dest`` (e.g. ``realtime_erc/assets/erc_meld7_text.pt``),
    adding its score on the first ``subset`` test dialogues and a data/licence note. The weights
    (and so the model id) are unchanged."""
    from realtime_erc.models.checkpoint import load_checkpoint, save_checkpoint
    from realtime_erc.training.erc_trainer import score

    model = load_checkpoint(source)
    info = model.checkpoint_info
    causal = bool(info.provenance.get("causal", True))
    reference = score(model, data, data.dialogues("test", subset), causal)
    metrics = dict(info.metrics)
    metrics["test_subset"] = {
        "dialogues": subset, "weighted_f1": reference["weighted_f1"],
        "accuracy": reference["accuracy"], "utterances": reference["utterances"],
    }  # fmt: skip
    provenance = dict(info.provenance)
    provenance.pop("history", None)
    provenance["note"] = (
        f"Trained on {data.corpus.name} dialogue text (train split; model chosen on valid). "
        + DATA_TERMS.get(data.corpus.name, "Its terms: see the data directory's README.")
    )
    saved = save_checkpoint(model, dest, metrics, provenance, info.features)
    return {"model_id": saved.model_id, "path": str(dest), "metrics": metrics}
