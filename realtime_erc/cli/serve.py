"""``realtime-erc serve`` and its client, ``realtime-erc stream``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from realtime_erc.cli.options import (
    BrokerOpt,
    ConfigOpt,
    JsonlOpt,
    MqttOpt,
    NoZmqOpt,
    RayAddressOpt,
    RayOpt,
    SetOpt,
    console,
    err_console,
    load,
    output_options,
)
from realtime_erc.errors import UserError

app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serve.port; 0 = a free one).")] = None,
    no_zmq: NoZmqOpt = False,
    jsonl: JsonlOpt = None,
    mqtt: MqttOpt = None,
    broker: BrokerOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Serve many conversations streamed in over WebSockets (ws://HOST:PORT/v1/sessions), with
    the models loaded once and shared; plus /healthz, /metrics and the dashboard. With --ray:
    the same app as a Ray Serve ingress over model deployments that batch for every replica."""
    config = load(
        config_file,
        overrides,
        **{"serve.host": host, "serve.port": port,
           **output_options(None, no_zmq, jsonl, mqtt, broker)},
    )  # fmt: skip
    if ray_address and not ray:
        raise UserError("--ray-address needs --ray")
    if config.serve.allocator == "jemalloc" and not ray:
        from realtime_erc.serve.allocator import use_jemalloc

        use_jemalloc()  # re-executes this command with jemalloc preloaded
    if ray:
        from realtime_erc.serve.on_ray import run_server_on_ray

        run_server_on_ray(config, ray_address, console.print)
        return
    from realtime_erc.serve.runner import run_server

    asyncio.run(run_server(config, console.print))


@app.command()
def stream(
    url: Annotated[
        str, typer.Argument(help="The server's sessions URL, ws://HOST:PORT/v1/sessions.")
    ],
    recording: Annotated[
        Path | None, typer.Option(help="Stream this recording instead of live capture.")
    ] = None,
    mic: Annotated[str | None, typer.Option("--mic", help="Audio input (see devices).")] = None,
    camera: Annotated[str | None, typer.Option("--camera", help="Camera or video file.")] = None,
    speed: Annotated[str, typer.Option(help="--recording: realtime | max.")] = "realtime",
    jsonl: JsonlOpt = None,
    token: Annotated[
        str | None, typer.Option(help="Access token (default: $REALTIME_ERC_TOKEN).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the stream.")] = False,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Stream the microphone (and camera), or a recording, to `realtime-erc serve` and print the
    emotions that come back, as replay does."""
    if (recording is None) == (mic is None):
        raise UserError("give --mic DEVICE (live) or --recording DIR (one of them)")
    if speed not in ("realtime", "max"):
        raise UserError(f"--speed {speed!r}: choose realtime or max")
    config = load(config_file, overrides, **{"mic.device": mic, "camera.device": camera})
    from realtime_erc.client import stream_live, stream_recording
    from realtime_erc.outputs.console import format_document

    token = token or os.environ.get("REALTIME_ERC_TOKEN")
    out = jsonl.open("a", encoding="utf-8") if jsonl else None

    def each(document: dict[str, Any]) -> None:
        if not quiet:
            console.print(format_document(document))
        if out is not None:
            out.write(json.dumps(document, ensure_ascii=False) + "\n")
            out.flush()

    async def main() -> None:
        if recording is not None:
            await stream_recording(url, recording, pace=speed, token=token, on_document=each)
            return
        from realtime_erc.session import live_options, new_session_id
        from realtime_erc.sources.live import open_live, stop_on_signals

        source = open_live(live_options(config), new_session_id(), None, "realtime-erc stream")
        err_console.print(f"streaming to {url} (Ctrl-C to stop)", highlight=False)
        try:
            # Ctrl-C ends the capture; the server then sends the last events and "offline"
            with stop_on_signals(source.request_stop):
                await stream_live(url, source, token=token, on_document=each)
        finally:
            source.close()

    try:
        asyncio.run(main())
    finally:
        if out is not None:
            out.close()
