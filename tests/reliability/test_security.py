"""Security (issue 8, part 5): loopback listeners by default, MQTT username/password + TLS against
a real mosquitto (password file and self-signed CA made here), nothing from the microphone or
camera written to disk unless recording is asked for, topic ids sanitised."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "outputs"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sources"))
from cli_support import DEMO, ROOT  # noqa: E402
from pulse_server import pulse_fixture  # noqa: E402, F401
from test_zmq import emotion_doc  # noqa: E402

from realtime_erc.config import Config  # noqa: E402
from realtime_erc.dashboard.server import DashboardServer  # noqa: E402
from realtime_erc.features.assets import cache_root  # noqa: E402
from realtime_erc.outputs.broker import (  # noqa: E402
    EmbeddedBroker,
    find_mosquitto,
    free_port,
    wait_for_port,  # noqa: E402
)
from realtime_erc.outputs.mqtt import MqttOptions, MqttPublisher, MqttSubscriber  # noqa: E402
from realtime_erc.outputs.publisher import OutputError  # noqa: E402
from realtime_erc.outputs.topics import emotion_topic, sanitize_id  # noqa: E402
from realtime_erc.outputs.zmq import ZmqPublisher  # noqa: E402

TIMEOUT = 10.0
LOOPBACK4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LOOPBACK6 = "00000000000000000000000001000000"  # ::1


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) of TCP sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_every_listener_defaults_to_loopback() -> None:
    config = Config()
    assert urlsplit(config.output.zmq.endpoint.replace("tcp://", "http://")).hostname == "127.0.0.1"
    assert urlsplit(config.output.mqtt.url).hostname == "127.0.0.1"
    assert config.broker.host == "127.0.0.1"
    assert EmbeddedBroker().host == "127.0.0.1"
    assert DashboardServer().host == "127.0.0.1"


async def test_servers_started_by_the_project_listen_on_loopback_only() -> None:
    host = urlsplit(Config().output.zmq.endpoint.replace("tcp://", "http://")).hostname
    zmq_port = free_port()
    pub = ZmqPublisher(f"tcp://{host}:{zmq_port}")
    pub.bind()
    broker = EmbeddedBroker()
    await broker.start()
    dashboard = DashboardServer(broker.ws_url)
    dashboard.start()
    try:
        ports = {"zmq": zmq_port, "mqtt": broker.port, "ws": broker.ws_port}
        ports["dashboard"] = dashboard.port
        for name, port in ports.items():
            addresses = listening_addresses(port)
            assert addresses, f"{name}: nothing listens on {port}"
            assert addresses <= {LOOPBACK4, LOOPBACK6}, f"{name} listens on {addresses}"
    finally:
        dashboard.stop()
        await broker.stop()
        await pub.close()


# ---------------------------------------------------------------------------------------------
# MQTT username/password and TLS, with mosquitto


def _run(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """mosquitto with ``allow_anonymous false``, a password file (user ``erc``, password
    ``s3cret``) and a TLS listener on 127.0.0.1 whose certificate a self-signed CA signed.
    Yields ``(port, ca_file, directory)``; stopped by PID."""
    executable = find_mosquitto()
    for tool in ("openssl", "mosquitto_passwd"):
        if executable is None or shutil.which(tool) is None:
            pytest.skip(f"{tool} / mosquitto missing: run `make setup` (openssl, mosquitto)")
    d = tmp_path_factory.mktemp("tls")
    _run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=realtime-erc test CA",
        cwd=d,
    )
    _run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=d,
    )
    _run("mosquitto_passwd", "-b", "-c", str(d / "passwd"), "erc", "s3cret", cwd=d)
    port = free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {d / 'passwd'}",
        f"cafile {d / 'ca.crt'}",
        f"certfile {d / 'server.crt'}",
        f"keyfile {d / 'server.key'}",
        f"log_dest file {d / 'mosquitto.log'}",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    (d / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    os.chmod(d / "passwd", 0o600)
    proc = subprocess.Popen(
        [executable, "-c", str(d / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield port, str(d / "ca.crt"), d
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.mark.slow
async def test_credentials_over_tls_deliver(secure_broker) -> None:
    port, ca, _ = secure_broker
    url = f"mqtts://127.0.0.1:{port}"
    options = MqttOptions(url=url, username="erc", password="s3cret", tls={"ca_file": ca})
    sub = MqttSubscriber(options, session_id="sec")
    pub = MqttPublisher(options, "sec", "meld7")
    async with sub:
        await pub.start()
        await pub.publish(emotion_topic("erc", "sec", "A"), emotion_doc(1, "sec"))
        await pub.close()
        _, doc = await asyncio.wait_for(sub.receive(), TIMEOUT)
    assert doc["utterance_id"] == 1 and pub.delivered >= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        MqttOptions(username="erc", password="wrong", connect_timeout_s=3),
        MqttOptions(connect_timeout_s=3),  # anonymous
        MqttOptions(username="erc", password="s3cret", connect_timeout_s=3),  # CA not given
    ],
    ids=["wrong-password", "anonymous", "untrusted-cert"],
)
async def test_refused_connections_are_output_errors(secure_broker, options) -> None:
    port, ca, _ = secure_broker
    options = options.with_values({"url": f"mqtts://127.0.0.1:{port}"})
    if options.password != "s3cret" or options.username == "":
        options = options.with_values({"tls.ca_file": ca})
    with pytest.raises(OutputError, match=f"127.0.0.1:{port}"):
        await MqttPublisher(options, "sec", "meld7").start()


@pytest.mark.slow
@pytest.mark.parametrize("password,ca", [("wrong", True), ("s3cret", False)])
def test_cli_refusal_is_one_line(secure_broker, run_cli, password: str, ca: bool) -> None:
    port, ca_file, _ = secure_broker
    args = ["--set", "output.mqtt.username=erc", "--set", f"output.mqtt.password={password}"]
    if ca:
        args += ["--set", f"output.mqtt.tls.ca_file={ca_file}"]
    result = run_cli(
        "replay",
        str(DEMO),
        "--no-zmq",
        "-q",
        "--mqtt",
        f"mqtts://127.0.0.1:{port}",
        *args,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) <= 3


# ---------------------------------------------------------------------------------------------
# Nothing from the microphone or camera reaches the disk unless recording is asked for

MEDIA_SUFFIXES = {".wav", ".flac", ".mp4", ".avi", ".json", ".jsonl", ".csv", ".raw", ".pcm"}


def _files(root: Path) -> set[Path]:
    # matplotlib (imported by MediaPipe) caches its font list there: no captured data
    return {p for p in root.rglob("*") if p.is_file() and "matplotlib" not in p.parts}


@pytest.mark.slow
def test_live_run_writes_nothing_unless_recording(pulse, tmp_path: Path) -> None:
    from test_camera import make_video

    video = make_video(tmp_path / "cam.avi", frames=60, fps=30.0)
    home, tmp, cwd, rec = (tmp_path / n for n in ("home", "tmp", "cwd", "rec"))
    for d in (home, tmp, cwd):
        d.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "COLUMNS": "200"}
    env["PYTHONPATH"] = str(ROOT)
    # model files unpacked once from installed packages (the default's MPNet) are not session
    # data: they go to the usual asset cache, outside the folders watched here
    env["REALTIME_ERC_CACHE"] = str(cache_root())
    base = [
        sys.executable,
        "-m",
        "realtime_erc",
        "run",
        "--mic",
        "pulse",
        "--camera",
        str(video),
        "--duration",
        "3",
        "--no-zmq",
        "-q",
    ]
    first = subprocess.run(base, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    written = {p for d in (home, tmp, cwd) for p in _files(d)}
    assert not {p for p in written if p.suffix in MEDIA_SUFFIXES}, written
    second = subprocess.run(
        [*base, "--record", str(rec)], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, second.stderr
    assert {p.name for p in _files(rec)} >= {"session.json", "audio.flac"}
    written = {p for d in (home, tmp, cwd) for p in _files(d)}
    assert not {p for p in written if p.suffix in MEDIA_SUFFIXES}, written


# ---------------------------------------------------------------------------------------------
# Topic ids


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_sanitised_ids_are_one_safe_topic_level(raw: str) -> None:
    safe = sanitize_id(raw)
    assert safe and not set(safe) & set("/+#") and not safe.startswith("$")
    safe.encode("utf-8")  # no lone surrogates
    assert all(ord(ch) >= 0x20 and not 0x7F <= ord(ch) < 0xA0 for ch in safe)
    assert sanitize_id(safe) == safe
    topic = emotion_topic("erc", raw, raw)
    assert topic.count("/") == 3 and topic.endswith("/emotion")
