"""Live microphone capture with sounddevice (PortAudio).

The device is opened at its native rate and channel count; the PortAudio callback only copies
the block and hands it to the event loop (``loop.call_soon_threadsafe``). On the loop, blocks are
averaged to mono and resampled to 16 kHz by a streaming soxr resampler (quality HQ) — the same
conversion :meth:`Recording.iter_audio` applies on replay, so a recording of the native blocks
replays as the very samples the live pipeline saw. Audio is never dropped: blocks wait in an
unbounded buffer until the pipeline takes them, and a growing backlog is logged.

Session clock: the first sample of the first block is session time 0; chunk starts then count
samples (the device's own clock), so audio has no jitter. A device that disappears mid-session
ends the capture with :attr:`Microphone.lost` set (``on_device_lost = "stop"``) or is waited for
and reopened, the gap filled with silence so audio stays aligned with video (``"wait"``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import soxr

from realtime_erc.config import MicrophoneOptions
from realtime_erc.errors import UserError
from realtime_erc.events import SAMPLE_RATE, AudioChunk, now
from realtime_erc.sources.clock import SessionClock

log = logging.getLogger(__name__)

MAX_CHANNELS = 2  # channels opened when mic.channels = 0 (the pulse/default devices claim 32)
LOST_AFTER_S = 5.0  # no block for this long (and at least 20 blocks' time) = device lost
STARTUP_GRACE_S = 10.0  # a device (or sound server) may take this long to deliver its first block
BACKLOG_WARN_S = 2.0


class MicrophoneError(UserError, RuntimeError):
    """A microphone problem a user can fix (no device, bad index, busy); names the fix."""


@dataclass(frozen=True, slots=True)
class InputDevice:
    """An audio input as PortAudio lists it."""

    index: int
    name: str
    hostapi: str
    max_channels: int
    default_samplerate: float
    is_default: bool = False


@dataclass
class MicrophoneStats:
    blocks: int = 0
    overflows: int = 0
    """Blocks PortAudio flagged with an input overflow (samples lost inside the driver)."""
    samples_in: int = 0
    """Native-rate frames received from the device."""
    samples_out: int = 0
    """16 kHz samples handed to the pipeline."""
    silence_s: float = 0.0
    """Silence inserted for the time the device was away (on_device_lost = "wait")."""
    reopened: int = 0
    max_backlog_s: float = 0.0


def load_sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio library into a :class:`MicrophoneError`."""
    try:
        import sounddevice
    except OSError as e:
        raise MicrophoneError(
            f"PortAudio is not available ({e}): install libportaudio2 (make setup does)"
        ) from None
    return sounddevice


def refresh_devices() -> None:
    """Re-scan audio devices. PortAudio lists devices once, at initialisation; call this with
    no stream open to see devices (or sound servers) that appeared since."""
    sd = load_sounddevice()
    sd._terminate()
    sd._initialize()


def list_inputs() -> list[InputDevice]:
    """Every device with input channels, as PortAudio sees it now."""
    sd = load_sounddevice()
    hostapis = sd.query_hostapis()
    try:
        default_in = sd.query_devices(kind="input")["index"]
    except Exception:  # PortAudioError: no default input
        default_in = -1
    inputs = []
    for info in sd.query_devices():
        if info["max_input_channels"] <= 0:
            continue
        inputs.append(
            InputDevice(
                index=info["index"],
                name=info["name"],
                hostapi=hostapis[info["hostapi"]]["name"],
                max_channels=info["max_input_channels"],
                default_samplerate=float(info["default_samplerate"]),
                is_default=info["index"] == default_in,
            )
        )
    return inputs


def resolve_input(spec: str, inputs: Sequence[InputDevice]) -> InputDevice:
    """Pick the input ``spec`` names: ``default``, an index, or part of a name (any case).

    An exact name wins over substrings; several substring matches are an error listing them.
    """
    spec = spec.strip()
    listing = ", ".join(f"{d.index}: {d.name}" for d in inputs) or "none"
    hint = "run `realtime-erc devices` to list them, then pass --mic INDEX or part of a name"
    if not inputs:
        raise MicrophoneError(
            "no audio input device found (is a microphone connected and the sound server "
            "running?); run `realtime-erc devices` to check"
        )
    if spec.lower() == "default":
        for d in inputs:
            if d.is_default:
                return d
        return inputs[0]
    if spec.isdigit():
        for d in inputs:
            if d.index == int(spec):
                return d
        raise MicrophoneError(f"no audio input with index {spec} (inputs: {listing}); {hint}")
    exact = [d for d in inputs if d.name.lower() == spec.lower()]
    if exact:
        return exact[0]
    matches = [d for d in inputs if spec.lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MicrophoneError(f"no audio input matches {spec!r} (inputs: {listing}); {hint}")
    names = ", ".join(f"{d.index}: {d.name}" for d in matches)
    raise MicrophoneError(f"{spec!r} matches several audio inputs ({names}); pass its index")


class MonoResampler:
    """Native ``[n, channels]`` float32 blocks → 16 kHz mono ``[m]`` float32, streaming.

    Channels are averaged, then soxr (HQ) resamples; this is exactly the conversion
    ``Recording.iter_audio`` applies, so live audio and its replay agree sample for sample.
    """

    def __init__(self, samplerate: int) -> None:
        self.samplerate = samplerate
        self._soxr = (
            None
            if samplerate == SAMPLE_RATE
            else soxr.ResampleStream(samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        if self._soxr is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        return np.ascontiguousarray(self._soxr.resample_chunk(mono, last=last), dtype=np.float32)


@dataclass
class _Block:
    data: np.ndarray  # [n, channels] float32, native rate
    received_at: float
    overflow: bool = False


@dataclass
class Microphone:
    """One live input stream. Build it (validates the device), then :meth:`start` it on a loop.

    ``on_raw`` receives every native block (``[n, channels]`` float32) in order, e.g. for a
    recorder; it runs on the event loop and must not block.
    """

    options: MicrophoneOptions
    clock: SessionClock
    on_raw: Callable[[np.ndarray], None] | None = None
    stats: MicrophoneStats = field(default_factory=MicrophoneStats)
    lost: str | None = None
    """Why the device ended the capture, or None while it delivers."""

    def __post_init__(self) -> None:
        self._sd = load_sounddevice()
        self.device = resolve_input(self.options.device, list_inputs())
        self.samplerate = self.options.samplerate or int(round(self.device.default_samplerate))
        self.channels = self.options.channels or min(MAX_CHANNELS, self.device.max_channels)
        self.blocksize = max(1, self.samplerate * self.options.block_ms // 1000)
        self._check()
        self._resample = MonoResampler(self.samplerate)
        self._pending: collections.deque[_Block] = collections.deque()
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notify: Callable[[], None] = lambda: None
        self._stopping = False
        self._last_block_at = 0.0
        self._delivering = False
        self._last_overflow_log = 0.0

    @property
    def label(self) -> str:
        return f"{self.device.name!r} (#{self.device.index})"

    def _check(self) -> None:
        try:
            self._sd.check_input_settings(
                device=self.device.index,
                channels=self.channels,
                samplerate=self.samplerate,
                dtype="float32",
            )
        except Exception as e:
            raise MicrophoneError(
                f"microphone {self.label} refuses {self.samplerate} Hz x {self.channels} ch: "
                f"{e}; set mic.samplerate / mic.channels to values it supports (0 = native)"
            ) from None

    # -- stream lifecycle --------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, notify: Callable[[], None]) -> None:
        """Open and start the stream; ``notify`` is called (on the loop) when blocks arrive."""
        self._loop = loop
        self._notify = notify
        self._open()

    def _open(self) -> None:
        self._stopping = False
        try:
            stream = self._sd.InputStream(
                device=self.device.index,
                samplerate=self.samplerate,
                channels=self.channels,
                dtype="float32",
                blocksize=self.blocksize,
                callback=self._callback,
                finished_callback=self._finished_callback,
            )
            stream.start()
        except Exception as e:
            raise MicrophoneError(
                f"microphone {self.label} cannot be opened: {e} (is it in use by another "
                "program, or unplugged? run `realtime-erc devices`)"
            ) from None
        self._stream = stream
        self._last_block_at = now()
        self._delivering = False

    def stop(self) -> None:
        """Stop and close the stream (idempotent). Pending blocks stay readable."""
        self._stopping = True
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception:
                log.debug("closing the input stream failed", exc_info=True)

    # -- PortAudio thread: copy and hand over, nothing else ----------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        block = _Block(indata.copy(), now(), bool(status.input_overflow))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._arrive, block)

    def _finished_callback(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stream_finished)

    # -- event loop side ---------------------------------------------------------------------

    def _arrive(self, block: _Block) -> None:
        if self.clock.origin is None:
            # The first sample was captured one block before the callback saw it.
            self.clock.start_at(block.received_at - len(block.data) / self.samplerate)
        self._last_block_at = block.received_at
        self._delivering = True
        self._pending.append(block)
        self._notify()

    def _stream_finished(self) -> None:
        if not self._stopping and self.lost is None:
            self.lost = "the input stream stopped (device unplugged or sound server gone)"
            self._notify()

    def check_alive(self) -> bool:
        """Declare the device lost when no block came for a long while; True while alive."""
        if self.lost is None and self._stream is not None:
            silent = now() - self._last_block_at
            limit = LOST_AFTER_S if self._delivering else STARTUP_GRACE_S
            if silent > max(limit, 20 * self.blocksize / self.samplerate):
                self.lost = f"no audio from the device for {silent:.1f} s"
        return self.lost is None

    def take_chunks(self) -> list[AudioChunk]:
        """Convert every pending block to 16 kHz mono :class:`AudioChunk` events, in order."""
        chunks = []
        if self._pending:
            backlog = now() - self._pending[0].received_at
            self.stats.max_backlog_s = max(self.stats.max_backlog_s, backlog)
            if backlog > BACKLOG_WARN_S:
                log.warning("microphone: the pipeline is %.1f s behind the device", backlog)
        while self._pending:
            block = self._pending.popleft()
            self.stats.blocks += 1
            if block.overflow:
                self._overflowed(block.received_at)
            chunk = self._convert(block.data, block.received_at)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def finish(self) -> AudioChunk | None:
        """The resampler's tail, once capture has ended."""
        empty = np.zeros((0, self.channels), np.float32)
        tail = self._resample(empty, last=True)
        return self._emit(tail, now()) if tail.size else None

    def _convert(self, data: np.ndarray, received_at: float) -> AudioChunk | None:
        self.stats.samples_in += len(data)
        if self.on_raw is not None:
            self.on_raw(data)
        out = self._resample(data)
        return self._emit(out, received_at) if out.size else None

    def _emit(self, samples: np.ndarray, received_at: float) -> AudioChunk:
        start = self.stats.samples_out / SAMPLE_RATE
        self.stats.samples_out += len(samples)
        return AudioChunk(samples=samples, start=start, received_at=received_at)

    def _overflowed(self, at: float) -> None:
        self.stats.overflows += 1
        if at - self._last_overflow_log >= 1.0:  # at most one line a second
            self._last_overflow_log = at
            log.warning(
                "microphone %s: input overflow (samples lost in the driver; %d so far)",
                self.label,
                self.stats.overflows,
            )

    async def reopen(self) -> bool:
        """Wait for the lost device to come back (``on_device_lost = "wait"``).

        Re-scans devices every half second until the same ``mic.device`` resolves and opens, or
        ``wait_timeout_s`` passes (0 = forever). The time it was away is filled with silence so
        later audio keeps its place on the session clock. Returns whether it came back.
        """
        reason = self.lost
        self.stop()
        log.warning("microphone %s lost (%s); waiting for it to return", self.label, reason)
        lost_at = now()
        timeout = self.options.wait_timeout_s
        while timeout == 0 or now() - lost_at < timeout:
            await asyncio.sleep(0.5)
            try:
                refresh_devices()
                self.device = resolve_input(self.options.device, list_inputs())
                self._check()
                self._open()
            except MicrophoneError as e:
                log.debug("microphone not back yet: %s", e)
                continue
            self._fill_gap()
            self.lost = None
            self.stats.reopened += 1
            log.warning("microphone %s is back", self.label)
            return True
        self.lost = f"{reason}; it did not return within {timeout:g} s"
        return False

    def _fill_gap(self) -> None:
        origin = self.clock.origin
        if origin is None:
            return
        captured = self.stats.samples_in + sum(len(b.data) for b in self._pending)
        gap = now() - origin - captured / self.samplerate
        frames = int(gap * self.samplerate)
        if frames > 0:
            self.stats.silence_s += frames / self.samplerate
            silence = np.zeros((frames, self.channels), np.float32)
            self._pending.append(_Block(silence, now()))
