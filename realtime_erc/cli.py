"""The ``realtime-erc`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from realtime_erc.config import Config, ConfigError, config_to_toml, load_config

app = typer.Typer(
    help="Real-time emotion recognition in conversations: audio/video in, an emotion stream out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (JSON + markdown reports).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="A TOML file merged over the defaults.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable)."),
]


class UserError(Exception):
    """An error the user can fix; shown as one line, exit status 2."""


def _user_errors() -> tuple[type[Exception], ...]:
    from realtime_erc.features.assets import AssetError
    from realtime_erc.outputs.zmq import OutputError
    from realtime_erc.sources.recording import RecordingError

    return (UserError, ConfigError, RecordingError, OutputError, AssetError)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    # faster-whisper logs every segment's duration at INFO.
    logging.getLogger("faster_whisper").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )


def _load(config_file: Path | None, overrides: list[str] | None, **options) -> Config:
    try:
        config = load_config(config_file, overrides, **options)
    except ConfigError as e:
        _fail(str(e))
    _setup_logging(config.log_level)
    return config


@app.command()
def replay(
    recording: Annotated[Path, typer.Argument(help="A recording directory (RECORDING_FORMAT).")],
    speed: Annotated[str | None, typer.Option(help="realtime | max | a factor such as 2.0")] = None,
    zmq: Annotated[
        str | None, typer.Option(help="ZeroMQ PUB endpoint, e.g. tcp://127.0.0.1:5556.")
    ] = None,
    no_zmq: Annotated[bool, typer.Option("--no-zmq", help="Do not publish on ZeroMQ.")] = False,
    jsonl: Annotated[Path | None, typer.Option(help="Also append every document here.")] = None,
    session_id: Annotated[str | None, typer.Option(help="Override the session id.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the stream.")] = False,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Replay a recorded session through the live pipeline and stream its utterances."""
    config = _load(
        config_file,
        overrides,
        **{
            "replay.speed": speed,
            "output.zmq.endpoint": zmq,
            "output.zmq.enabled": False if no_zmq else None,
            "output.jsonl.path": str(jsonl) if jsonl else None,
            "session.id": session_id,
        },
    )
    from realtime_erc.outputs.console import ConsolePublisher
    from realtime_erc.session import plan_replay, run_session

    def run() -> None:
        extra = [] if quiet else [ConsolePublisher(console)]
        plan = plan_replay(recording, config, extra)
        stats = asyncio.run(run_session(plan, config))
        if stats.stopped_early:
            err_console.print("[yellow]stopped early; outputs flushed[/]")

    _guard(run)


def _guard(fn) -> None:
    """Run a command body: user errors become one line; a failed stage names itself."""
    from realtime_erc.pipeline import StageError

    try:
        fn()
    except _user_errors() as e:
        _fail(str(e))
    except StageError as e:
        if isinstance(e.error, _user_errors()):
            _fail(f"{e.stage}: {e.error}")
        _fail(str(e), code=1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")


@app.command()
def watch(
    zmq: Annotated[
        str, typer.Option(help="ZeroMQ endpoint to subscribe to.")
    ] = "tcp://127.0.0.1:5556",
    topic: Annotated[str, typer.Option(help="Topic prefix (ends with /).")] = "erc/",
    jsonl: Annotated[Path | None, typer.Option(help="Also write every document here.")] = None,
    count: Annotated[int | None, typer.Option(help="Exit after this many documents.")] = None,
    until_offline: Annotated[
        bool, typer.Option(help="Exit when a session reports offline.")
    ] = False,
) -> None:
    """Show a live emotion stream in the terminal."""
    _setup_logging("info")
    from realtime_erc.outputs.console import watch as watch_stream
    from realtime_erc.outputs.jsonl import JsonlWriter
    from realtime_erc.outputs.zmq import ZmqSubscriber

    async def main() -> None:
        writer = JsonlWriter(jsonl) if jsonl else None
        if writer is not None:
            await writer.start()
        try:
            async with ZmqSubscriber(zmq, prefix=topic) as subscriber:
                await watch_stream(subscriber, console, writer, count, until_offline)
        finally:
            if writer is not None:
                await writer.close()

    def run() -> None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    _guard(run)


@app.command()
def schema(
    name: Annotated[str | None, typer.Argument(help="erc.emotion/1 or erc.status/1")] = None,
) -> None:
    """Print the JSON Schemas of the stream documents."""
    from realtime_erc.outputs.schema import SCHEMAS

    if name is not None and name not in SCHEMAS:
        _fail(f"unknown schema {name!r}: choose one of {', '.join(SCHEMAS)}")
    out = SCHEMAS[name] if name else SCHEMAS
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


@config_app.command("show")
def config_show(config_file: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the effective configuration (defaults < --config file < --set)."""
    config = _load(config_file, overrides)
    sys.stdout.write(config_to_toml(config))


@bench_app.command("replay")
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
    config = _load(config_file, overrides)
    from realtime_erc.bench.replay import run_replay_benchmark

    def run() -> None:
        report = run_replay_benchmark(recording, config, runs=runs, include_realtime=realtime)
        paths = report.write(out)
        console.print(report.markdown())
        console.print(f"wrote {', '.join(str(p) for p in paths)}")

    _guard(run)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
