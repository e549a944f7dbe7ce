"""The ingest protocol (``erc.ingest/1``, docs/INGEST_PROTOCOL.md): messages and limits.

Text messages are JSON objects; binary messages carry media, their first byte the kind:
``0x01`` + PCM s16le audio, ``0x02`` + float64 LE capture time + a JPEG image. Everything a
client can get wrong raises :class:`ProtocolError` with the close code the page names (1008
policy, 1009 too big) and a message that says what to change.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from realtime_erc.config import ServeOptions

SCHEMA = "erc.ingest/1"
AUDIO = 0x01
VIDEO = 0x02

POLICY = 1008
TOO_BIG = 1009
TRY_LATER = 1013
INTERNAL = 1011
NORMAL = 1000

MAX_FRAME_PIXELS = 3840 * 2160
"""Largest decoded video frame (pixels): a small JPEG can declare a huge image."""


class ProtocolError(Exception):
    """A client broke the protocol: ``code`` closes the socket after an ``error`` message."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name

    def document(self) -> dict[str, str]:
        return {"type": "error", "code": self.name, "message": str(self)}


class AudioFormat(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    encoding: Literal["pcm_s16le"] = "pcm_s16le"
    sample_rate: int = Field(16000, gt=0)
    channels: int = Field(1, ge=1)


class VideoFormat(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    encoding: Literal["jpeg"] = "jpeg"


class Start(BaseModel):
    """The ``start`` message (unknown fields are ignored: newer clients stay welcome)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    type: Literal["start"]
    schema_: Literal["erc.ingest/1"] = Field(alias="schema")
    session_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[\w.\-]+$")
    model: str | None = None
    audio: AudioFormat = AudioFormat()
    video: VideoFormat | None = None
    pace: Literal["realtime", "max"] = "realtime"

    @field_validator("session_id")
    @classmethod
    def _not_dots(cls, value: str | None) -> str | None:
        # the id names the session's recording directory (serve.record_dir): never "." or ".."
        if value is not None and not value.strip("."):
            raise ValueError("must not be only dots")
        return value


def limits_document(limits: ServeOptions) -> dict[str, Any]:
    """The limits a ``ready`` message announces."""
    return {
        "max_message_bytes": limits.max_message_bytes,
        "sample_rates": list(limits.sample_rates),
        "max_channels": limits.max_channels,
        "max_frame_bytes": limits.max_frame_bytes,
        "max_frame_pixels": MAX_FRAME_PIXELS,
        "max_fps": limits.max_fps,
        "max_session_s": limits.max_session_s,
    }


def text_message(raw: str, max_bytes: int | None = None) -> dict[str, Any]:
    """A text message as a JSON object with a ``type`` (at most ``max_bytes`` of UTF-8)."""
    if max_bytes is not None and len(raw) > max_bytes // 4 and len(raw.encode()) > max_bytes:
        raise ProtocolError(TOO_BIG, "too_big", f"a message is larger than {max_bytes} bytes")
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(POLICY, "malformed", "a text message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(POLICY, "malformed", 'a text message must be an object with a "type"')
    return message


def parse_start(message: dict[str, Any], limits: ServeOptions) -> Start:
    """The ``start`` message, checked against the protocol and the server's limits."""
    if message.get("type") != "start":
        raise ProtocolError(
            POLICY, "not_started", f'the first message must be "start", not {message["type"]!r}'
        )
    try:
        start = Start.model_validate(message)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "start"
        raise ProtocolError(
            POLICY, "bad_start", f"start.{key}: {first['msg']} (see INGEST_PROTOCOL.md)"
        ) from None
    if start.audio.sample_rate not in limits.sample_rates:
        rates = ", ".join(map(str, limits.sample_rates))
        raise ProtocolError(
            POLICY, "bad_audio", f"audio.sample_rate {start.audio.sample_rate}: send one of {rates}"
        )
    if start.audio.channels > limits.max_channels:
        raise ProtocolError(
            POLICY,
            "bad_audio",
            f"audio.channels {start.audio.channels}: send at most {limits.max_channels}",
        )
    return start


def audio_samples(payload: bytes, audio: AudioFormat) -> np.ndarray:
    """PCM s16le → ``[n, channels]`` float32 in [-1, 1] at the declared rate."""
    frame = 2 * audio.channels
    if len(payload) % frame:
        raise ProtocolError(
            POLICY,
            "bad_audio",
            f"{len(payload)} audio bytes are not whole frames of audio.encoding pcm_s16le with "
            f"audio.channels {audio.channels} ({frame} bytes a frame)",
        )
    samples = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, audio.channels)


def video_frame(payload: bytes, limits: ServeOptions) -> tuple[float, bytes]:
    """(capture time, JPEG bytes) of a video message's payload."""
    if len(payload) < 9:
        raise ProtocolError(POLICY, "bad_video", "a video message needs a time and an image")
    (at,) = struct.unpack("<d", payload[:8])
    if not np.isfinite(at) or at < 0:
        raise ProtocolError(POLICY, "bad_video", f"video capture time {at!r} is not a time")
    if len(payload) - 8 > limits.max_frame_bytes:
        raise ProtocolError(
            TOO_BIG, "too_big", f"a video frame is larger than {limits.max_frame_bytes} bytes"
        )
    jpeg = payload[8:]
    size = jpeg_size(jpeg)
    if size is None:
        raise ProtocolError(POLICY, "bad_video", "a video frame is not a JPEG image")
    if size[0] * size[1] > MAX_FRAME_PIXELS or 0 in size:
        raise ProtocolError(
            POLICY, "bad_video",
            f"a {size[0]}x{size[1]} video frame: send at most {MAX_FRAME_PIXELS} pixels",
        )  # fmt: skip
    return at, jpeg


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding it; None: not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None
