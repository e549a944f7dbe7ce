"""Live commands: run, replay, record, watch, the dashboard, reports, devices and models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from realtime_erc.cli.options import (
    BrokerOpt,
    ConfigOpt,
    JsonlOpt,
    ModelOpt,
    MqttOpt,
    NoZmqOpt,
    SetOpt,
    ZmqOpt,
    console,
    err_console,
    fail,
    load,
    model_option,
    output_options,
    setup_logging,
)
from realtime_erc.config import Config, config_to_toml

app = typer.Typer()
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command()
def replay(
    recording: Annotated[Path, typer.Argument(help="A recording directory (RECORDING_FORMAT).")],
    speed: Annotated[str | None, typer.Option(help="realtime | max | a factor such as 2.0")] = None,
    zmq: ZmqOpt = None,
    no_zmq: NoZmqOpt = False,
    jsonl: JsonlOpt = None,
    mqtt: MqttOpt = None,
    broker: BrokerOpt = None,
    session_id: Annotated[str | None, typer.Option(help="Override the session id.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the stream.")] = False,
    model: ModelOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Replay a recorded session through the live pipeline and stream its utterances."""
    config = load(
        config_file,
        overrides,
        **{
            "replay.speed": speed,
            "session.id": session_id,
            **output_options(zmq, no_zmq, jsonl, mqtt, broker),
            **model_option(model),
        },
    )
    from realtime_erc.outputs.console import ConsolePublisher
    from realtime_erc.session import plan_replay, run_with_services

    extra = [] if quiet else [ConsolePublisher(console)]

    stats = asyncio.run(
        run_with_services(config, lambda c: plan_replay(recording, c, extra), console.print)
    )
    if stats.stopped_early:
        err_console.print("[yellow]stopped early; outputs flushed[/]")


MicOpt = Annotated[
    str | None,
    typer.Option("--mic", help="Audio input: default | an index | part of its name (see devices)."),
]
CameraOpt = Annotated[
    str | None,
    typer.Option("--camera", help="none | a camera index | a video file | a stream URL."),
]
DurationOpt = Annotated[
    float | None, typer.Option("--duration", min=0.1, help="Stop after this many seconds.")
]


@app.command()
def devices() -> None:
    """List audio inputs (for --mic) and cameras (for --camera)."""
    setup_logging("warning")
    from rich.table import Table

    from realtime_erc.sources.devices import list_audio_inputs, list_cameras

    inputs, problem = list_audio_inputs()
    table = Table(title="audio inputs (--mic)", title_justify="left")
    for column in ("index", "name", "host API", "channels", "rate (Hz)", "default"):
        table.add_column(column)
    for d in inputs:
        table.add_row(
            str(d.index),
            d.name,
            d.hostapi,
            str(d.max_channels),
            f"{d.default_samplerate:g}",
            "*" if d.is_default else "",
        )
    console.print(table if inputs else f"audio inputs (--mic): none found. {problem or ''}")
    cameras = list_cameras()
    table = Table(title="cameras (--camera)", title_justify="left")
    for column in ("index", "device", "size", "fps", "status"):
        table.add_column(column)
    for c in cameras:
        size = f"{c.width}x{c.height}" if c.usable else ""
        status = "ok" if c.usable else "busy or not a capture device"
        table.add_row(str(c.index), c.path, size, f"{c.fps:g}" if c.usable else "", status)
    console.print(
        table
        if cameras
        else "cameras (--camera): none found (a video file path works where an index goes)"
    )


@app.command("models")
def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Measure each model's cost per utterance on this CPU now (loads every model).",
        ),
    ] = False,
) -> None:
    """List the packaged models (--model NAME): what each was trained on, its labels, scores,
    cost per utterance and licence."""
    setup_logging("warning")
    from realtime_erc.models.presets import measure_cost, presets

    rows = []
    for p in presets():
        row = p.model_dump(mode="json")
        row["file"] = str(p.path)
        if measure:
            row["cost_now"] = measure_cost(p.path)
        rows.append(row)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="packaged models (--model NAME)", title_justify="left")
    widths = {
        "name": max(len(p.name) for p in presets()),
        "model": max(len(p.model_id) for p in presets()),
    }  # never cut these
    for column in ("name", "model", "trained on", "label set", "valid wF1 / acc",
                   "test wF1 / acc", "ms / utt.", "licence"):  # fmt: skip
        table.add_column(
            column, justify="right" if "/" in column else "left", overflow="fold",
            min_width=widths.get(column),
        )  # fmt: skip
    for p, row in zip(presets(), rows, strict=True):
        s = p.scores
        cost = row.get("cost_now") or (p.cost.model_dump() if p.cost else None)
        table.add_row(
            p.name,
            p.model_id,
            f"{p.trained_on}; {p.features}",
            f"{p.label_set} ({len(p.labels)})",
            pair(s.valid_weighted_f1, s.valid_accuracy),
            pair(s.test_weighted_f1, s.test_accuracy),
            f"{cost['ms_per_utterance']:g}" if cost else "—",
            p.licence,
        )
    console.print(table)
    stored = sorted({p.cost.measured for p in presets() if p.cost})
    when = "now" if measure else "; ".join(stored)
    console.print(
        "ms / utt.: CPU time on one thread to encode the transcript with the model's text "
        f"encoder and take one streaming step (measured {when or 'never'})",
        soft_wrap=True,
    )


def pair(a: float | None, b: float | None) -> str:
    return "—" if a is None else f"{a:.1f} / {b:.1f}" if b is not None else f"{a:.1f}"


@app.command()
def run(
    mic: MicOpt = None,
    camera: CameraOpt = None,
    record: Annotated[
        Path | None, typer.Option("--record", help="Also record the session to this directory.")
    ] = None,
    duration: DurationOpt = None,
    zmq: ZmqOpt = None,
    no_zmq: NoZmqOpt = False,
    jsonl: JsonlOpt = None,
    mqtt: MqttOpt = None,
    broker: BrokerOpt = None,
    session_id: Annotated[str | None, typer.Option(help="Session id (default: generated).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the stream.")] = False,
    model: ModelOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Run the whole pipeline live from the microphone (and camera); Ctrl-C ends the session."""
    config = load(
        config_file,
        overrides,
        **{
            "mic.device": mic,
            "camera.device": camera,
            "session.id": session_id,
            **output_options(zmq, no_zmq, jsonl, mqtt, broker),
            **model_option(model),
        },
    )
    from realtime_erc.outputs.console import ConsolePublisher
    from realtime_erc.session import SessionPlan, plan_live, run_with_services

    extra = [] if quiet else [ConsolePublisher(console)]
    plans: list[SessionPlan] = []

    def started(plan: SessionPlan) -> None:
        plans.append(plan)
        err_console.print(f"session {plan.session_id}: capturing (Ctrl-C to stop)", highlight=False)

    def make_plan(config: Config) -> SessionPlan:
        return plan_live(config, record_dir=record, duration_s=duration, extra_publishers=extra)

    try:
        asyncio.run(run_with_services(config, make_plan, console.print, started))
    finally:
        for plan in plans:
            plan.source.close()
            capture_summary(plan.source)
    if plans and plans[0].source.lost:
        fail(plans[0].source.lost, code=1)


@app.command("record")
def record_command(
    directory: Annotated[Path, typer.Argument(help="New directory for the recording.")],
    mic: MicOpt = None,
    camera: CameraOpt = None,
    duration: DurationOpt = None,
    session_id: Annotated[str | None, typer.Option(help="Session id (default: generated).")] = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Record the microphone (and camera) to a replayable recording; Ctrl-C ends it."""
    config = load(
        config_file,
        overrides,
        **{"mic.device": mic, "camera.device": camera, "session.id": session_id},
    )
    from realtime_erc.session import live_options, new_session_id
    from realtime_erc.sources.live import open_live, record_live

    sid = config.session.id or new_session_id()
    source = open_live(live_options(config, duration), sid, directory, "realtime-erc record")
    err_console.print(f"recording {sid} to {directory} (Ctrl-C to stop)", highlight=False)
    try:
        asyncio.run(record_live(source))
    finally:
        capture_summary(source)
    if source.lost:
        fail(f"{source.lost}; the recording up to then is in {directory}", code=1)


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
    mqtt: Annotated[
        str | None,
        typer.Option("--mqtt", help="Subscribe to this MQTT broker instead of ZeroMQ."),
    ] = None,
) -> None:
    """Show a live emotion stream in the terminal."""
    setup_logging("info")
    from realtime_erc.outputs.console import watch as watch_stream
    from realtime_erc.outputs.jsonl import JsonlWriter
    from realtime_erc.outputs.zmq import ZmqSubscriber

    def subscriber():
        if mqtt is None:
            return ZmqSubscriber(zmq, prefix=topic)
        from realtime_erc.outputs.mqtt import MqttSubscriber

        return MqttSubscriber(mqtt, topic_prefix=topic.rstrip("/"))

    async def main() -> None:
        writer = JsonlWriter(jsonl) if jsonl else None
        if writer is not None:
            await writer.start()
        try:
            async with subscriber() as sub:
                await watch_stream(sub, console, writer, count, until_offline)
        finally:
            if writer is not None:
                await writer.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@app.command()
def schema(
    name: Annotated[str | None, typer.Argument(help="erc.emotion/1 or erc.status/1")] = None,
) -> None:
    """Print the JSON Schemas of the stream documents."""
    from realtime_erc.outputs.schema import SCHEMAS

    if name is not None and name not in SCHEMAS:
        fail(f"unknown schema {name!r}: choose one of {', '.join(SCHEMAS)}")
    out = SCHEMAS[name] if name else SCHEMAS
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


@config_app.command("show")
def config_show(config_file: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the effective configuration (defaults < --config file < --set)."""
    config = load(config_file, overrides)
    sys.stdout.write(config_to_toml(config))


@app.command()
def dashboard(
    broker_ws: Annotated[
        str, typer.Option("--broker-ws", help="The broker's MQTT-over-WebSockets address.")
    ] = "ws://127.0.0.1:9001",
    broker: BrokerOpt = None,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1 (0 = a free one).")] = 8765,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Serve the web dashboard (until Ctrl-C); with --broker embedded, a broker too."""
    config = load(config_file, overrides, **output_options(None, False, None, None, broker))
    from realtime_erc.dashboard.server import DashboardServer, embedded_services

    async def main() -> None:
        async with embedded_services(config, console.print, dashboard=False) as services:
            ws = services.broker.ws_url if services.broker else broker_ws
            with DashboardServer(ws, port, topic_prefix=config.output.topic_prefix) as server:
                console.print(f"dashboard: {server.url}")
                await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@app.command()
def report(
    stream: Annotated[Path, typer.Argument(help="A JSONL stream file (replay --jsonl).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report.html or report.png")] = Path(
        "report.html"
    ),
    session_id: Annotated[str | None, typer.Option(help="Which session (default: first).")] = None,
) -> None:
    """An emotion timeline per speaker and a summary table, as HTML or PNG."""
    setup_logging("info")
    from realtime_erc.outputs.report import write_report

    path = write_report(stream, out, session_id)
    console.print(f"wrote {path}")


def capture_summary(source) -> None:
    summary = getattr(source, "summary", None)
    if summary is not None:
        fields = ", ".join(f"{k}={v}" for k, v in summary().items())
        err_console.print(f"capture: {fields}", highlight=False)
