"""What the commands share: the consoles, the common options, loading the configuration, and
the one place user errors become a message."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from realtime_erc.config import Config, load_config
from realtime_erc.errors import UserError

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="A TOML file merged over the defaults.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable)."),
]
MqttOpt = Annotated[
    str | None,
    typer.Option("--mqtt", help="Also publish to this MQTT broker, e.g. mqtt://127.0.0.1:1883."),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        help="embedded: run an MQTT broker (and the dashboard) for this session; none: don't.",
    ),
]
ZmqOpt = Annotated[str | None, typer.Option(help="ZeroMQ PUB endpoint, e.g. tcp://127.0.0.1:5556.")]
NoZmqOpt = Annotated[bool, typer.Option("--no-zmq", help="Do not publish on ZeroMQ.")]
JsonlOpt = Annotated[Path | None, typer.Option(help="Also append every document here.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", help="A packaged model by name (see `realtime-erc models`): model.checkpoint."
    ),
]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run on Ray (the [ray] extra).")]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="An existing Ray cluster (default: RAY_ADDRESS, else a local Ray)."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Dataset directory (default: $REALTIME_ERC_DATA, else data.dir)."),
]


def fail(message: str, code: int = 2) -> None:
    """End the command with ``error: message`` on stderr and exit status ``code``."""
    # one line whatever the terminal's width, and brackets in it (``'.[ray]'``) kept as written
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


P = ParamSpec("P")
R = TypeVar("R")


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command: a :class:`UserError` becomes one line and exit 2, a stage that failed
    names itself (exit 1; exit 2 when a user error made it fail), Ctrl-C ends quietly."""
    from realtime_erc.pipeline import StageError

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except StageError as e:
            if isinstance(e.error, UserError):
                fail(f"{e.stage}: {e.error}")
            fail(str(e), code=1)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
        return None  # type: ignore[return-value]

    return wrapper


def setup_logging(level: str) -> None:
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


def load(config_file: Path | None, overrides: list[str] | None, **options: object) -> Config:
    """The effective configuration (defaults < ``--config`` < ``--set`` < dedicated options),
    and logging set up at its level."""
    config = load_config(config_file, overrides, **options)
    setup_logging(config.log_level)
    return config


def model_option(name: str | None) -> dict[str, object]:
    """The config key ``--model NAME`` sets: ``model.checkpoint``, the preset's file."""
    if name is None:
        return {}
    from realtime_erc.models.presets import get_preset

    return {"model.checkpoint": str(get_preset(name).path)}


def output_options(
    zmq: str | None, no_zmq: bool, jsonl: Path | None, mqtt: str | None, broker: str | None
) -> dict[str, object]:
    """Config keys set by the output options ``run`` and ``replay`` share."""
    if broker not in (None, "embedded", "none"):
        raise UserError(f"--broker {broker!r}: choose embedded or none")
    return {
        "output.zmq.endpoint": zmq,
        "output.zmq.enabled": False if no_zmq else None,
        "output.jsonl.path": str(jsonl) if jsonl else None,
        "output.mqtt.url": mqtt,
        "output.mqtt.enabled": True if mqtt else None,
        "broker.embedded": None if broker is None else broker == "embedded",
    }
