"""A PulseAudio virtual microphone for the live-capture tests (the ``pulse`` fixture).

The fixture starts its own PulseAudio daemon (private ``XDG_RUNTIME_DIR``, ``HOME`` and config
dirs under ``tmp_path``) with a null sink ``vsink`` and a source ``vmic`` remapped from its
monitor: whatever ``paplay --device=vsink`` plays is what ``vmic`` records. PortAudio reaches it
through ALSA's ``pulse`` plugin, so sounddevice lists it as ``pulse`` (and ``default``). The
daemon is stopped by its PID. Test modules import ``pulse_fixture`` from here (a
``conftest.py`` in this folder would shadow the top-level one's module name).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DEFAULT_PA = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=vsink rate=48000 channels=2
load-module module-remap-source master=vsink.monitor source_name=vmic
set-default-source vmic
set-default-sink vsink
"""


@dataclass
class PulseServer:
    """A private PulseAudio daemon with the ``vsink`` → ``vmic`` virtual microphone."""

    root: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sub in ("run", "home", "config"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "default.pa").write_text(DEFAULT_PA)
        self.socket = self.root / "run" / "pulse" / "native"
        self.env = {
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "HOME": str(self.root / "home"),
            "PULSE_CONFIG_PATH": str(self.root / "config"),
            "PULSE_STATE_PATH": str(self.root / "config"),
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_SOURCE": "vmic",
            "PULSE_SINK": "vsink",
        }

    def start(self) -> None:
        cmd = [
            "pulseaudio",
            "--daemonize=no",
            "--system=false",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--disable-shm",
            "-n",
            "-F",
            str(self.root / "default.pa"),
            "--log-target=stderr",
        ]
        log = (self.root / "pulseaudio.log").open("ab")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pulseaudio exited: {(self.root / 'pulseaudio.log').read_text()}"
                )
            ok = subprocess.run(
                ["pactl", "info"], env={**os.environ, **self.env}, capture_output=True
            )
            if ok.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("pulseaudio did not come up within 15 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon by its PID (SIGKILL simulates the device vanishing)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def play(self, wav: Path) -> subprocess.Popen:
        """Start playing ``wav`` into the virtual microphone; returns the paplay process."""
        return subprocess.Popen(
            ["paplay", "--device=vsink", str(wav)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def tone(freq: float, seconds: float, rate: int = 48000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(name="pulse")
def pulse_fixture(tmp_path_factory, monkeypatch) -> Iterator[PulseServer]:
    """A running virtual microphone; this process's env points PortAudio at it."""
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make setup installs pulseaudio-utils)")
    # A short path: the unix socket path must stay under 108 bytes.
    server = PulseServer(tmp_path_factory.mktemp("pa"))
    server.start()
    for key, value in server.env.items():
        if key not in ("HOME",):
            monkeypatch.setenv(key, value)
    from realtime_erc.sources.microphone import refresh_devices

    refresh_devices()  # PortAudio lists devices at initialisation: rescan with pulse up
    try:
        yield server
    finally:
        server.stop()
        refresh_devices()
