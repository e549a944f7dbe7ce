"""Training and evaluation commands: train, evaluate, the emotion heads and the text encoder,
development sessions and the late fusion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from realtime_erc.cli.options import (
    ConfigOpt,
    DataDirOpt,
    ModelOpt,
    SetOpt,
    console,
    err_console,
    load,
    model_option,
)
from realtime_erc.errors import UserError

app = typer.Typer()


@app.command("evaluate-session")
def evaluate_session_command(
    recordings: Annotated[
        list[Path],
        typer.Argument(
            help="Recordings with annotations.jsonl, and/or folders searched for them "
            "(condition = each session's parent folder)."
        ),
    ],
    speed: Annotated[str, typer.Option(help="realtime | max | a factor.")] = "max",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the scores as JSON.")
    ] = None,
    model: ModelOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Replay annotated recordings and score the stream: weighted F1, accuracy, latency; with
    several sessions, per condition and overall, provisional and final events apart."""
    config = load(
        config_file,
        overrides,
        **{"replay.speed": speed, "output.zmq.enabled": False, **model_option(model)},
    )
    from realtime_erc.evaluate_session import SESSION_FILE

    def single(recording: Path) -> None:
        from rich.table import Table

        from realtime_erc.evaluate_session import evaluate_session

        scores = evaluate_session(recording, config)
        table = Table(title=f"{recording} — {scores.model}")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, value in scores.summary().items():
            table.add_row(key, "—" if value is None else str(value))
        console.print(table)
        if out is not None:
            out.write_text(json.dumps(scores.__dict__, indent=2) + "\n")
            console.print(f"wrote {out}")

    def several() -> None:
        from realtime_erc.evaluate_session import evaluate_sessions

        def progress(outcome, k: int, n: int) -> None:
            name = f"{outcome.condition}/{outcome.path.name}"
            if outcome.scores is None:
                console.print(f"[{k}/{n}] {name}: skipped: {outcome.skipped}", soft_wrap=True)
                return
            s = outcome.scores
            console.print(
                f"[{k}/{n}] {name}: {s.annotated} utterances, final acc {s.accuracy:.3f}, "
                f"provisional acc {fmt(s.provisional_accuracy)}, "
                f"speakers {s.speaker_accuracy:.3f}",
                soft_wrap=True,
            )

        report = evaluate_sessions(recordings, config, progress)
        # wide enough for every column whatever the terminal (logs, pipes)
        console.print(sessions_table(report), width=max(console.width, 120), crop=False)
        for outcome in report.skipped:
            console.print(f"skipped {outcome.path}: {outcome.skipped}", soft_wrap=True)
        if out is not None:
            out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            console.print(f"wrote {out}")

    if len(recordings) == 1 and (recordings[0] / SESSION_FILE).is_file():
        single(recordings[0])
    else:
        several()


@app.command("fit-fusion")
def fit_fusion_command(
    recordings: Annotated[
        list[Path] | None,
        typer.Argument(help="Development sessions of the valid half (or folders of them)."),
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(help="Fit on an `evaluate-session --out` JSON run with fusion.mode=off."),
    ] = None,
    speed: Annotated[str, typer.Option(help="realtime | max | a factor.")] = "max",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Fusion file to update (default: packaged).")
    ] = None,
    model: ModelOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Fit the late fusion of the model with the emotion heads on development sessions (valid
    half only) and store it under the model's id; replays run with fusion.mode=off."""
    from realtime_erc.fusion import (
        FUSION_FILE,
        fit_report,
        per_condition,
        refuse_test_paths,
        rows_of,
        save_fusion,
    )  # fmt: skip

    config = load(
        config_file,
        overrides,
        **{"replay.speed": speed, "output.zmq.enabled": False, "fusion.mode": "off",
           **model_option(model)},
    )  # fmt: skip

    if (scores is None) == (not recordings):
        raise UserError("give development sessions or --scores FILE (one of them)")
    sources = [scores] if scores is not None else list(recordings or [])
    refuse_test_paths(sources)
    if scores is not None:
        report = json.loads(scores.read_text())
    else:
        from realtime_erc.evaluate_session import evaluate_sessions

        report = evaluate_sessions(sources, config).to_dict()
    params = fit_report(report)
    save_fusion(params, out or FUSION_FILE)
    rows = rows_of(report)
    before = per_condition(rows, None)
    console.print(f"{params.model}: weights {params.weights}, gates {params.gates}")
    for condition, fused in sorted(per_condition(rows, params).items()):
        console.print(f"  {condition}: final wF1 {before[condition]:.3f} -> {fused:.3f}")
    console.print(f"wrote {out or FUSION_FILE}")


ExtractorArg = Annotated[str, typer.Argument(help="speech (RAVDESS) | face (FER2013)")]


def extractor_kind(kind: str) -> str:
    from realtime_erc.training.extractors import EXTRACTORS

    if kind not in EXTRACTORS:
        raise UserError(f"unknown extractor {kind!r}: choose speech or face")
    return kind


@app.command("train-extractor")
def train_extractor_command(
    kind: ExtractorArg,
    data: Annotated[
        Path | None, typer.Option(help="Data directory (default: data.dir / $REALTIME_ERC_DATA).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint to write (default: the packaged one).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="face: epochs; speech: optimiser steps.")
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0 = default).")] = 0,
    device: Annotated[
        str, typer.Option(help="face: cpu | auto (CUDA when available) | cuda[:N].")
    ] = "cpu",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="face: recipe setting KEY=VALUE (repeatable), e.g. erase_prob=0.25, "
            "teacher=a.pt,b.pt, net.widths=64,128,256,512; speech: egemaps=false (without "
            "openSMILE's features), layers=1,2 (the Whisper encoder states pooled; layers= "
            "the last).",
        ),
    ] = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train the speech-emotion (RAVDESS) or facial-expression (FER2013) head."""
    config = load(config_file, overrides)

    from realtime_erc.training.extractors import train_extractor

    if extractor_kind(kind) == "speech" and device != "cpu":
        raise UserError("--device applies to the face head only (train it with: face)")
    info = train_extractor(
        extractor_kind(kind),
        config.data.resolve(data),
        out,
        seed,
        epochs,
        console,
        threads,
        device,
        option,
    )
    summary = {k: v for k, v in info.items() if k not in ("history", "subset", "options")}
    console.print_json(json.dumps(summary))


@app.command("evaluate-extractor")
def evaluate_extractor_command(
    kind: ExtractorArg,
    data: Annotated[
        Path | None,
        typer.Option(help="RAVDESS-layout directory/file or FER2013-layout .npz (or its dir)."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint (default: the packaged one).")
    ] = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Score a trained head on any data in the RAVDESS / FER2013 layout."""
    config = load(config_file, overrides)

    from realtime_erc.training.extractors import evaluate_extractor

    result = evaluate_extractor(
        extractor_kind(kind), config.data.resolve(data), checkpoint, console
    )
    console.print_json(json.dumps(result))


TextAdapterOpt = Annotated[
    Path | None,
    typer.Option(help="Encode text with this emotion-adapted encoder (train-text-encoder)."),
]


def fold_option(value: str | None) -> tuple[int, int]:
    """``"K/N"`` → ``(K, N)``; None → ``(0, 1)`` (no cross-fitting)."""
    if value is None:
        return 0, 1
    k, _, n = value.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n) and int(n) >= 2):
        raise UserError(f"--fold {value!r}: give K/N with 0 <= K < N and N >= 2, e.g. --fold 0/2")
    return int(k), int(n)


@app.command("train-text-encoder")
def train_text_encoder_command(
    data: Annotated[str, typer.Option("--data", help="iemocap | meld | emorynlp.")] = "meld",
    data_dir: DataDirOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Adapter file to write (default: in the run's directory).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training split.")] = 3,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate (AdamW).")] = 1e-3,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 8,
    context_turns: Annotated[
        int,
        typer.Option(min=0, help="Earlier turns the encoder reads with each utterance (0 = none)."),
    ] = 0,
    encoder: Annotated[
        str, typer.Option(help="Base encoder: minilm (384-d) or mpnet (768-d, ~5x the compute).")
    ] = "minilm",
    lora_layers: Annotated[
        int, typer.Option(min=0, help="Adapt only the top N transformer layers (0 = all).")
    ] = 0,
    subset: Annotated[
        int | None, typer.Option(min=1, help="Only the first N dialogues of each split.")
    ] = None,
    fold: Annotated[
        str | None,
        typer.Option(
            help="K/N: hold out fold K of N of the train split (cross-fitting, for +xfit data)."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0 = default).")] = 0,
    fresh: Annotated[bool, typer.Option(help="Ignore the run's last.pt (do not resume).")] = False,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Emotion-adapt the text encoder (LoRA on MiniLM or MPNet) on a corpus's train split,
    chosen on valid; then 'train --text-adapter FILE' trains context models on its vectors."""
    config = load(config_file, overrides)

    from realtime_erc.features.assets import cache_root
    from realtime_erc.features.text import encoder_spec
    from realtime_erc.training.datasets import TEXT_DATASETS, load_text_corpus
    from realtime_erc.training.extractors import ProgressBars
    from realtime_erc.training.text_finetune import TextFinetuneOptions, finetune_text_encoder

    if data not in TEXT_DATASETS:
        raise UserError(f"--data {data!r}: choose one of {', '.join(TEXT_DATASETS)}")
    try:
        encoder_spec(encoder)
    except ValueError as e:
        raise UserError(f"--encoder: {e}") from None
    k, n = fold_option(fold)
    corpus = load_text_corpus(data, config.data.resolve(data_dir))
    options = TextFinetuneOptions(
        epochs=epochs, lr=lr, rank=rank, context_turns=context_turns, seed=seed,
        subset=subset, threads=threads, encoder=encoder, lora_layers=lora_layers,
        folds=n, fold=k,
    )  # fmt: skip
    work = cache_root() / "train" / "text" / options.run_name(data)
    target = out or work / "adapter.pt"
    with ProgressBars(err_console) as bars:
        info = finetune_text_encoder(corpus, target, work, options, bars, resume=not fresh)
    summary = {"adapter": str(target), "valid": info["valid"],
               "train_seconds": info["train_seconds"]}  # fmt: skip
    console.print_json(json.dumps(summary))


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see the registry).")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="iemocap | meld | emorynlp, with +mpnet, +lora[K], +ctx, +xfit | assembled, "
            "with +heads (the emotion heads' scores too), +causal | a published feature .pkl.",
        ),
    ] = "meld",
    data_dir: DataDirOpt = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    bidirectional: Annotated[
        bool, typer.Option(help="Train the offline (bidirectional) mode instead of causal.")
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs.")] = 25,
    patience: Annotated[
        int, typer.Option(min=1, help="Stop after this many epochs without a better valid wF1.")
    ] = 5,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate (AdamW).")] = 1e-3,
    batch: Annotated[int, typer.Option(min=1, help="Dialogues per step.")] = 8,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Model hyperparameter key=value (repeatable)."),
    ] = None,
    subset: Annotated[
        int | None, typer.Option(min=1, help="Only the first N dialogues of each split.")
    ] = None,
    modality_dropout: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Remove audio/visual from a training dialogue, else from an utterance, with "
            "this probability (robustness to a missing camera or face).",
        ),
    ] = 0.0,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint to write (default: in the run's directory).")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore the run's last.pt (do not resume).")] = False,
    text_adapter: TextAdapterOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train an ERC model; resumes from the run's last epoch; test scored once at the end."""
    config = load(config_file, overrides)

    from realtime_erc.models.options import parse_override
    from realtime_erc.models.registry import model_class
    from realtime_erc.training.dataset_spec import DatasetSpec
    from realtime_erc.training.erc_trainer import (
        ErcTrainOptions,
        load_data,
        run_dir,
        run_name,
        train_erc,
    )
    from realtime_erc.training.extractors import ProgressBars

    model_class(model)  # unknown names fail before the data are read
    spec = DatasetSpec.parse(data)
    try:
        params = dict(parse_override(p) for p in param or [])
    except ValueError as e:
        raise UserError(f"--param: {e}") from None
    options = ErcTrainOptions(
        model, seed=seed, causal=not bidirectional, max_epochs=epochs, patience=patience,
        lr=lr, batch_dialogues=batch, model_config=params, subset=subset,
        modality_dropout=modality_dropout,
    )  # fmt: skip
    with ProgressBars(err_console) as bars:
        dataset = load_data(
            spec, config.data.resolve(data_dir), progress=bars, text_adapter=text_adapter
        )
        work = run_dir(run_name(dataset.dataset, options))
        result = train_erc(dataset, options, out or work / "model.pt", work, bars, not fresh)
    m, p = result["metrics"], result["provenance"]
    summary = {
        "model_id": result["model_id"], "checkpoint": result["path"],
        "valid_weighted_f1": m["valid"]["weighted_f1"],
        "test_weighted_f1": m["test"]["weighted_f1"], "test_accuracy": m["test"]["accuracy"],
        "epochs": p["epochs"], "best_epoch": p["best_epoch"],
        "train_seconds": p["train_seconds"],
    }  # fmt: skip
    console.print_json(json.dumps(summary))


@app.command("evaluate")
def evaluate_command(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="A checkpoint written by 'realtime-erc train'.")
    ] = None,
    all_runs: Annotated[
        bool, typer.Option("--all", help="Train/reuse every run and rewrite docs/RESULTS.md.")
    ] = False,
    data: Annotated[
        str | None, typer.Option("--data", help="Dataset (default: the one it was trained on).")
    ] = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="train | valid | test.")] = "test",
    subset: Annotated[
        int | None, typer.Option(min=1, help="Only the first N dialogues of the split.")
    ] = None,
    out: Annotated[Path, typer.Option(help="--all: the report to write.")] = Path(
        "docs/RESULTS.md"
    ),
    budget: Annotated[
        float | None,
        typer.Option(min=0.0, help="--all: start no new training after this many minutes."),
    ] = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Score a checkpoint on a split, or (--all) regenerate the whole results table."""
    config = load(config_file, overrides)

    from realtime_erc.training.extractors import ProgressBars

    if all_runs == (checkpoint is not None):
        raise UserError("give either a CHECKPOINT or --all")
    directory = config.data.resolve(data_dir)
    if all_runs:
        from realtime_erc.training.results import ResultsPlan, regenerate

        with ProgressBars(err_console) as bars:
            path = regenerate(directory, out, ResultsPlan(budget_minutes=budget), bars)
        console.print(f"wrote {path}")
        return
    from realtime_erc.training.erc_trainer import evaluate_saved

    if split not in ("train", "valid", "test"):
        raise UserError(f"--split {split!r}: choose train, valid or test")
    with ProgressBars(err_console) as bars:
        result = evaluate_saved(checkpoint, directory, split, subset, data, progress=bars)
    result.pop("confusion")
    console.print_json(json.dumps(result))


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def sessions_table(report):  # MultiSessionReport -> rich Table
    """Per condition and overall: sessions, utterances, provisional events and their wF1 /
    accuracy, the final events' wF1 / accuracy, speaker accuracy."""
    from rich.table import Table

    summary = report.aggregate()
    table = Table(title=f"{len(report.scored)} sessions — {report.model or 'no model'}")
    for name in ("condition", "sessions", "utterances", "matched", "prov. n", "prov. wF1",
                 "prov. acc", "final wF1", "final acc", "speaker acc"):  # fmt: skip
        table.add_column(name, justify="left" if name == "condition" else "right", no_wrap=True)
    rows = [*summary["conditions"].items(), ("all", summary["all"])]
    for k, (condition, p) in enumerate(rows):
        table.add_row(
            condition,
            str(p["sessions"]),
            str(p["annotated"]),
            str(p["matched"]),
            str(p["provisional_events"]),
            fmt(p["provisional"]["weighted_f1"]),
            fmt(p["provisional"]["accuracy"]),
            fmt(p["final"]["weighted_f1"]),
            fmt(p["final"]["accuracy"]),
            fmt(p["speaker_accuracy"]),
            end_section=k == len(rows) - 2,
        )
    return table
