"""Run the server: the embedded broker first when asked for, then uvicorn on the app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from realtime_erc.config import Config


async def run_server(config: Config, announce: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: open sessions are ended and flushed)."""
    import uvicorn

    from realtime_erc.dashboard.server import embedded_services
    from realtime_erc.serve.app import create_app

    async with embedded_services(config, announce, dashboard=False) as services:
        broker_ws = services.broker.ws_url if services.broker is not None else None
        app = create_app(services.config, dashboard_broker=broker_ws)
        options = services.config.serve
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=options.host, port=options.port, log_level="warning",
                ws_max_size=2 * options.max_message_bytes + 1024, lifespan="on",
                # PCM and JPEG hardly deflate: compressing them costs both ends CPU for nothing
                ws_per_message_deflate=False,
                # a session whose pipeline is behind stops reading its socket (back-pressure),
                # and with it the client's pongs: a ping timeout would end a healthy "max"
                # session. A dead client is found by serve.idle_timeout_s instead.
                ws_ping_timeout=None,
            )
        )  # fmt: skip
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and announce is not None:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            announce(f"serving on http://{host}:{port}/  sessions: ws://{host}:{port}/v1/sessions")
        await task
