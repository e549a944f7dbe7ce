"""Run inside a private network namespace by tests/serve/test_serve_ray.py (not a test module):
start ``realtime-erc serve --ray`` on loopback, stream a recording with the Python client, and
write what came back to the JSON file named by the first argument."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from realtime_erc.client import stream_recording


def main(result_path: str, recording: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_erc", "serve", "--ray", "--port", "8765", "--no-zmq"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "250"},  # the announcement on one line
    )  # fmt: skip
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "sessions: ws://" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    result: dict = {"ready": False}
    try:
        started = time.monotonic()
        result["ready"] = ready.wait(300)
        result["startup_s"] = time.monotonic() - started
        if result["ready"]:
            url = re.search(r"sessions: (ws://\S+)", "".join(lines)).group(1)
            documents = asyncio.run(stream_recording(url, Path(recording), pace="max"))
            result["url"] = url
            result["documents"] = documents
    finally:
        proc.terminate()  # SIGTERM: the application is deleted, the local Ray shut down
        try:
            result["exit_code"] = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["exit_code"] = None
        result["output"] = "".join(lines)[-4000:]
        Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
