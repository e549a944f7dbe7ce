"""The ``realtime-erc`` application: the commands of :mod:`.live`, :mod:`.train`,
:mod:`.serve`, :mod:`.batch` and :mod:`.bench` under one Typer app, each wrapped so that a user
error ends it in one line."""

from __future__ import annotations

import typer

from realtime_erc.cli import batch, bench, live, serve, train
from realtime_erc.cli.options import handles_errors

app = typer.Typer(
    help="Real-time emotion recognition in conversations: audio/video in, an emotion stream out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(live.app)
app.add_typer(train.app)
app.add_typer(serve.app)
app.add_typer(batch.app)
app.add_typer(live.config_app, name="config")
app.add_typer(bench.app, name="bench")


def _guard_commands(group: typer.Typer) -> None:
    for command in group.registered_commands:
        command.callback = handles_errors(command.callback)
    for sub in group.registered_groups:
        _guard_commands(sub.typer_instance)


_guard_commands(app)


def main() -> None:
    app()
