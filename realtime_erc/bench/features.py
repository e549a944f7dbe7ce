"""``realtime-erc bench features``: per-utterance extraction time per modality (ASR excluded).

The utterance: 2 s of espeak-ng speech (16 kHz) with its transcript, and 2 s of 15 fps video
(30 frames, 640×480) showing a face — a FER2013 image from the data directory, upscaled onto a
canvas at run time (nothing from the dataset is stored). Without the data directory the frames are
blank and the visual rows time the no-face path (the report says so).

Rows (median and p95 over ``runs``):
- ``text``: the sentence encoder on the transcript; ``audio egemaps`` / ``audio librosa``;
- ``visual per frame``: FaceLandmarker on one frame; ``visual batch (N frames)``: all frames of
  the utterance analysed after it ends, at 15 fps and at the default ``max_fps``;
- ``all three, end of utterance``: what the live chain does when the utterance closes, ASR
  aside — the analysis stage's audio features and visual pooling (frames already analysed as
  they arrived), then the assembler encoding the transcript (the stages of the app itself);
- ``all three, batch``: the same with the frames analysed only after the utterance ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_erc.bench.report import BenchReport, percentile
from realtime_erc.config import FeaturesConfig
from realtime_erc.events import SAMPLE_RATE, SpeechSegment, Utterance, VideoFrame, now

log = logging.getLogger(__name__)

SENTENCE = "I really did not expect to see you here today."
FPS = 15.0
DURATION_S = 2.0
TARGET_MS = 150.0


@dataclass
class FeatureBenchOptions:
    runs: int = 20
    data_dir: Path | None = None
    threads: int | None = None
    """torch CPU threads (default: torch's)."""


def speech_samples(text: str = SENTENCE, seconds: float = DURATION_S) -> np.ndarray:
    """``[seconds * 16000]`` float32: ``text`` voiced by espeak-ng, cut or padded to length."""
    import soundfile as sf
    import soxr

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng not found: install it (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-s", "190", "-w", str(wav), text], check=True)
        x, rate = sf.read(str(wav), dtype="float32")
    x = soxr.resample(x, rate, SAMPLE_RATE).astype(np.float32)
    n = int(seconds * SAMPLE_RATE)
    return np.pad(x[:n], (0, max(0, n - len(x))))


def fer_face(data_dir: Path | None, index: int = 3) -> np.ndarray | None:
    """One ``[48, 48]`` uint8 FER2013 face read from the data directory, or None if absent."""
    if data_dir is None:
        return None
    path = data_dir / "fer2013" / "fer2013_train_publictest.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return np.asarray(data["images"][index])


def face_frame(
    face: np.ndarray | None, size: tuple[int, int] = (480, 640), side: int = 240
) -> np.ndarray:
    """``[H, W, 3]`` uint8 BGR: ``face`` upscaled to ``side`` pixels in the middle of a grey
    canvas (blank canvas when ``face`` is None)."""
    import cv2

    h, w = size
    canvas = np.full((h, w, 3), 110, np.uint8)
    if face is not None:
        big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        y, x = (h - side) // 2, (w - side) // 2
        canvas[y : y + side, x : x + side] = big[..., None]
    return canvas


@dataclass
class Timings:
    """Wall-clock and process CPU milliseconds of repeated runs. CPU time (all threads) is what
    the work costs on an idle core; wall time also holds waiting for a busy CPU."""

    wall: list[float]
    cpu: list[float]


def _time(fn: Callable[[], object], runs: int) -> Timings:
    out = Timings([], [])
    for _ in range(runs):
        c, t = time.process_time(), time.perf_counter()
        fn()
        out.wall.append((time.perf_counter() - t) * 1000)
        out.cpu.append((time.process_time() - c) * 1000)
    return out


def _row(name: str, ms: Timings, **extra) -> dict:
    return {
        "part": name,
        "runs": len(ms.wall),
        "median_ms": percentile(ms.wall, 50),
        "p95_ms": percentile(ms.wall, 95),
        "cpu_median_ms": percentile(ms.cpu, 50),
        **extra,
    }


def run_features_benchmark(options: FeatureBenchOptions) -> BenchReport:
    from realtime_erc.assemble import UtteranceAssembler
    from realtime_erc.features.analysis import AnalysisStage
    from realtime_erc.features.audio import AudioFeatures, AudioOptions
    from realtime_erc.features.dims import feature_dims
    from realtime_erc.features.text import TextEncoder, TextOptions
    from realtime_erc.features.visual import FaceFeatures, VisualOptions

    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    runs = options.runs
    samples = speech_samples()
    face = fer_face(options.data_dir)
    image = face_frame(face)
    frames = [VideoFrame(image, i, i / FPS) for i in range(int(DURATION_S * FPS))]
    config = FeaturesConfig()
    report = BenchReport(
        name="features",
        title="Feature extraction per utterance (2 s speech, 15 fps video, ASR excluded)",
        columns=[
            ("part", "part"),
            ("runs", "runs"),
            ("median_ms", "median (ms)"),
            ("p95_ms", "p95 (ms)"),
            ("cpu_median_ms", "CPU median (ms)"),
            ("note", "note"),
        ],
        meta={
            "utterance_s": DURATION_S,
            "video": f"{len(frames)} frames at {FPS:g} fps, 640x480",
            "face": "FER2013 image, upscaled (read at run time)" if face is not None else "none",
            "max_fps": config.visual.max_fps,
            "target_all_three_ms": TARGET_MS,
            "torch_threads": _torch_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        },
    )

    larger = TextEncoder(TextOptions(encoder="mpnet"))
    larger.load()
    larger.encode(SENTENCE)  # warm-up
    note = 'features.text.encoder = "mpnet"'
    mpnet = _row("text (MPNet)", _time(lambda: larger.encode(SENTENCE), runs), note=note)
    text = TextEncoder()
    text.load()
    text.encode(SENTENCE)  # warm-up
    report.rows.append(_row("text (MiniLM)", _time(lambda: text.encode(SENTENCE), runs)))
    report.rows.append(mpnet)

    for backend in ("egemaps", "librosa"):
        audio = AudioFeatures(AudioOptions(backend=backend))
        audio.extract(samples)
        ms = _time(lambda a=audio: a.extract(samples), runs)
        report.rows.append(_row(f"audio {backend}", ms))

    visual = FaceFeatures(VisualOptions(), running_mode="video")
    visual.load()
    analysed = [visual.analyze(f.image, f.time, f.index) for f in frames]  # warm-up
    found = sum(1 for a in analysed if a.faces)
    clock = [DURATION_S]

    def one_frame() -> None:
        clock[0] += 1 / FPS
        visual.analyze(image, clock[0])

    per_frame = _time(one_frame, runs * 3)
    report.rows.append(_row("visual per frame", per_frame, note=f"face found in {found}/30"))
    step = max(1, round(FPS / config.visual.max_fps))
    for label, chosen in (
        ("15 fps", frames),
        (f"max_fps={config.visual.max_fps:g}", frames[::step]),
    ):

        def batch(chosen=chosen) -> None:
            shifted = [VideoFrame(f.image, f.index, clock[0] + f.time) for f in chosen]
            clock[0] += DURATION_S
            visual.extract(shifted, samples, clock[0] - DURATION_S)

        ms = _time(batch, max(3, runs // 4))
        report.rows.append(_row(f"visual batch ({len(chosen)} frames, {label})", ms))
    summarize_ms = _time(lambda: visual.summarize(analysed, samples, 0.0), runs)
    report.rows.append(_row("visual pooling only (frames analysed on arrival)", summarize_ms))

    for backend in ("egemaps", "librosa"):
        cfg = config.with_values({"audio.backend": backend})
        analysis = AnalysisStage(cfg, visual=FaceFeatures(VisualOptions()))
        assembler = UtteranceAssembler(feature_dims(cfg), text)
        together, batch_all = asyncio.run(
            _chain_timings(analysis, assembler, samples, frames, runs)
        )
        wall, cpu = percentile(together.wall, 50), percentile(together.cpu, 50)
        note = f"wall {'≤' if wall <= TARGET_MS else '>'} {TARGET_MS:g} ms target"
        note += f", CPU {'≤' if cpu <= TARGET_MS else '>'} target"
        report.rows.append(_row(f"all three, end of utterance ({backend})", together, note=note))
    report.rows.append(_row("all three, batch (librosa, 30 frames analysed at the end)", batch_all))
    visual.close()
    return report


async def _chain_timings(
    analysis, assembler, samples: np.ndarray, frames: list[VideoFrame], runs: int
) -> tuple[Timings, Timings]:  # AnalysisStage, UtteranceAssembler
    """End-of-utterance time of the live chain's feature work (the analysis of the segment with
    frames analysed on arrival, then the assembler's text encoding), and of text + audio + a
    batch visual pass run concurrently."""
    await analysis.start()
    analysis.max_pending_frames = len(frames)  # frames arrive over 2 s live; here all at once
    together, batch = Timings([], []), Timings([], [])
    offset = 100.0
    try:
        for i in range(runs):
            offset += 10.0
            for f in frames:
                await analysis.add_frame(VideoFrame(f.image, f.index, offset + f.time))
            await analysis.frames_ready()
            utt = _utterance(i, samples, offset)
            c, t = time.process_time(), time.perf_counter()
            await assembler.assemble(utt, await analysis.analyze(utt.segment))
            together.wall.append((time.perf_counter() - t) * 1000)
            together.cpu.append((time.process_time() - c) * 1000)
        for _ in range(max(3, runs // 4)):
            offset += 10.0
            shifted = [VideoFrame(f.image, f.index, offset + f.time) for f in frames]
            c, t = time.process_time(), time.perf_counter()
            await asyncio.gather(
                asyncio.to_thread(assembler.text.encode, SENTENCE),
                asyncio.to_thread(analysis.audio.extract, samples),
                asyncio.to_thread(analysis.visual.extract, shifted, samples, offset),
            )
            batch.wall.append((time.perf_counter() - t) * 1000)
            batch.cpu.append((time.process_time() - c) * 1000)
    finally:
        await analysis.close()
    return together, batch


def _utterance(i: int, samples: np.ndarray, start: float) -> Utterance:
    t = now()
    seg = SpeechSegment(i, start, start + DURATION_S, samples, t, t, audio_start=start)
    return Utterance(i, seg, SENTENCE)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
