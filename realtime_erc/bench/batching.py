"""``realtime-erc bench batching``: what running a server's concurrent requests as one batch
gains per shared model.

The server (``realtime-erc serve``) puts every shared model behind a
:class:`~realtime_erc.batching.MicroBatcher`: requests of several sessions that are ready
together go through the model as one call. This benchmark measures that call directly, on the
recording's annotated utterances (their audio cut at the annotations, their transcripts): per
model and batch size *b*, the utterances go through in calls of *b*, and the wall time and the
process's CPU time per utterance are the medians of ``repeats`` passes. ``cpu_gain`` is the CPU
per utterance at *b* = 1 over that at *b*: the compute a burst of *b* concurrent utterances
saves. Models: ``asr`` (:meth:`Transcriber.transcribe_batch`), ``voices``
(:func:`~realtime_erc.speech.speakers.embed_voices`), ``text`` (the sentence encoder the
configured model was trained with), ``heads`` (the speech emotion head's Whisper encoder, which
the server does not batch: shown one by one for scale).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from realtime_erc.bench.report import BenchReport
from realtime_erc.events import SAMPLE_RATE
from realtime_erc.sources.recording import read_recording

MODELS = ("asr", "voices", "text", "heads")


@dataclass(frozen=True)
class BatchingOptions:
    recording: Path = Path("recordings/demo")
    sizes: tuple[int, ...] = (1, 2, 4, 8)
    repeats: int = 3
    overrides: tuple[str, ...] = ()
    config_file: Path | None = None


COLUMNS = [
    ("model", "model"),
    ("batch", "batch"),
    ("wall_ms", "wall ms / utterance"),
    ("cpu_ms", "CPU ms / utterance"),
    ("cpu_gain", "CPU gain vs batch 1"),
]


def _time_passes(
    run: Callable[[list[Any]], Any], items: Sequence[Any], batch: int, repeats: int
) -> tuple[float, float]:
    """Median (wall, CPU) seconds per item of ``repeats`` passes over ``items`` in calls of
    ``batch`` (after one warm-up call of that size)."""
    run(list(items[:batch]))
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(items), batch):
            run(list(items[i : i + batch]))
        walls.append((time.perf_counter() - w0) / len(items))
        cpus.append((time.process_time() - c0) / len(items))
    return statistics.median(walls), statistics.median(cpus)


def run_batching_benchmark(options: BatchingOptions) -> BenchReport:
    from realtime_erc.config import load_config
    from realtime_erc.session import load_models
    from realtime_erc.speech.asr import Transcriber
    from realtime_erc.speech.speakers import embed_voices, load_voice_encoder

    config = load_config(options.config_file, list(options.overrides) or None)
    rec = read_recording(options.recording)
    audio = rec.read_audio()
    clips = [audio[int(a.start * SAMPLE_RATE) : int(a.end * SAMPLE_RATE)] for a in rec.annotations]
    texts = [a.text for a in rec.annotations]
    models = load_models(config)
    transcriber = Transcriber(config.asr)
    encoder = load_voice_encoder()
    shortest = config.speakers.min_speech_s
    runs: dict[str, tuple[Callable[[list[Any]], Any], Sequence[Any], tuple[int, ...]]] = {
        "asr": (transcriber.transcribe_batch, clips, options.sizes),
        "voices": (lambda batch: embed_voices(encoder, batch, shortest), clips, options.sizes),
    }
    if models.text is not None:
        text = models.text
        runs["text"] = (text.encode_batch, texts, options.sizes)
    if models.speech_head is not None:
        extractor = models.speech_head.extractor
        runs["heads"] = (lambda batch: [extractor.features(c) for c in batch], clips, (1,))
    report = BenchReport(
        name="batching",
        title=f"Batching the shared models across sessions ({rec.session_id})",
        columns=COLUMNS,
        meta={
            "recording": str(options.recording),
            "utterances": len(clips),
            "mean_utterance_s": round(float(np.mean([len(c) for c in clips])) / SAMPLE_RATE, 2),
            "asr_model": config.asr.model,
            "text_encoder": models.features.text.encoder if models.text is not None else None,
            "model": models.model_id,
            "repeats": options.repeats,
            "cpus": os.cpu_count(),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "measure": "medians of the passes; CPU is the process's (every thread)",
        },
    )
    for name, (run, items, sizes) in runs.items():
        base_cpu = None
        for size in sizes:
            wall, cpu = _time_passes(run, items, size, options.repeats)
            base_cpu = base_cpu or cpu
            report.rows.append(
                {
                    "model": name,
                    "batch": size,
                    "wall_ms": round(wall * 1000, 1),
                    "cpu_ms": round(cpu * 1000, 1),
                    "cpu_gain": round(base_cpu / cpu, 2) if cpu > 0 else None,
                }
            )
    report.meta["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return report
