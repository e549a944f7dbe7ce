"""Recorded sessions in the ``realtime-erc.recording/1`` format: read, replay and write.

A recording is a directory (see ``RECORDING_FORMAT.md``): ``session.json``, an audio track, an
optional video track with optional per-frame times, and optional ground-truth annotations.

- :func:`read_recording` validates everything up front, so a bad recording is refused with one
  line naming the file, the problem and the fix, before any pipeline stage starts.
- :class:`ReplaySource` plays a recording as the same events a microphone and camera produce,
  at real-time pace, faster, or as fast as possible ("replay = live").
- :class:`RecordingWriter` writes a recording incrementally; if the process dies, what was
  written so far still replays (audio-only: the video container is only finalised on close).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import soundfile as sf
import soxr

from realtime_erc.errors import UserError
from realtime_erc.events import SAMPLE_RATE, AudioChunk, VideoFrame, now

log = logging.getLogger(__name__)

FORMAT = "realtime-erc.recording/1"
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "meld7": ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
    "iemocap6": ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
}
AUDIO_FILES = ("audio.flac", "audio.wav")
VIDEO_FILES = ("video.mp4", "video.avi")
SESSION_FILE = "session.json"
TIMES_FILE = "video_times.csv"
ANNOTATIONS_FILE = "annotations.jsonl"

# libsndfile reports SF_COUNT_MAX frames for a FLAC whose writer never closed it (a crash).
_UNKNOWN_FRAMES = 2**62
_PROBE_FRAMES = 4096

T = TypeVar("T")


class RecordingError(UserError, ValueError):
    """A recording that does not follow the format. The message names the file, problem and fix."""


def _error(file: Path | str, problem: str, fix: str) -> RecordingError:
    return RecordingError(f"{file}: {problem} ({fix})")


@dataclass(frozen=True, slots=True)
class Speaker:
    """A speaker declared in ``session.json``; ``id`` is what annotations refer to."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Annotation:
    """One ground-truth utterance from ``annotations.jsonl`` (times on the session clock)."""

    utterance_id: int
    speaker: str
    start: float
    end: float
    text: str
    emotion: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "utterance_id": self.utterance_id,
            "speaker": self.speaker,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "emotion": self.emotion,
        }


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """A validated recording. Build it with :func:`read_recording`.

    ``audio_*`` describe the file as stored (any rate, any channel count); the ``iter_audio`` /
    ``read_audio`` methods deliver it as the pipeline wants it: 16 kHz mono float32.
    ``frame_times``: ``[n_frames]`` float64 seconds from ``video_times.csv``, or None (then frame
    *i* is at ``i / fps``).
    """

    path: Path
    session_id: str
    created: str | None
    audio_path: Path
    video_path: Path | None
    fps: float | None
    frame_times: np.ndarray | None
    speakers: tuple[Speaker, ...]
    label_set: str | None
    source: str
    annotations: tuple[Annotation, ...]
    audio_sample_rate: int
    audio_channels: int
    audio_frames: int

    @property
    def duration(self) -> float:
        """Length of the audio track in seconds (the session's length)."""
        return self.audio_frames / self.audio_sample_rate

    @property
    def has_video(self) -> bool:
        return self.video_path is not None

    def iter_audio(self, block_s: float = 0.5) -> Iterator[np.ndarray]:
        """Stream the audio as ``[n]`` float32 blocks at 16 kHz mono (about ``block_s`` each).

        Channels are averaged; other rates go through a streaming soxr resampler, so an hour-long
        file is never held in memory. The blocks concatenate to ``read_audio()``.
        """
        if not block_s > 0:
            raise ValueError(f"block_s must be positive, got {block_s}")
        sr = self.audio_sample_rate
        block = max(1, round(block_s * sr))
        resampler = (
            None
            if sr == SAMPLE_RATE
            else soxr.ResampleStream(sr, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )
        remaining = self.audio_frames
        try:
            with sf.SoundFile(self.audio_path) as f:
                exact = f.frames < _UNKNOWN_FRAMES
                while remaining > 0:
                    data = _read_block(f, min(block, remaining), exact)
                    if len(data) == 0:
                        break
                    remaining -= len(data)
                    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
                    out = mono if resampler is None else resampler.resample_chunk(mono, last=False)
                    if out.size:
                        yield np.ascontiguousarray(out, dtype=np.float32)
        except sf.SoundFileError as e:
            raise _error(
                self.audio_path,
                f"audio stopped decoding: {_sf_detail(e)}",
                "the file is damaged; re-record or repair it",
            ) from None
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield np.ascontiguousarray(tail, dtype=np.float32)

    def read_audio(self) -> np.ndarray:
        """The whole audio track as ``[n]`` float32 at 16 kHz mono."""
        blocks = list(self.iter_audio(block_s=10.0))
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    def iter_frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yield ``(index, time, image)`` per video frame; ``image``: ``[H, W, 3]`` uint8 BGR.

        ``time`` comes from ``video_times.csv`` when present, else ``index / fps``. Nothing is
        yielded for an audio-only recording.
        """
        if self.video_path is None:
            return
        cap = cv2.VideoCapture(str(self.video_path))
        try:
            for index in itertools.count():
                if self.frame_times is not None and index >= len(self.frame_times):
                    if cap.grab():
                        log.warning(
                            "%s has more frames than %s lists; ignoring the rest",
                            self.video_path,
                            TIMES_FILE,
                        )
                    return
                ok, image = cap.read()
                if not ok:
                    return
                if self.frame_times is not None:
                    time = float(self.frame_times[index])
                else:
                    time = index / float(self.fps or 1.0)
                yield index, time, image
        finally:
            cap.release()


def _read_block(f: sf.SoundFile, frames: int, exact: bool) -> np.ndarray:
    """Read up to ``frames`` as ``[n, channels]`` float32.

    ``exact=False`` is for a FLAC left unclosed by a crash: its length is unknown, and
    soundfile's own ``read`` fails seeking to the true end, so call libsndfile directly.
    """
    if exact:
        return f.read(frames, dtype="float32", always_2d=True)
    buf = np.empty((frames, f.channels), np.float32)
    got = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", buf.ctypes.data), frames)
    return buf[: max(int(got), 0)]


def _sf_detail(error: Exception) -> str:
    return str(getattr(error, "error_string", "") or error).strip().rstrip(".")


# ---------------------------------------------------------------------------------------------
# Reading and validation


def read_recording(path: str | os.PathLike[str]) -> Recording:
    """Open and validate a recording directory; raise :class:`RecordingError` on any problem."""
    root = Path(path)
    if not root.exists():
        raise _error(
            root, "recording directory does not exist", "pass a directory that holds session.json"
        )
    if not root.is_dir():
        raise _error(root, "is not a directory", "pass the recording's directory, not a file in it")
    meta_path = root / SESSION_FILE
    meta = _read_session_json(meta_path)

    session_id = meta.get("session_id")
    if not isinstance(session_id, str) or not session_id.strip():
        raise _error(
            meta_path,
            "'session_id' is missing or not a non-empty string",
            'add e.g. "session_id": "demo-01"',
        )
    created = meta.get("created")
    if created is not None and not isinstance(created, str):
        raise _error(
            meta_path,
            "'created' must be an ISO-8601 string or null",
            'write e.g. "created": "2026-11-22T10:00:00Z"',
        )
    source = meta.get("source", "")
    if source is None:
        source = ""
    if not isinstance(source, str):
        raise _error(meta_path, "'source' must be a string", "describe how it was made, as text")

    audio_path = _audio_path(root, meta_path, meta)
    sample_rate, channels, frames = _probe_audio(audio_path)
    video_path, fps, frame_times = _video(root, meta_path, meta)
    speakers = _speakers(meta_path, meta)
    label_set = _label_set(meta_path, meta)
    annotations = _read_annotations(root / ANNOTATIONS_FILE, label_set, speakers)

    duration = frames / sample_rate
    late = [a.utterance_id for a in annotations if a.end > duration + 0.5]
    if late:
        log.warning(
            "%s: utterances %s end after the audio (%.2f s)",
            root / ANNOTATIONS_FILE,
            late[:5],
            duration,
        )
    return Recording(
        path=root,
        session_id=session_id,
        created=created,
        audio_path=audio_path,
        video_path=video_path,
        fps=fps,
        frame_times=frame_times,
        speakers=speakers,
        label_set=label_set,
        source=source,
        annotations=annotations,
        audio_sample_rate=sample_rate,
        audio_channels=channels,
        audio_frames=frames,
    )


def _read_session_json(meta_path: Path) -> dict[str, Any]:
    if not meta_path.is_file():
        raise _error(
            meta_path,
            "file not found",
            "every recording needs session.json; see RECORDING_FORMAT.md",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _error(meta_path, "is not UTF-8 text", "save it as UTF-8 JSON") from None
    except RecursionError:
        raise _error(meta_path, "JSON nested too deeply", "fix the JSON structure") from None
    except json.JSONDecodeError as e:
        raise _error(
            meta_path,
            f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}",
            "fix the JSON syntax",
        ) from None
    if not isinstance(meta, dict):
        raise _error(
            meta_path,
            f"must hold a JSON object, got {type(meta).__name__}",
            "see RECORDING_FORMAT.md for the layout",
        )
    fmt = meta.get("format")
    if fmt is None:
        raise _error(meta_path, "no 'format' key", f'add "format": "{FORMAT}"')
    if fmt != FORMAT:
        raise _error(meta_path, f"unknown format {fmt!r}", f"expected {FORMAT}")
    return meta


def _audio_path(root: Path, meta_path: Path, meta: dict[str, Any]) -> Path:
    entry = meta.get("audio")
    if entry is None:
        has_video = meta.get("video") is not None
        problem = "no 'audio' entry: audio is required"
        if has_video:
            problem += ", a video-only session cannot be replayed"
        raise _error(meta_path, problem, 'add "audio": {"file": "audio.flac"} and the file')
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise _error(
            meta_path,
            "'audio' must be an object with a 'file' name",
            'write "audio": {"file": "audio.flac"}',
        )
    name = entry["file"]
    if name not in AUDIO_FILES:
        raise _error(
            meta_path, f"audio file {name!r} is not allowed", "name it audio.flac or audio.wav"
        )
    audio_path = root / name
    if not audio_path.is_file():
        raise _error(
            audio_path,
            "file not found: audio is required",
            "put the microphone track there or fix audio.file in session.json",
        )
    return audio_path


def _probe_audio(audio_path: Path) -> tuple[int, int, int]:
    """Open the audio, decode a first block and return ``(sample_rate, channels, frames)``."""
    fix = "the file is damaged or not audio libsndfile reads; re-record or convert it"
    try:
        with sf.SoundFile(audio_path) as f:
            sample_rate, channels, frames = f.samplerate, f.channels, f.frames
            exact = frames < _UNKNOWN_FRAMES
            if not exact:
                # Unclosed FLAC (the recorder crashed): count what is decodable.
                log.warning("%s was not closed properly; counting its frames", audio_path)
                frames = 0
                while n := len(_read_block(f, 1 << 16, exact=False)):
                    frames += n
            elif frames > 0 and len(_read_block(f, min(frames, _PROBE_FRAMES), exact)) == 0:
                raise _error(audio_path, "header promises audio but no frame decodes", fix)
    except sf.SoundFileError as e:
        raise _error(audio_path, f"cannot decode audio: {_sf_detail(e)}", fix) from None
    if frames <= 0:
        raise _error(
            audio_path,
            "zero-length audio: no frames",
            "record at least some audio or remove the session",
        )
    if sample_rate <= 0:
        raise _error(audio_path, f"invalid sample rate {sample_rate}", fix)
    return sample_rate, channels, frames


def _video(
    root: Path, meta_path: Path, meta: dict[str, Any]
) -> tuple[Path | None, float | None, np.ndarray | None]:
    entry = meta.get("video")
    times_path = root / TIMES_FILE
    if entry is None:
        if times_path.exists():
            log.info("%s: no video in session.json; ignoring %s", meta_path, TIMES_FILE)
        return None, None, None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise _error(
            meta_path,
            "'video' must be null or an object with a 'file' name",
            'write "video": {"file": "video.mp4", "fps": 15.0} or "video": null',
        )
    name = entry["file"]
    if name not in VIDEO_FILES:
        raise _error(
            meta_path, f"video file {name!r} is not allowed", "name it video.mp4 or video.avi"
        )
    fps = entry.get("fps")
    if fps is not None and (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not fps > 0
        or not math.isfinite(fps)
    ):
        raise _error(
            meta_path,
            f"video.fps must be a positive number, got {fps!r}",
            "give the camera's frame rate, e.g. 15.0, or null with video_times.csv",
        )
    video_path = root / name
    if not video_path.is_file():
        raise _error(
            video_path,
            "file not found",
            'add the video file or set "video": null for an audio-only session',
        )

    cap = cv2.VideoCapture(str(video_path))
    try:
        if not cap.isOpened() or not cap.read()[0]:
            raise _error(
                video_path,
                "cannot be opened or decoded by OpenCV",
                "the file is damaged or uses an unsupported codec; re-encode it, e.g. as mp4v",
            )
        if fps is None:
            probed = cap.get(cv2.CAP_PROP_FPS)
            fps = float(probed) if probed and probed > 0 and math.isfinite(probed) else None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()

    frame_times = _read_frame_times(times_path) if times_path.exists() else None
    if frame_times is None and fps is None:
        raise _error(
            video_path, "frame rate unknown", "set video.fps in session.json or add video_times.csv"
        )
    if frame_times is not None and count > 0 and count != len(frame_times):
        raise _error(
            times_path,
            f"lists {len(frame_times)} frame times but {name} has {count} frames",
            "write one line per video frame",
        )
    return video_path, float(fps) if fps is not None else None, frame_times


def _read_frame_times(times_path: Path) -> np.ndarray:
    """Parse ``video_times.csv``: one non-negative, non-decreasing float per line."""
    times: list[float] = []
    try:
        lines = times_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise _error(times_path, "is not UTF-8 text", "write one number per line") from None
    for lineno, line in enumerate(lines, start=1):
        text = line.strip().rstrip(",")
        if not text:
            continue
        try:
            t = float(text)
        except ValueError:
            raise _error(
                f"{times_path}, line {lineno}",
                f"{text[:40]!r} is not a number",
                "write one time in seconds per line",
            ) from None
        if not math.isfinite(t) or t < 0:
            raise _error(
                f"{times_path}, line {lineno}",
                f"time {t} is negative or not finite",
                "times are seconds on the session clock, >= 0",
            )
        if times and t < times[-1]:
            raise _error(
                f"{times_path}, line {lineno}",
                f"time {t} is before the previous frame's {times[-1]}",
                "frame times must not decrease",
            )
        times.append(t)
    if not times:
        raise _error(times_path, "is empty", "write one line per video frame, or delete it")
    array = np.asarray(times, dtype=np.float64)
    array.setflags(write=False)  # part of a frozen Recording
    return array


def _speakers(meta_path: Path, meta: dict[str, Any]) -> tuple[Speaker, ...]:
    entries = meta.get("speakers")
    if entries is None:
        return ()
    fix = 'write "speakers": [{"id": "A", "name": "Ana"}, ...]'
    if not isinstance(entries, list):
        raise _error(meta_path, "'speakers' must be a list", fix)
    speakers: list[Speaker] = []
    for i, item in enumerate(entries):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise _error(meta_path, f"speakers[{i}] needs a string 'id'", fix)
        name = item.get("name", item["id"])
        if not isinstance(name, str):
            raise _error(meta_path, f"speakers[{i}].name must be a string", fix)
        if any(s.id == item["id"] for s in speakers):
            raise _error(
                meta_path,
                f"speaker id {item['id']!r} is listed twice",
                "give each speaker a unique id",
            )
        speakers.append(Speaker(item["id"], name))
    return tuple(speakers)


def _label_set(meta_path: Path, meta: dict[str, Any]) -> str | None:
    label_set = meta.get("label_set")
    if label_set is not None and (not isinstance(label_set, str) or label_set not in LABEL_SETS):
        raise _error(
            meta_path,
            f"unknown label_set {label_set!r}",
            f"use one of {', '.join(LABEL_SETS)} or null",
        )
    return label_set


def _read_annotations(
    ann_path: Path, label_set: str | None, speakers: Sequence[Speaker]
) -> tuple[Annotation, ...]:
    if not ann_path.exists():
        return ()
    try:
        lines = ann_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise _error(ann_path, "is not UTF-8 text", "save it as UTF-8 JSON lines") from None
    speaker_ids = {s.id for s in speakers}
    annotations: list[Annotation] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{ann_path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            fix = "write one JSON object per line"
            raise _error(where, f"invalid JSON: {e.msg}", fix) from None
        except RecursionError:
            raise _error(where, "JSON nested too deeply", "one flat JSON object per line") from None
        annotation = parse_annotation(obj, where, label_set)
        if speaker_ids and annotation.speaker not in speaker_ids:
            raise _error(
                where,
                f"speaker {annotation.speaker!r} is not in session.json speakers "
                f"({', '.join(sorted(speaker_ids))})",
                "use a declared speaker id",
            )
        if any(a.utterance_id == annotation.utterance_id for a in annotations):
            raise _error(
                where,
                f"utterance_id {annotation.utterance_id} is used twice",
                "give each utterance a unique id",
            )
        annotations.append(annotation)
    return tuple(annotations)


def parse_annotation(obj: Any, where: str, label_set: str | None) -> Annotation:
    """Validate one annotation object; ``where`` (file and line) prefixes any error."""
    fix = (
        'expected {"utterance_id": 0, "speaker": "A", "start": 0.5, "end": 2.3, '
        '"text": "...", "emotion": "joy"}'
    )
    if not isinstance(obj, dict):
        raise _error(where, f"must be a JSON object, got {type(obj).__name__}", fix)
    uid = obj.get("utterance_id")
    if not isinstance(uid, int) or isinstance(uid, bool):
        raise _error(where, f"utterance_id must be an integer, got {uid!r}", fix)
    speaker = obj.get("speaker")
    if not isinstance(speaker, str) or not speaker:
        raise _error(where, f"speaker must be a non-empty string, got {speaker!r}", fix)
    start, end = obj.get("start"), obj.get("end")
    for key, value in (("start", start), ("end", end)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise _error(where, f"{key} must be a number of seconds, got {value!r}", fix)
    if start < 0:
        raise _error(where, f"start {start} is negative", "times are seconds from the first sample")
    if end < start:
        raise _error(where, f"end {end} < start {start}", "swap or correct the times")
    text = obj.get("text")
    if not isinstance(text, str):
        raise _error(where, f"text must be a string, got {text!r}", fix)
    emotion = obj.get("emotion")
    if emotion is not None and not isinstance(emotion, str):
        raise _error(where, f"emotion must be a string or null, got {emotion!r}", fix)
    if emotion is not None and label_set is not None and emotion not in LABEL_SETS[label_set]:
        raise _error(
            where,
            f"unknown emotion {emotion!r} for label_set {label_set}",
            f"use one of {', '.join(LABEL_SETS[label_set])}",
        )
    return Annotation(uid, speaker, float(start), float(end), text, emotion)


# ---------------------------------------------------------------------------------------------
# Replay


async def _prefetch(items: Iterator[T], batch: int) -> AsyncIterator[T]:
    """Run a blocking iterator in worker threads, one batch ahead of the consumer.

    Pull-based: at most one batch is decoded at a time, so nothing runs on after the consumer
    stops except the batch in flight, which is awaited before the iterator is closed.
    """

    def take() -> list[T]:
        return list(itertools.islice(items, batch))

    def close(done: asyncio.Future[list[T]] | None = None) -> None:
        if done is not None and not done.cancelled():
            done.exception()  # retrieved: a failure after the consumer left is moot
        closer = getattr(items, "close", None)
        if closer is not None:
            closer()

    pending: asyncio.Future[list[T]] = asyncio.ensure_future(asyncio.to_thread(take))
    try:
        while True:
            got = await asyncio.shield(pending)  # a cancelled wait must not orphan the thread
            if not got:
                return
            pending = asyncio.ensure_future(asyncio.to_thread(take))
            for item in got:
                yield item
    finally:
        if pending.done():
            close(pending)
        else:
            # A thread is still inside the iterator: close it only once that batch is done.
            pending.add_done_callback(close)


def _rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Cut a stream of 1-D blocks into blocks of exactly ``size`` (the last may be shorter)."""
    buffer = np.zeros(0, np.float32)
    for block in blocks:
        buffer = np.concatenate([buffer, block]) if buffer.size else block
        whole = len(buffer) // size * size
        for i in range(0, whole, size):
            yield buffer[i : i + size].copy()
        buffer = buffer[whole:]
    if buffer.size:
        yield buffer.copy()


class ReplaySource:
    """Plays a :class:`Recording` as :class:`AudioChunk` and :class:`VideoFrame` events.

    ``speed``: 1.0 = real time, 2.0 = twice as fast, None = as fast as possible. When paced, an
    event at session time *t* is yielded at wall time ``t0 + t / speed``; an audio chunk counts
    at its *end* (a microphone delivers a block once it is full). Decoding runs in worker
    threads so the event loop is never blocked for long. Use as ``async for ev in source``.
    """

    name = "replay"

    def __init__(self, recording: Recording, speed: float | None = 1.0, chunk_ms: int = 32) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None (as fast as possible), got {speed}")
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        self.recording = recording
        self.speed = speed
        self.chunk_ms = chunk_ms
        self.chunk_samples = max(1, SAMPLE_RATE * chunk_ms // 1000)
        self.lag_warning_s = 1.0  # log once when pacing falls this far behind

    async def __aiter__(self) -> AsyncIterator[AudioChunk | VideoFrame]:
        rec = self.recording
        blocks = _rechunk(rec.iter_audio(block_s=0.5), self.chunk_samples)
        async with (
            contextlib.aclosing(_prefetch(blocks, batch=16)) as audio,
            contextlib.aclosing(_prefetch(rec.iter_frames(), batch=1)) as video,
        ):
            loop = asyncio.get_running_loop()
            warned = False
            offset = 0  # samples of audio already yielded
            next_chunk = await anext(audio, None)
            next_frame = await anext(video, None)
            t0 = loop.time()  # the session clock starts once both tracks can deliver
            for count in itertools.count():
                if next_chunk is None and next_frame is None:
                    return
                chunk_end = math.inf
                if next_chunk is not None:
                    chunk_end = (offset + len(next_chunk)) / SAMPLE_RATE
                take_frame = next_frame is not None and next_frame[1] <= chunk_end
                due = next_frame[1] if take_frame else chunk_end  # type: ignore[index]
                if self.speed is None:
                    if count % 64 == 63:
                        await asyncio.sleep(0)
                else:
                    delay = t0 + due / self.speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif -delay > self.lag_warning_s and not warned:
                        warned = True
                        log.warning(
                            "replay of %s is %.1f s behind real time (consumer too slow)",
                            rec.session_id,
                            -delay,
                        )
                if take_frame:
                    index, time, image = next_frame  # type: ignore[misc]
                    yield VideoFrame(image=image, index=index, time=time, received_at=now())
                    next_frame = await anext(video, None)
                else:
                    samples = next_chunk
                    start = offset / SAMPLE_RATE
                    offset += len(samples)  # type: ignore[arg-type]
                    yield AudioChunk(samples=samples, start=start, received_at=now())
                    next_chunk = await anext(audio, None)


# ---------------------------------------------------------------------------------------------
# Writing


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the old file stays as it was
        raise


WRITE_FIX = (
    "free disk space or record to another disk; what was recorded until then is kept and replays"
)
_LOW_SPACE_BYTES = 256 * 1024  # below this, a failed write is taken to be a full disk


def write_failure(path: Path, error: BaseException) -> RecordingError:
    """The one-line error for a failed recording write, naming the cause when it can be found.

    libsndfile reports only "System error" for any failed ``write``, so the cause is looked up:
    an ``OSError``'s own reason, else a full disk (free space below 256 KiB), else a file at
    the process's file-size limit (``RLIMIT_FSIZE``, which makes writes fail with EFBIG).
    """
    cause = f"{type(error).__name__}: {_sf_detail(error)}"
    if isinstance(error, OSError) and error.strerror:
        cause = error.strerror
    else:
        with contextlib.suppress(OSError):
            free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
            if free < _LOW_SPACE_BYTES:
                cause = f"No space left on device ({free // 1024} KiB free)"
            elif (limit := _file_size_limit()) is not None and any(
                f.stat().st_size >= limit - 65536 for f in path.iterdir() if f.is_file()
            ):
                cause = f"File too large (this process may write at most {limit} bytes a file)"
    return _error(path, f"writing the recording failed: {cause}", WRITE_FIX)


def _file_size_limit() -> int | None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


class RecordingWriter:
    """Writes a recording incrementally (the ``record`` command, the demo generator).

    Crash safety: ``session.json`` is written at open with ``"video": null`` and rewritten on
    :meth:`close` with the video entry, because an MP4 is only readable once finalised. Audio
    (FLAC), frame times and annotations are flushed as they go, so a crashed session still
    replays as an audio-only recording with its annotations.

    A failed write (disk full, file-size limit) raises :class:`RecordingError` naming the cause
    and marks the writer failed: nothing more is written, and :meth:`close` finalises what is
    there but leaves ``"video": null`` (the video may be truncated), so the recording so far
    replays as audio.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        session_id: str,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        fps: float | None = None,
        speakers: Sequence[Speaker] = (),
        label_set: str | None = None,
        source: str = "",
        *,
        created: str | None = None,
        flush_every_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        if sample_rate <= 0 or channels <= 0:
            raise ValueError(
                f"sample_rate and channels must be positive, got {sample_rate}, {channels}"
            )
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        if label_set is not None and label_set not in LABEL_SETS:
            raise ValueError(f"unknown label_set {label_set!r}; use one of {', '.join(LABEL_SETS)}")
        if (self.path / SESSION_FILE).exists():
            raise _error(
                self.path,
                "already holds a recording",
                "choose a new directory or delete the old session first",
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.session_id = session_id
        self.sample_rate = sample_rate
        self.channels = channels
        self.fps = fps
        self.speakers = tuple(speakers)
        self.label_set = label_set
        self.source = source
        self.created = created or _utc_now()
        self.frames_written = 0
        self.samples_written = 0
        self._flush_every = max(1, int(flush_every_s * sample_rate))
        self._unflushed = 0
        self._last_time = -math.inf
        self._frame_size: tuple[int, int] | None = None
        self._video: cv2.VideoWriter | None = None
        self._times: Any = None
        self._closed = False
        self.failed: RecordingError | None = None
        try:
            self._write_session(video=False)
            self._audio = sf.SoundFile(
                self.path / "audio.flac",
                "w",
                samplerate=sample_rate,
                channels=channels,
                format="FLAC",
                subtype="PCM_16",
            )
            self._annotations = (self.path / ANNOTATIONS_FILE).open("a", encoding="utf-8")
        except (OSError, sf.SoundFileError) as e:
            raise write_failure(self.path, e) from None

    def _write_session(self, video: bool) -> None:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "session_id": self.session_id,
            "created": self.created,
            "audio": {"file": "audio.flac"},
            "video": {"file": "video.mp4", "fps": self.fps} if video else None,
            "speakers": [{"id": s.id, "name": s.name} for s in self.speakers],
            "label_set": self.label_set,
            "source": self.source,
        }
        _write_json_atomic(self.path / SESSION_FILE, meta)

    def write_audio(self, block: np.ndarray) -> None:
        """Append ``[n]`` or ``[n, channels]`` float32 samples in [-1, 1] (clipped)."""
        data = np.asarray(block, dtype=np.float32)
        if data.ndim == 1:
            data = data[:, None]
        if data.ndim != 2 or data.shape[1] != self.channels:
            raise ValueError(
                f"audio block of shape {np.shape(block)} does not match "
                f"{self.channels} channel(s): pass [n] or [n, {self.channels}]"
            )
        self._check_writable()
        try:
            self._audio.write(np.clip(data, -1.0, 1.0))
            self.samples_written += len(data)
            self._unflushed += len(data)
            if self._unflushed >= self._flush_every:
                self._audio.flush()
                self._unflushed = 0
        except (OSError, sf.SoundFileError) as e:
            raise self._fail(e) from None

    def _check_writable(self) -> None:
        if self.failed is not None:
            raise self.failed
        if self._closed:
            raise ValueError(f"{self.path}: the recording is closed")

    def _fail(self, error: BaseException) -> RecordingError:
        self.failed = write_failure(self.path, error)
        return self.failed

    def write_frame(self, image: np.ndarray, time: float) -> None:
        """Append one ``[H, W, 3]`` uint8 BGR frame shown at session ``time`` seconds."""
        if not (math.isfinite(time) and time >= 0 and time >= self._last_time):
            raise ValueError(
                f"frame time {time} must be >= 0 and >= the previous one ({self._last_time})"
            )
        frame = np.asarray(image)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be [H, W, 3] uint8 BGR, got {frame.shape} {frame.dtype}")
        height, width = frame.shape[:2]
        self._check_writable()
        if self._video is None:
            nominal_fps = self.fps or 30.0  # container rate; true times are in video_times.csv
            self._video = cv2.VideoWriter(
                str(self.path / "video.mp4"),
                cv2.VideoWriter.fourcc(*"mp4v"),
                nominal_fps,
                (width, height),
            )
            if not self._video.isOpened():
                raise RuntimeError(f"{self.path / 'video.mp4'}: OpenCV cannot write mp4v video")
            self._frame_size = (width, height)
            self._times = (self.path / TIMES_FILE).open("w", encoding="utf-8")
        elif (width, height) != self._frame_size:
            raise ValueError(
                f"frame size {width}x{height} differs from the first frame's "
                f"{self._frame_size[0]}x{self._frame_size[1]}"
            )  # type: ignore[index]
        # OpenCV's writer never reports a failed write; the times file next to it does.
        self._video.write(np.ascontiguousarray(frame))
        try:
            self._times.write(f"{time:.6f}\n")
            self._times.flush()
        except OSError as e:
            raise self._fail(e) from None
        self._last_time = time
        self.frames_written += 1

    def write_annotation(self, annotation: Annotation) -> None:
        """Append one ground-truth utterance to ``annotations.jsonl`` (validated, flushed)."""
        where = str(self.path / ANNOTATIONS_FILE)
        parse_annotation(annotation.to_dict(), where, self.label_set)
        if self.speakers and annotation.speaker not in {s.id for s in self.speakers}:
            raise _error(
                where, f"speaker {annotation.speaker!r} is not declared", "pass it in speakers="
            )
        self._check_writable()
        try:
            self._annotations.write(json.dumps(annotation.to_dict(), ensure_ascii=False) + "\n")
            self._annotations.flush()
        except OSError as e:
            raise self._fail(e) from None

    def close(self) -> None:
        """Finalise every file; the recording is then complete (idempotent).

        After a failed write, files are closed as well as they can be (errors are logged, not
        raised: the failure was already reported) and ``session.json`` keeps ``"video": null``.
        """
        if self._closed:
            return
        self._closed = True
        closers = [self._audio.close, self._annotations.close]
        if self._video is not None:
            closers += [self._video.release, self._times.close]
        first: BaseException | None = None
        for close in closers:
            try:
                close()
            except (OSError, sf.SoundFileError, cv2.error) as e:
                if self.failed is None and first is None:
                    first = e
                else:
                    log.warning("%s: closing after a failed write: %s", self.path, e)
        if first is not None:
            raise self._fail(first) from None
        if self._video is not None and self.failed is None:
            try:
                self._write_session(video=True)
            except OSError as e:
                raise self._fail(e) from None

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
