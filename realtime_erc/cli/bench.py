"""``realtime-erc bench``: speed, latency and accuracy benchmarks (JSON + markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realtime_erc.cli.options import (
    ConfigOpt,
    SetOpt,
    console,
    fail,
    load,
    setup_logging,
)
from realtime_erc.errors import UserError

app = typer.Typer(help="Benchmarks (JSON + markdown reports).", no_args_is_help=True)


@app.command("stream")
def bench_stream(
    out: Annotated[Path, typer.Option(help="Directory for stream.json and stream.md.")] = Path(
        "bench-results"
    ),
    events: Annotated[int, typer.Option(min=10, help="Events per latency run.")] = 500,
    rate: Annotated[float, typer.Option(help="Events per second in the latency runs.")] = 200.0,
    burst: Annotated[int, typer.Option(min=10, help="Events per throughput run.")] = 5000,
    runs: Annotated[int, typer.Option(min=1, help="Runs per transport.")] = 3,
    mqtt: Annotated[
        str | None,
        typer.Option("--mqtt", help="Use this broker instead of starting mosquitto."),
    ] = None,
) -> None:
    """Publish → receive latency (p50/p99) and sustained events/s: ZeroMQ and MQTT (QoS 1)."""
    setup_logging("warning")
    from realtime_erc.bench.stream import run_stream_benchmark

    result = run_stream_benchmark(events, rate, burst, runs, mqtt_url=mqtt)
    show_report(result, out)


@app.command("replay")
def bench_replay(
    recording: Annotated[Path, typer.Option(help="Recording to replay.")] = Path("recordings/demo"),
    out: Annotated[Path, typer.Option(help="Directory for replay.json and replay.md.")] = Path(
        "bench-results"
    ),
    runs: Annotated[int, typer.Option(min=1, help="Runs per mode.")] = 3,
    realtime: Annotated[
        bool, typer.Option(help="Include the real-time pass (takes the recording's length).")
    ] = True,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Latency at --speed realtime and throughput at --speed max on a recording."""
    config = load(config_file, overrides)
    from realtime_erc.bench.replay import run_replay_benchmark

    report = run_replay_benchmark(recording, config, runs=runs, include_realtime=realtime)
    show_report(report, out)


@app.command("overload")
def bench_overload(
    recording: Annotated[Path, typer.Option(help="Recording to replay.")] = Path("recordings/demo"),
    speed: Annotated[float, typer.Option(min=0.1, help="Replay pace (× real time).")] = 4.0,
    runs: Annotated[int, typer.Option(min=1, help="Runs per policy.")] = 3,
    out: Annotated[Path, typer.Option(help="Directory for overload.json and overload.md.")] = Path(
        "bench-results"
    ),
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Latency with and without the overload policy when transcription is slower than the pace
    (default profile: Whisper base, one thread, padded window; --set overrides it)."""
    from realtime_erc.bench.overload import SLOW_ASR

    profile = [f"asr.{k}={str(v).lower()}" for k, v in SLOW_ASR.items()]
    config = load(config_file, profile + (overrides or []))

    from realtime_erc.bench.overload import run_overload_benchmark

    report = run_overload_benchmark(recording, config, speed=speed, runs=runs)
    show_report(report, out)


@app.command("soak")
def bench_soak(
    minutes: Annotated[
        float, typer.Option(min=1.0, help="Length of the generated session (minutes).")
    ] = 120.0,
    out: Annotated[Path, typer.Option(help="Directory for soak.json and soak.md.")] = Path(
        "bench-results"
    ),
    source: Annotated[Path, typer.Option(help="Recording looped into the long session.")] = Path(
        "recordings/demo"
    ),
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where generated recordings go (default ~/.cache/realtime-erc/soak)."),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="Stream it at real-time pace from --sessions clients to one server."
        ),
    ] = False,
    sessions: Annotated[int, typer.Option(min=1, help="Concurrent clients with --serve.")] = 4,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """A long session at --speed max: memory growth, latency drift, model cache bounds (with
    --serve: N concurrent real-time sessions against `realtime-erc serve`, soak-serve.json)."""
    config = load(config_file, overrides)
    from realtime_erc.bench.soak import SoakOptions, run_soak_benchmark

    options = SoakOptions(minutes=minutes, source=source)
    if serve:
        options.serve, options.sessions = True, sessions
        options.overrides, options.config_file = list(overrides or []), config_file
    if cache_dir is not None:
        options.cache_dir = cache_dir
    result = run_soak_benchmark(config, options)
    show_report(result, out)
    if failures := result.failures():
        fail("soak criteria not met: " + "; ".join(failures), code=1)


@app.command("serve")
def bench_serve(
    sessions: Annotated[
        str, typer.Option(help="Concurrent sessions per run, comma-separated.")
    ] = "1,2,4,8",
    recording: Annotated[Path, typer.Option(help="Recording every client streams.")] = Path(
        "recordings/demo"
    ),
    modes: Annotated[
        str,
        typer.Option(
            help="server (one server, N clients), processes (N replays), ray (serve --ray)."
        ),
    ] = "server,processes",
    stagger: Annotated[
        float, typer.Option(min=0.0, help="Seconds between the clients' starts.")
    ] = 0.25,
    arrival: Annotated[
        str,
        typer.Option(
            help="aligned: every session streams the recording from its start (utterances end "
            "together, the worst case); spread: session i starts at utterance i·U/N (the "
            "recording rotated), as independent conversations."
        ),
    ] = "aligned",
    private_network: Annotated[
        bool,
        typer.Option(
            help="With the ray mode: run the whole benchmark (servers, Ray, clients) in a "
            "network namespace of its own (loopback only)."
        ),
    ] = True,
    out: Annotated[
        Path, typer.Option(help="Directory for serve.json / serve-spread.json and .md.")
    ] = Path("bench-results"),
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """N conversations at real-time pace: one `serve` with N clients vs N `replay` processes,
    and/or `serve --ray` (end-of-speech→final p50/p95, CPU, RSS, shed work, batches per N)."""
    load(config_file, overrides)  # refuses a bad configuration before anything starts
    from realtime_erc.bench.serve import (
        ServeBenchOptions,
        parse_arrival,
        parse_modes,
        parse_sessions,
        run_serve_benchmark,
    )
    from realtime_erc.ray_support import inside_private_network, rerun_in_private_network

    if "ray" in parse_modes(modes) and private_network and not inside_private_network():
        raise typer.Exit(rerun_in_private_network())
    options = ServeBenchOptions(
        sessions=parse_sessions(sessions), recording=recording, modes=parse_modes(modes),
        overrides=list(overrides or []), config_file=config_file, stagger_s=stagger,
        arrival=parse_arrival(arrival),
    )  # fmt: skip
    report = run_serve_benchmark(options)
    show_report(report, out)


@app.command("batch")
def bench_batch(
    recordings: Annotated[int, typer.Option(min=1, help="Recordings in the batch.")] = 20,
    source: Annotated[Path, typer.Option(help="Recording the excerpts are cut from.")] = Path(
        "recordings/demo"
    ),
    utterances: Annotated[int, typer.Option(min=1, help="Utterances per recording.")] = 5,
    workers: Annotated[int, typer.Option(min=1, help="Workers of the pool and of Ray.")] = 2,
    modes: Annotated[
        str, typer.Option(help="one (one process), processes (a pool), ray (Ray Data).")
    ] = "one,processes,ray",
    repeats: Annotated[int, typer.Option(min=1, help="Runs per mode (medians).")] = 3,
    private_network: Annotated[
        bool,
        typer.Option(help="Run the Ray mode in a network namespace of its own (loopback only)."),
    ] = True,
    out: Annotated[Path, typer.Option(help="Directory for batch.json and batch.md.")] = Path(
        "bench-results"
    ),
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """`realtime-erc batch` throughput: one process vs a process pool vs Ray Data, with each
    mode's CPU, memory, and whether its events equal one process's."""
    load(config_file, overrides)
    from realtime_erc.bench.batch import BatchBenchOptions, parse_batch_modes, run_batch_benchmark

    options = BatchBenchOptions(
        recordings=recordings, source=source, utterances=utterances, workers=workers,
        modes=parse_batch_modes(modes), repeats=repeats, private_network=private_network,
        overrides=tuple(overrides or ()), config_file=config_file,
    )  # fmt: skip
    show_report(run_batch_benchmark(options), out)


DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Dataset directory (default: $REALTIME_ERC_DATA, else data.dir)."),
]


@app.command("batching")
def bench_batching(
    recording: Annotated[Path, typer.Option(help="Recording whose utterances are used.")] = Path(
        "recordings/demo"
    ),
    sizes: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,2,4,8",
    repeats: Annotated[int, typer.Option(min=1, help="Timed passes per batch size.")] = 3,
    out: Annotated[Path, typer.Option(help="Directory for batching.json and batching.md.")] = Path(
        "bench-results"
    ),
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """What batching concurrent sessions' requests gains per shared model (CPU per utterance
    at each batch size)."""
    load(config_file, overrides)
    from realtime_erc.bench.batching import BatchingOptions, run_batching_benchmark
    from realtime_erc.bench.serve import parse_sessions

    options = BatchingOptions(
        recording=recording, sizes=tuple(parse_sessions(sizes, "--sizes")), repeats=repeats,
        overrides=tuple(overrides or ()), config_file=config_file,
    )  # fmt: skip
    show_report(run_batching_benchmark(options), out)


@app.command("features")
def bench_features(
    runs: Annotated[int, typer.Option(min=3, help="Timed repetitions per part.")] = 20,
    data: DataOpt = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for features.json and features.md.")] = Path(
        "bench-results"
    ),
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Per-utterance feature extraction time per modality: 2 s speech, 15 fps video."""
    config = load(config_file, overrides)

    from realtime_erc.bench.features import FeatureBenchOptions, run_features_benchmark

    data_dir = config.data.resolve(data)
    options = FeatureBenchOptions(runs=runs, data_dir=data_dir, threads=threads)
    report = run_features_benchmark(options)
    show_report(report, out, soft_wrap=True)


@app.command("speakers")
def bench_speakers(
    data: DataOpt = None,
    actors: Annotated[int, typer.Option(min=2, help="RAVDESS actors in the session.")] = 4,
    utterances: Annotated[int, typer.Option(min=4, help="Utterances per session.")] = 40,
    seeds: Annotated[int, typer.Option(min=1, help="Random sessions (medians reported).")] = 5,
    out: Annotated[Path, typer.Option(help="Directory for speakers.json and speakers.md.")] = Path(
        "bench-results"
    ),
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Speaker-attributed utterance accuracy on sessions assembled from RAVDESS actors."""
    config = load(config_file, overrides)

    from realtime_erc.bench.speakers import run_speakers_benchmark

    report = run_speakers_benchmark(
        config.data.resolve(data), actors=actors, utterances=utterances, seeds=seeds
    )
    show_report(report, out, soft_wrap=True)


@app.command("models")
def bench_models(
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model names (default: all registered).")
    ] = None,
    lengths: Annotated[str, typer.Option(help="Conversation lengths, comma-separated.")] = (
        "10,100,1000"
    ),
    steps: Annotated[int, typer.Option(min=1, help="Steps timed per length.")] = 20,
    runs: Annotated[int, typer.Option(min=1, help="Repetitions (medians are reported).")] = 3,
    device: Annotated[
        str, typer.Option(help="auto (CPU, plus CUDA when available) | cpu | cuda")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: torch's).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for models.json and models.md.")] = Path(
        "bench-results"
    ),
) -> None:
    """Per-utterance step latency of every model vs re-running the full forward pass."""
    setup_logging("warning")

    from realtime_erc.bench.models import ModelBenchOptions, run_models_benchmark
    from realtime_erc.models.registry import MODELS

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    unknown = [m for m in names or [] if m not in MODELS]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}")
    try:
        sizes = [int(x) for x in lengths.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lengths {lengths!r}: expected integers such as 10,100,1000") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"--lengths {lengths!r}: expected positive integers")
    options = ModelBenchOptions(
        models=names,
        lengths=sizes,
        steps=steps,
        runs=runs,
        devices=None if device == "auto" else [device],
        threads=threads,
    )
    report = run_models_benchmark(options)
    show_report(report, out, soft_wrap=True)


def show_report(report, out: Path, soft_wrap: bool = False) -> None:
    """Write a benchmark report (JSON + markdown) under ``out`` and print it."""
    paths = report.write(out)
    console.print(report.markdown(), soft_wrap=soft_wrap)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
