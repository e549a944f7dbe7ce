"""Microphone capture: device resolution (pure logic), the 16 kHz conversion, and real capture
from a PulseAudio virtual microphone (tone in → tone out, device lost, device returns)."""

from __future__ import annotations

import asyncio
import signal

import numpy as np
import pytest
import soundfile as sf
from pulse_server import PulseServer, pulse_fixture, tone, write_wav  # noqa: F401

from realtime_erc.events import SAMPLE_RATE, AudioChunk, now
from realtime_erc.sources.clock import SessionClock
from realtime_erc.sources.live import LiveSource
from realtime_erc.sources.microphone import (
    InputDevice,
    Microphone,
    MicrophoneError,
    MicrophoneOptions,
    MonoResampler,
    refresh_devices,
    resolve_input,
)
from realtime_erc.sources.recording import Recording

INPUTS = [
    InputDevice(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "ALSA", 2, 44100.0),
    InputDevice(3, "USB Audio Device: Mic (hw:1,0)", "ALSA", 1, 48000.0),
    InputDevice(5, "pulse", "ALSA", 32, 44100.0),
    InputDevice(6, "default", "ALSA", 32, 44100.0, is_default=True),
]


# -- device resolution (pure logic) -----------------------------------------------------------


def test_resolve_default_index_and_name():
    assert resolve_input("default", INPUTS).index == 6
    assert resolve_input("3", INPUTS).name.startswith("USB")
    assert resolve_input("usb", INPUTS).index == 3  # substring, any case
    assert resolve_input("pulse", INPUTS).index == 5  # exact name


def test_resolve_default_without_a_default_takes_the_first():
    assert resolve_input("default", INPUTS[:2]).index == 0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("9", "no audio input with index 9"),
        ("webcam", "no audio input matches 'webcam'"),
        ("hw:", "matches several audio inputs"),
    ],
)
def test_resolve_errors_name_the_problem_and_fix(spec, needle):
    with pytest.raises(MicrophoneError) as e:
        resolve_input(spec, INPUTS)
    assert needle in str(e.value)
    assert "realtime-erc devices" in str(e.value) or "pass its index" in str(e.value)


def test_resolve_without_any_input():
    with pytest.raises(MicrophoneError, match="no audio input device found"):
        resolve_input("default", [])


# -- conversion to the pipeline's 16 kHz mono -------------------------------------------------


def test_resampler_is_independent_of_block_size(tmp_path):
    """Live blocks of any size give the samples replay's 0.5 s blocks give (same soxr path)."""
    rng = np.random.default_rng(0)
    native = (rng.standard_normal((44100 * 2, 2)) * 0.1).astype(np.float32)
    live = MonoResampler(44100)
    sizes = rng.integers(200, 3000, size=200)
    pieces, i = [], 0
    for n in sizes:
        if i >= len(native):
            break
        pieces.append(live(native[i : i + n]))
        i += n
    pieces.append(live(native[i:]))
    got = np.concatenate(pieces)

    path = write_wav(tmp_path / "x.wav", native, 44100)
    info = sf.info(path)
    rec = Recording(
        path=tmp_path,
        session_id="x",
        created=None,
        audio_path=path,
        video_path=None,
        fps=None,
        frame_times=None,
        speakers=(),
        label_set=None,
        source="",
        annotations=(),
        audio_sample_rate=44100,
        audio_channels=2,
        audio_frames=info.frames,
    )
    want = rec.read_audio()
    assert abs(len(want) - len(got)) < 200  # replay also emits the resampler's tail
    n = len(got)
    np.testing.assert_allclose(got, want[:n], atol=2e-4)  # 16-bit file vs float input


def test_resampler_passes_16k_mono_through():
    block = np.linspace(-1, 1, 320, dtype=np.float32)[:, None]
    out = MonoResampler(SAMPLE_RATE)(block)
    np.testing.assert_array_equal(out, block[:, 0])


# -- real capture from the PulseAudio virtual microphone --------------------------------------


async def _collect(source: LiveSource, until_s: float) -> list[AudioChunk]:
    chunks = []
    async for event in source:
        if isinstance(event, AudioChunk):
            chunks.append(event)
            if event.end >= until_s:
                source.request_stop()
    return chunks


@pytest.mark.slow
async def test_tone_played_into_the_virtual_mic_comes_out_at_16k(pulse: PulseServer, tmp_path):
    wav = write_wav(tmp_path / "tone.wav", tone(440.0, 3.0), 48000)
    mic = Microphone(MicrophoneOptions(device="pulse"), SessionClock())
    assert mic.channels == 2 and mic.samplerate == 44100  # native rate, stereo → mono
    source = LiveSource(mic)
    latencies: list[float] = []

    async def consume() -> list[AudioChunk]:
        chunks = []
        player = None
        async for event in source:
            latencies.append(now() - event.received_at)
            chunks.append(event)
            if player is None:
                player = pulse.play(wav)
            if event.end >= 4.0:
                source.request_stop()
        player.wait(timeout=10)
        return chunks

    chunks = await asyncio.wait_for(consume(), timeout=30)
    assert mic.stats.overflows == 0
    assert chunks[0].start == 0.0
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start == pytest.approx(a.end, abs=1e-9)  # contiguous, sample-counted
    audio = np.concatenate([c.samples for c in chunks])
    loud = np.abs(audio) > 0.1
    assert loud.mean() > 0.4  # about 3 s of tone in 4 s
    start = int(np.argmax(loud)) + 1600
    window = audio[start : start + SAMPLE_RATE]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(window)
    assert peak_hz == pytest.approx(440.0, abs=3.0)
    assert np.median(latencies) < 0.05  # callback → consumer on an idle loop


@pytest.mark.slow
async def test_lost_device_ends_cleanly_keeping_what_was_captured(pulse: PulseServer):
    mic = Microphone(MicrophoneOptions(device="pulse"), SessionClock())
    source = LiveSource(mic)
    chunks = []

    async def consume() -> None:
        async for event in source:
            chunks.append(event)
            if event.end >= 1.0 and pulse.proc.poll() is None:
                pulse.stop(signal.SIGKILL)  # the sound server (= the device) vanishes

    await asyncio.wait_for(consume(), timeout=20)
    assert source.lost is not None
    assert "microphone 'pulse' (#0) was lost" in source.lost
    assert 'mic.on_device_lost = "wait"' in source.lost
    assert sum(len(c.samples) for c in chunks) >= SAMPLE_RATE  # the second before is kept


@pytest.mark.slow
async def test_wait_mode_resumes_when_the_device_returns(pulse: PulseServer):
    options = MicrophoneOptions(device="pulse", on_device_lost="wait", wait_timeout_s=20)
    mic = Microphone(options, SessionClock())
    source = LiveSource(mic)
    state = {"killed": False}

    async def consume() -> list[AudioChunk]:
        chunks = []
        async for event in source:
            chunks.append(event)
            if event.end >= 1.0 and not state["killed"]:
                state["killed"] = True
                pulse.stop(signal.SIGKILL)
                await asyncio.sleep(1.0)
                pulse.start()
            if mic.stats.reopened and event.end >= 4.0:
                source.request_stop()
        return chunks

    chunks = await asyncio.wait_for(consume(), timeout=40)
    assert source.lost is None
    assert mic.stats.reopened == 1
    assert mic.stats.silence_s > 0.5  # the gap is filled, so audio keeps its session time
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start == pytest.approx(a.end, abs=1e-9)


def test_no_sound_server_means_no_input(monkeypatch, tmp_path):
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/nothing-here")
    refresh_devices()
    try:
        with pytest.raises(MicrophoneError, match="no audio input"):
            Microphone(MicrophoneOptions(device="default"), SessionClock())
    finally:
        monkeypatch.undo()
        refresh_devices()
