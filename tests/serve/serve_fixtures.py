"""Helpers for the server's tests (imported by test modules; not a conftest): a real
``realtime-erc serve`` subprocess, plain HTTP, /metrics parsed, short recordings of the demo."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cli_support import DEMO, cli, popen_cli, short_recording
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class ServeProcess:
    """A running server: its sessions URL, its HTTP base, its output lines."""

    proc: subprocess.Popen
    url: str = ""
    http: str = ""
    lines: list[str] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def healthz(self) -> dict:
        status, body = self.get("/healthz")
        assert status == 200, body
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, ``name{label="v",...}`` → value (labels sorted)."""
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse_metrics(body)

    def stop(self) -> str:
        """SIGTERM (open sessions are flushed), then the rest of stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""


def start_server(*args: str, timeout: float = 240) -> ServeProcess:
    """``realtime-erc serve --port 0 --no-zmq ARGS`` on loopback, once its models are loaded."""
    proc = popen_cli("serve", "--host", "127.0.0.1", "--port", "0", "--no-zmq", *args)
    server = ServeProcess(proc)
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            server.lines.append(line)
            if "sessions: ws://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout):
        proc.kill()
        proc.wait()
        raise AssertionError("".join(server.lines) + proc.stderr.read())
    match = re.search(r"serving on (http://\S+?)/?\s+sessions: (ws://\S+)", "".join(server.lines))
    server.http, server.url = match.group(1).rstrip("/"), match.group(2)
    assert server.url.startswith("ws://127.0.0.1:"), server.url  # tests talk to loopback only
    return server


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """The sum of ``name``'s samples over all label values (0 when absent)."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def finals(documents: list[dict]) -> list[dict]:
    return [d for d in documents if d.get("schema") == "erc.emotion/1" and not d["provisional"]]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["DEMO", "cli", "ServeProcess", "start_server", "parse_metrics", "metric_sum",
           "short_recording", "finals", "read_jsonl"]  # fmt: skip
