"""The ``realtime-erc`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
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
    from realtime_erc.fusion import FusionError
    from realtime_erc.models.presets import PresetError
    from realtime_erc.outputs.report import ReportError
    from realtime_erc.outputs.zmq import OutputError
    from realtime_erc.sources.camera import CameraError
    from realtime_erc.sources.microphone import MicrophoneError
    from realtime_erc.sources.recording import RecordingError
    from realtime_erc.speech.speakers import SpeakerError
    from realtime_erc.training.emotion_data import DataError

    return (
        UserError,
        DataError,
        ConfigError,
        RecordingError,
        OutputError,
        AssetError,
        ReportError,
        MicrophoneError,
        CameraError,
        SpeakerError,
        PresetError,
        FusionError,
        *_model_errors(),
    )


def _model_errors() -> tuple[type[Exception], ...]:
    """Model/engine errors; only imported once torch is loaded (nothing else can raise them)."""
    if "torch" not in sys.modules:
        return ()
    from realtime_erc.engine import EngineError
    from realtime_erc.features.face_expression import FaceExpressionError
    from realtime_erc.features.speech_emotion import SpeechEmotionError
    from realtime_erc.features.text_adapter import TextAdapterError
    from realtime_erc.models.base import FeatureDimError
    from realtime_erc.models.checkpoint import CheckpointError
    from realtime_erc.models.options import ModelConfigError
    from realtime_erc.models.registry import UnknownModelError

    return (
        TextAdapterError,
        EngineError,
        FeatureDimError,
        CheckpointError,
        ModelConfigError,
        UnknownModelError,
        SpeechEmotionError,
        FaceExpressionError,
    )


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


def _model_option(name: str | None) -> dict[str, object]:
    """The config key ``--model NAME`` sets: ``model.checkpoint``, the preset's file."""
    if name is None:
        return {}
    from realtime_erc.models.presets import PresetError, get_preset

    try:
        return {"model.checkpoint": str(get_preset(name).path)}
    except PresetError as e:
        _fail(str(e))
        raise  # unreachable: _fail exits


def _output_options(
    zmq: str | None, no_zmq: bool, jsonl: Path | None, mqtt: str | None, broker: str | None
) -> dict[str, object]:
    """Config keys set by the output options ``run`` and ``replay`` share."""
    if broker not in (None, "embedded", "none"):
        _fail(f"--broker {broker!r}: choose embedded or none")
    return {
        "output.zmq.endpoint": zmq,
        "output.zmq.enabled": False if no_zmq else None,
        "output.jsonl.path": str(jsonl) if jsonl else None,
        "output.mqtt.url": mqtt,
        "output.mqtt.enabled": True if mqtt else None,
        "broker.embedded": None if broker is None else broker == "embedded",
    }


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
    config = _load(
        config_file,
        overrides,
        **{
            "replay.speed": speed,
            "session.id": session_id,
            **_output_options(zmq, no_zmq, jsonl, mqtt, broker),
            **_model_option(model),
        },
    )
    from realtime_erc.dashboard.server import embedded_services
    from realtime_erc.outputs.console import ConsolePublisher
    from realtime_erc.session import plan_replay, run_session

    extra = [] if quiet else [ConsolePublisher(console)]

    async def session_with_services():
        async with embedded_services(config, announce=console.print):
            # Off the loop: loading the models must not stall the embedded broker.
            plan = await asyncio.to_thread(plan_replay, recording, config, extra)
            return await run_session(plan, config)

    def run() -> None:
        stats = asyncio.run(session_with_services())
        if stats.stopped_early:
            err_console.print("[yellow]stopped early; outputs flushed[/]")

    _guard(run)


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
    _setup_logging("warning")
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
    _setup_logging("warning")
    from realtime_erc.models.presets import measure_cost, presets

    def body() -> None:
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
                _pair(s.valid_weighted_f1, s.valid_accuracy),
                _pair(s.test_weighted_f1, s.test_accuracy),
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

    _guard(body)


def _pair(a: float | None, b: float | None) -> str:
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
    config = _load(
        config_file,
        overrides,
        **{
            "mic.device": mic,
            "camera.device": camera,
            "session.id": session_id,
            **_output_options(zmq, no_zmq, jsonl, mqtt, broker),
            **_model_option(model),
        },
    )
    from realtime_erc.dashboard.server import embedded_services
    from realtime_erc.outputs.console import ConsolePublisher
    from realtime_erc.session import plan_live, run_session

    async def session_with_services(plan) -> None:
        async with embedded_services(config, announce=console.print):
            await run_session(plan, config)

    def body() -> None:
        extra = [] if quiet else [ConsolePublisher(console)]
        plan = plan_live(config, record_dir=record, duration_s=duration, extra_publishers=extra)
        err_console.print(f"session {plan.session_id}: capturing (Ctrl-C to stop)", highlight=False)
        try:
            asyncio.run(session_with_services(plan))
        finally:
            plan.source.close()  # type: ignore[attr-defined]
            _capture_summary(plan.source)
        if plan.source.lost:  # type: ignore[attr-defined]
            _fail(plan.source.lost, code=1)  # type: ignore[attr-defined]

    _guard(body)


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
    config = _load(
        config_file,
        overrides,
        **{"mic.device": mic, "camera.device": camera, "session.id": session_id},
    )
    from realtime_erc.session import live_options, new_session_id
    from realtime_erc.sources.live import open_live, record_live

    def body() -> None:
        sid = config.session.id or new_session_id()
        source = open_live(live_options(config, duration), sid, directory, "realtime-erc record")
        err_console.print(f"recording {sid} to {directory} (Ctrl-C to stop)", highlight=False)
        try:
            asyncio.run(record_live(source))
        finally:
            _capture_summary(source)
        if source.lost:
            _fail(f"{source.lost}; the recording up to then is in {directory}", code=1)

    _guard(body)


def _capture_summary(source) -> None:
    summary = getattr(source, "summary", None)
    if summary is not None:
        fields = ", ".join(f"{k}={v}" for k, v in summary().items())
        err_console.print(f"capture: {fields}", highlight=False)


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
    mqtt: Annotated[
        str | None,
        typer.Option("--mqtt", help="Subscribe to this MQTT broker instead of ZeroMQ."),
    ] = None,
) -> None:
    """Show a live emotion stream in the terminal."""
    _setup_logging("info")
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
    config = _load(config_file, overrides, **_output_options(None, False, None, None, broker))
    from realtime_erc.dashboard.server import DashboardServer, embedded_services

    async def main() -> None:
        config.broker.dashboard = False
        async with embedded_services(config, announce=console.print) as services:
            ws = services[0].ws_url if services else broker_ws
            with DashboardServer(ws, port, topic_prefix=config.output.topic_prefix) as server:
                console.print(f"dashboard: {server.url}")
                await asyncio.Event().wait()

    def run() -> None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    _guard(run)


@app.command()
def report(
    stream: Annotated[Path, typer.Argument(help="A JSONL stream file (replay --jsonl).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report.html or report.png")] = Path(
        "report.html"
    ),
    session_id: Annotated[str | None, typer.Option(help="Which session (default: first).")] = None,
) -> None:
    """An emotion timeline per speaker and a summary table, as HTML or PNG."""
    _setup_logging("info")
    from realtime_erc.outputs.report import write_report

    def run() -> None:
        path = write_report(stream, out, session_id)
        console.print(f"wrote {path}")

    _guard(run)


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
    config = _load(
        config_file,
        overrides,
        **{"replay.speed": speed, "output.zmq.enabled": False, **_model_option(model)},
    )
    from realtime_erc.evaluate_session import SESSION_FILE, SessionEvaluationError

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
                f"provisional acc {_fmt(s.provisional_accuracy)}, "
                f"speakers {s.speaker_accuracy:.3f}",
                soft_wrap=True,
            )

        report = evaluate_sessions(recordings, config, progress)
        # wide enough for every column whatever the terminal (logs, pipes)
        console.print(_sessions_table(report), width=max(console.width, 120), crop=False)
        for outcome in report.skipped:
            console.print(f"skipped {outcome.path}: {outcome.skipped}", soft_wrap=True)
        if out is not None:
            out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            console.print(f"wrote {out}")

    def run() -> None:
        try:
            if len(recordings) == 1 and (recordings[0] / SESSION_FILE).is_file():
                single(recordings[0])
            else:
                several()
        except SessionEvaluationError as e:
            raise UserError(str(e)) from None

    _guard(run)


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
    from realtime_erc.fusion import FUSION_FILE, fit_fusion, per_condition, rows_of, save_fusion

    config = _load(
        config_file,
        overrides,
        **{"replay.speed": speed, "output.zmq.enabled": False, "fusion.mode": "off",
           **_model_option(model)},
    )  # fmt: skip

    def run() -> None:
        if (scores is None) == (not recordings):
            raise UserError("give development sessions or --scores FILE (one of them)")
        sources = [scores] if scores is not None else list(recordings or [])
        if any("test" in p.resolve().parts for p in sources):
            raise UserError(
                "fit-fusion fits on the valid half only: a path under test/ was given; score "
                "the test half once with `evaluate-session` after fitting"
            )
        if scores is not None:
            report = json.loads(scores.read_text())
        else:
            from realtime_erc.evaluate_session import evaluate_sessions

            report = evaluate_sessions(sources, config).to_dict()
        rows = rows_of(report)
        if not rows or not report.get("model"):
            raise UserError("no scored final events to fit on: run with a model and sessions "
                            "whose label set is the model's")  # fmt: skip
        paths = [s["path"] for s in report.get("sessions", []) if "per_utterance" in s]
        where = f"{len(paths)} sessions under {os.path.commonpath(paths)}" if paths else "?"
        params = fit_fusion(rows, report["model"], fitted_on=f"{len(rows)} utterances of {where}")
        save_fusion(params, out or FUSION_FILE)
        before = per_condition(rows, None)
        console.print(f"{params.model}: weights {params.weights}, gates {params.gates}")
        for condition, fused in sorted(per_condition(rows, params).items()):
            console.print(f"  {condition}: final wF1 {before[condition]:.3f} -> {fused:.3f}")
        console.print(f"wrote {out or FUSION_FILE}")

    _guard(run)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _sessions_table(report):  # MultiSessionReport -> rich Table
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
            _fmt(p["provisional"]["weighted_f1"]),
            _fmt(p["provisional"]["accuracy"]),
            _fmt(p["final"]["weighted_f1"]),
            _fmt(p["final"]["accuracy"]),
            _fmt(p["speaker_accuracy"]),
            end_section=k == len(rows) - 2,
        )
    return table


def _show_report(report, out: Path, soft_wrap: bool = False) -> None:
    """Write a benchmark report (JSON + markdown) under ``out`` and print it."""
    paths = report.write(out)
    console.print(report.markdown(), soft_wrap=soft_wrap)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")


@bench_app.command("stream")
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
    _setup_logging("warning")
    from realtime_erc.bench.stream import run_stream_benchmark

    def run() -> None:
        result = run_stream_benchmark(events, rate, burst, runs, mqtt_url=mqtt)
        _show_report(result, out)

    _guard(run)


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
        _show_report(report, out)

    _guard(run)


@bench_app.command("overload")
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
    config = _load(config_file, profile + (overrides or []))

    def run() -> None:
        from realtime_erc.bench.overload import run_overload_benchmark

        report = run_overload_benchmark(recording, config, speed=speed, runs=runs)
        _show_report(report, out)

    _guard(run)


@bench_app.command("soak")
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
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """A long session at --speed max: memory growth, latency drift, model cache bounds."""
    config = _load(config_file, overrides)
    from realtime_erc.bench.soak import SoakOptions, run_soak_benchmark

    def run() -> None:
        options = SoakOptions(minutes=minutes, source=source)
        if cache_dir is not None:
            options.cache_dir = cache_dir
        result = run_soak_benchmark(config, options)
        _show_report(result, out)
        if failures := result.failures():
            _fail("soak criteria not met: " + "; ".join(failures), code=1)

    _guard(run)


DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Dataset directory (default: $REALTIME_ERC_DATA, else data.dir)."),
]


@bench_app.command("features")
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
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.bench.features import FeatureBenchOptions, run_features_benchmark

        data_dir = config.data.resolve(data)
        options = FeatureBenchOptions(runs=runs, data_dir=data_dir, threads=threads)
        report = run_features_benchmark(options)
        _show_report(report, out, soft_wrap=True)

    _guard(run)


@bench_app.command("speakers")
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
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.bench.speakers import DataMissingError, run_speakers_benchmark

        try:
            report = run_speakers_benchmark(
                config.data.resolve(data), actors=actors, utterances=utterances, seeds=seeds
            )
        except DataMissingError as e:
            raise UserError(str(e)) from None
        _show_report(report, out, soft_wrap=True)

    _guard(run)


@bench_app.command("models")
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
    _setup_logging("warning")

    def run() -> None:
        from realtime_erc.bench.models import ModelBenchOptions, run_models_benchmark
        from realtime_erc.models.registry import MODELS

        names = [m.strip() for m in models.split(",") if m.strip()] if models else None
        unknown = [m for m in names or [] if m not in MODELS]
        if unknown:
            raise UserError(f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}")
        try:
            sizes = [int(x) for x in lengths.split(",") if x.strip()]
        except ValueError:
            raise UserError(
                f"--lengths {lengths!r}: expected integers such as 10,100,1000"
            ) from None
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
        _show_report(report, out, soft_wrap=True)

    _guard(run)


ExtractorArg = Annotated[str, typer.Argument(help="speech (RAVDESS) | face (FER2013)")]


def _extractor_kind(kind: str) -> str:
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
            "teacher=a.pt,b.pt, net.widths=64,128,256,512.",
        ),
    ] = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train the speech-emotion (RAVDESS) or facial-expression (FER2013) head."""
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.training.extractors import train_extractor

        if _extractor_kind(kind) == "speech" and (option or device != "cpu"):
            raise UserError(
                "--option and --device apply to the face head only (train it with: face)"
            )
        info = train_extractor(
            _extractor_kind(kind),
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

    _guard(run)


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
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.training.extractors import evaluate_extractor

        result = evaluate_extractor(
            _extractor_kind(kind), config.data.resolve(data), checkpoint, console
        )
        console.print_json(json.dumps(result))

    _guard(run)


DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Dataset directory (default: $REALTIME_ERC_DATA, else data.dir)."),
]


TextAdapterOpt = Annotated[
    Path | None,
    typer.Option(help="Encode text with this emotion-adapted encoder (train-text-encoder)."),
]


def _fold(value: str | None) -> tuple[int, int]:
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
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.features.assets import cache_root
        from realtime_erc.features.text import encoder_spec
        from realtime_erc.training.datasets import TEXT_DATASETS, load_text_corpus
        from realtime_erc.training.extractors import _Bars
        from realtime_erc.training.text_finetune import TextFinetuneOptions, finetune_text_encoder

        if data not in TEXT_DATASETS:
            raise UserError(f"--data {data!r}: choose one of {', '.join(TEXT_DATASETS)}")
        try:
            encoder_spec(encoder)
        except ValueError as e:
            raise UserError(f"--encoder: {e}") from None
        k, n = _fold(fold)
        corpus = load_text_corpus(data, config.data.resolve(data_dir))
        options = TextFinetuneOptions(
            epochs=epochs, lr=lr, rank=rank, context_turns=context_turns, seed=seed,
            subset=subset, threads=threads, encoder=encoder, lora_layers=lora_layers,
            folds=n, fold=k,
        )  # fmt: skip
        sub = f"-sub{subset}" if subset else ""
        ctx = f"-ctx{context_turns}" if context_turns else ""
        base = "" if encoder == "minilm" else f"-{encoder}"
        top = f"-top{lora_layers}" if lora_layers else ""
        part = f"-fold{k}of{n}" if n > 1 else ""
        name = f"{data}{base}-r{rank}{top}{ctx}{part}-seed{seed}{sub}"
        work = cache_root() / "train" / "text" / name
        target = out or work / "adapter.pt"
        with _Bars(err_console) as bars:
            info = finetune_text_encoder(corpus, target, work, options, bars, resume=not fresh)
        summary = {"adapter": str(target), "valid": info["valid"],
                   "train_seconds": info["train_seconds"]}  # fmt: skip
        console.print_json(json.dumps(summary))

    _guard(run)


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see the registry).")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="iemocap | meld | emorynlp | assembled | assembled+heads (the emotion heads' "
            "scores too) | a published feature .pkl.",
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
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.models.options import _parse_override
        from realtime_erc.models.registry import model_class
        from realtime_erc.training.erc_trainer import (
            ErcTrainOptions,
            load_data,
            run_dir,
            run_name,
            train_erc,
        )
        from realtime_erc.training.extractors import _Bars

        model_class(model)  # unknown names fail before the data are read
        try:
            params = dict(_parse_override(p) for p in param or [])
        except ValueError as e:
            raise UserError(f"--param: {e}") from None
        options = ErcTrainOptions(
            model, seed=seed, causal=not bidirectional, max_epochs=epochs, patience=patience,
            lr=lr, batch_dialogues=batch, model_config=params, subset=subset,
            modality_dropout=modality_dropout,
        )  # fmt: skip
        with _Bars(err_console) as bars:
            dataset = load_data(
                data, config.data.resolve(data_dir), progress=bars, text_adapter=text_adapter
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

    _guard(run)


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
    config = _load(config_file, overrides)

    def run() -> None:
        from realtime_erc.training.extractors import _Bars

        if all_runs == (checkpoint is not None):
            raise UserError("give either a CHECKPOINT or --all")
        directory = config.data.resolve(data_dir)
        if all_runs:
            from realtime_erc.training.results import ResultsPlan, regenerate

            with _Bars(err_console) as bars:
                path = regenerate(directory, out, ResultsPlan(budget_minutes=budget), bars)
            console.print(f"wrote {path}")
            return
        from realtime_erc.models.checkpoint import read_checkpoint
        from realtime_erc.training.erc_trainer import evaluate_checkpoint, load_data

        if split not in ("train", "valid", "test"):
            raise UserError(f"--split {split!r}: choose train, valid or test")
        provenance = read_checkpoint(checkpoint).get("provenance") or {}
        dataset = data or provenance.get("dataset")
        if not dataset:
            raise UserError(f"{checkpoint} does not say its dataset: pass --data")
        encoder = (provenance.get("features") or {}).get("text")
        with _Bars(err_console) as bars:
            loaded = load_data(dataset, directory, encoder_identity=encoder, progress=bars)
        result = evaluate_checkpoint(checkpoint, loaded, split, subset)
        result.pop("confusion")
        console.print_json(json.dumps(result))

    _guard(run)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
