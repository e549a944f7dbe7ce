"""Speech recognition with faster-whisper (CTranslate2): one transcript per speech segment.

The model is always loaded from a directory (packaged weights, see
:mod:`realtime_erc.features.assets`); loading by name would try a hub download. Decoding is set
up for live latency: no VAD filter (the segmenter already cut the audio), no conditioning on
previous text, greedy by default (``beam_size`` from the config), no timestamps unless word
timestamps are asked for, and a short temperature fallback that only costs time when the greedy
pass degenerates.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from faster_whisper.transcribe import get_compression_ratio

from realtime_erc.batching import MicroBatcher
from realtime_erc.config import AsrConfig
from realtime_erc.events import SAMPLE_RATE, Event, Fault, SpeechSegment, Utterance, Word, now
from realtime_erc.load import LoadMonitor
from realtime_erc.pipeline import Stage

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

TEMPERATURES = (0.0, 0.4)
"""Greedy first; one sampled retry when the compression-ratio / log-prob checks fail."""

MEL_FRAMES = 3000
"""Whisper's window: 30 s of 10 ms mel frames."""

FIT_MARGIN_FRAMES = 300
"""Padding kept after an utterance when encoding a fitted window (3 s)."""

MAX_COMPRESSION_RATIO, MAX_WORDS_PER_SECOND = 2.4, 6.0
"""A fitted transcript more repetitive or faster than this is redone on the full window."""

MIN_FIT_FRAMES = 500
"""Shortest fitted window (5 s): shorter ones make Whisper repeat itself."""

NO_SPEECH_THRESHOLD, LOGPROB_THRESHOLD = 0.6, -1.0
"""faster-whisper's defaults for calling a window silent."""

_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")
"""Whisper's sound-event annotations: ``[BLANK_AUDIO]``, ``(music)``, ``*coughs*``."""


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    """What one segment said. ``words`` (empty unless word timestamps were asked for) carry
    times offset by the ``offset`` given to :meth:`Transcriber.transcribe`."""

    text: str
    words: tuple[Word, ...]
    language: str
    audio_s: float
    elapsed_s: float

    @property
    def real_time_factor(self) -> float:
        """Compute time / audio time (< 1 is faster than real time)."""
        return self.elapsed_s / self.audio_s if self.audio_s > 0 else 0.0


def resolve_device(config: AsrConfig) -> tuple[str, str]:
    """``(device, compute_type)`` for the config: auto = CUDA if CTranslate2 sees a GPU, else
    CPU; compute type auto = float16 on CUDA, int8 on CPU."""
    device = config.device
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = config.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


class Transcriber:
    """A loaded Whisper model. Construction loads the weights (seconds): do it off the loop.

    ``model_dir`` overrides ``config.model_dir``, which overrides the packaged ``config.model``.
    If CUDA initialisation fails, a warning is logged and the CPU is used with int8.
    """

    def __init__(
        self,
        config: AsrConfig | None = None,
        *,
        word_timestamps: bool = False,
        model_dir: Path | None = None,
        workers: int = 1,
    ) -> None:
        """``workers``: transcriptions that may run at once (CTranslate2 serialises calls
        beyond them); a server sharing one model across sessions wants one per core."""
        from realtime_erc.features.assets import whisper_model_dir

        self.config = config or AsrConfig()
        self.workers = workers
        self.word_timestamps = word_timestamps
        if model_dir is None:
            model_dir = (
                Path(self.config.model_dir)
                if self.config.model_dir
                else whisper_model_dir(self.config.model)
            )
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "model.bin").is_file():
            from realtime_erc.features.assets import AssetError

            raise AssetError(
                f"{self.model_dir} holds no model.bin: point asr.model_dir at a CTranslate2 "
                "Whisper directory, or leave it empty to use the packaged model"
            )
        self.device, self.compute_type = resolve_device(self.config)
        self.model = self._load()

    def _load(self) -> WhisperModel:
        from faster_whisper import WhisperModel

        try:
            return WhisperModel(
                str(self.model_dir),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.config.cpu_threads,
                num_workers=self.workers,
            )
        except (RuntimeError, ValueError, OSError) as e:
            if self.device != "cuda":
                raise
            log.warning("CUDA initialisation failed (%s); falling back to CPU int8", e)
        self.device, self.compute_type = "cpu", "int8"
        return WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type="int8",
            cpu_threads=self.config.cpu_threads,
            num_workers=self.workers,
        )

    def transcribe(self, samples: np.ndarray, offset: float = 0.0) -> TranscriptResult:
        """Transcribe ``[n]`` float32 mono audio at 16 kHz. Blocking; call it off the loop.

        ``offset`` (seconds) is added to word times, e.g. the session time of ``samples[0]``.
        """
        return self.transcribe_batch([samples], [offset])[0]

    def transcribe_batch(
        self, batch: Sequence[np.ndarray], offsets: Sequence[float] | None = None
    ) -> list[TranscriptResult]:
        """:meth:`transcribe` of several segments at once (e.g. of a server's sessions): the
        short ones are encoded and decoded as one batch, padded to the longest of them; the
        rest, and any a fitted window garbles, one by one on the full window."""
        t0 = now()
        audios = [np.asarray(x, dtype=np.float32).reshape(-1) for x in batch]
        offsets = list(offsets) if offsets is not None else [0.0] * len(audios)
        language = self.config.language if self.config.language not in ("", "auto") else None
        fitted = [i for i, a in enumerate(audios) if self._fits_short_window(a, language)]
        texts = self._transcribe_fitted([audios[i] for i in fitted], language or "en")
        results: list[TranscriptResult | None] = [None] * len(audios)
        for i, text in zip(fitted, texts, strict=True):
            seconds = len(audios[i]) / SAMPLE_RATE
            if _looks_repetitive(text, seconds):
                log.debug("fitted window repeated itself; decoding the full window")
            else:
                results[i] = TranscriptResult(text, (), language or "en", seconds, now() - t0)
        for i, result in enumerate(results):
            if result is None:
                results[i] = self._transcribe_full(audios[i], offsets[i], language, t0)
        return results  # type: ignore[return-value]

    def _transcribe_full(
        self, audio: np.ndarray, offset: float, language: str | None, t0: float
    ) -> TranscriptResult:
        segments, info = self.model.transcribe(
            audio,
            language=language,
            beam_size=self.config.beam_size,
            temperature=list(TEMPERATURES),
            condition_on_previous_text=False,
            without_timestamps=not self.word_timestamps,
            word_timestamps=self.word_timestamps,
            vad_filter=False,
        )
        texts: list[str] = []
        words: list[Word] = []
        for seg in segments:  # a generator: decoding happens here
            texts.append(seg.text)
            for w in seg.words or ():
                start, end = offset + float(w.start), offset + float(w.end)
                words.append(Word(w.word.strip(), start, end, float(w.probability)))
        text = " ".join(_NON_SPEECH.sub(" ", "".join(texts)).split())
        return TranscriptResult(
            text=text,
            words=tuple(w for w in words if w.text),
            language=info.language,
            audio_s=len(audio) / SAMPLE_RATE,
            elapsed_s=now() - t0,
        )

    def _fits_short_window(self, audio: np.ndarray, language: str | None) -> bool:
        multilingual = self.model.model.is_multilingual
        return (
            self.config.fit_window
            and not self.word_timestamps
            and (language is not None or not multilingual)
            and len(audio) <= (MEL_FRAMES - FIT_MARGIN_FRAMES) * SAMPLE_RATE // 100
        )

    def _transcribe_fitted(self, audios: list[np.ndarray], language: str) -> list[str]:
        """Greedy/beam decode of short utterances, encoding only the mel frames they need.

        faster-whisper always pads to Whisper's 30 s window, so the encoder costs the same for a
        2 s utterance as for 30 s of speech (≈ 450 ms for tiny.en on 2 CPU cores). CTranslate2
        accepts shorter inputs: padding to the utterance plus a margin, rounded up to whole
        seconds, cuts encoding ≈ 4× at the same word error rate on our recordings. A batch is
        padded to its longest window and goes through the encoder and the decoder together.
        """
        if not audios:
            return []
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        mels = [model.feature_extractor(a, chunk_length=None)[:, :-1] for a in audios]  # [80, T]
        longest = max(m.shape[1] for m in mels)
        frames = -(-(longest + FIT_MARGIN_FRAMES) // 100) * 100
        frames = min(max(frames, MIN_FIT_FRAMES), MEL_FRAMES)
        window = np.zeros((len(mels), mels[0].shape[0], frames), dtype=np.float32)
        for i, mel in enumerate(mels):
            used = min(mel.shape[1], frames)
            window[i, :, :used] = mel[:, :used]
        features = ctranslate2.StorageView.from_array(window)
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        encoded = model.model.encode(features, to_cpu=False)
        # ~3 tokens per second of speech is typical; the bound stops runaway repetition.
        seconds = max(len(a) for a in audios) / SAMPLE_RATE
        results = model.model.generate(
            encoded,
            [prompt] * len(audios),
            beam_size=self.config.beam_size,
            max_length=len(prompt) + 20 + int(8 * seconds),
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            return_scores=True,
            return_no_speech_prob=True,
        )
        texts = []
        for result in results:
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            score = result.scores[0] if result.scores else 0.0
            avg_logprob = score / (len(tokens) + 1) if tokens else score
            if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
                texts.append("")  # Whisper's own silence rule
            else:
                text = " ".join(_NON_SPEECH.sub(" ", tokenizer.decode(tokens)).split())
                # a lone "." or "..." is what padding makes of silence, not speech
                texts.append(text if any(c.isalnum() for c in text) else "")
        return texts


def _looks_repetitive(text: str, seconds: float) -> bool:
    """Whisper's failure mode on a short window: the same phrase again and again. Caught by
    gzip compression (long loops), repeated 4-grams (short ones) or an impossible speech rate."""
    words = text.lower().split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return (
        get_compression_ratio(text) > MAX_COMPRESSION_RATIO
        or len(grams) != len(set(grams))
        or len(words) > MAX_WORDS_PER_SECOND * seconds + 4
    )


class AsrStage(Stage):
    """Pipeline stage: :class:`SpeechSegment` in, :class:`Utterance` out (others pass through).

    Loads the model in :meth:`start` and transcribes in a worker thread, so the event loop keeps
    moving audio meanwhile. Segments that transcribe to nothing (noise, breaths) are dropped,
    unless ``keep_empty`` (the live chain, where it is the transcription branch beside the
    analysis): then every segment becomes an utterance whose id is the segment's id (a
    provisional event may already be out under that id, so the final one must follow), and a
    transcription that raises or that the ``load`` monitor sheds gives an utterance with an
    empty text and a :class:`Fault` instead of stopping the session.
    ``transcriber`` may be given ready-made (tests, or sharing one model across sessions);
    ``batcher``: a :class:`~realtime_erc.batching.MicroBatcher` over its
    :meth:`Transcriber.transcribe_batch` shared by a server's sessions (segments that close
    together are transcribed as one batch).
    """

    name = "transcription"
    accepts = (SpeechSegment,)

    def __init__(
        self,
        config: AsrConfig | None = None,
        *,
        word_timestamps: bool = False,
        transcriber: Transcriber | None = None,
        keep_empty: bool = False,
        load: LoadMonitor | None = None,
        batcher: MicroBatcher[tuple[np.ndarray, float], TranscriptResult] | None = None,
    ) -> None:
        self.config = config or AsrConfig()
        self.batcher = batcher
        self.word_timestamps = word_timestamps
        self.transcriber = transcriber
        self.keep_empty = keep_empty
        self.load = load
        self.failures = 0
        self._next_id = 0

    async def start(self) -> None:
        if self.transcriber is None and self.batcher is None:
            self.transcriber = await asyncio.to_thread(
                Transcriber, self.config, word_timestamps=self.word_timestamps
            )
            log.info(
                "whisper %s loaded from %s on %s (%s)",
                self.config.model,
                self.transcriber.model_dir,
                self.transcriber.device,
                self.transcriber.compute_type,
            )
            # The first decode allocates CTranslate2's buffers; pay for it now, not on the
            # first utterance.
            await asyncio.to_thread(self.transcriber.transcribe, np.zeros(SAMPLE_RATE, np.float32))

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if not isinstance(event, SpeechSegment):
            yield event
            return
        if self.keep_empty:
            yield await self.transcribe_or_fault(event)
            return
        utterance = await self.transcribe(event)
        if utterance is not None:
            yield utterance

    async def transcribe_or_fault(self, segment: SpeechSegment) -> Utterance:
        """Always an utterance: empty text with a :class:`Fault` when the transcription failed
        or was shed by the overload policy."""
        if self.load is not None:
            self.load.observe(now() - segment.closed_at, "asr")
            if self.load.shed("transcription"):
                fault = Fault("asr", f"not transcribed: overload (level {self.load.level})")
                return self._utterance(segment, None, (fault,))
        try:
            return await self.transcribe(segment) or self._utterance(segment, None)
        except Exception as e:  # one utterance's failure must not end the session
            self.failures += 1
            log.exception("transcribing segment %d failed", segment.segment_id)
            return self._utterance(segment, None, (Fault("asr", f"{type(e).__name__}: {e}"),))

    async def transcribe(self, segment: SpeechSegment) -> Utterance | None:
        """The segment's :class:`Utterance`, or None if nothing was said."""
        if self.batcher is not None:
            result = await self.batcher.submit((segment.samples, segment.audio_start))
        else:
            if self.transcriber is None:
                await self.start()
            assert self.transcriber is not None
            result = await asyncio.to_thread(
                self.transcriber.transcribe, segment.samples, segment.audio_start
            )
        if not result.text:
            log.debug(
                "segment %d (%.2f–%.2f s) transcribed to nothing",
                segment.segment_id,
                segment.start,
                segment.end,
            )
            return None
        log.debug(
            "segment %d: %.2f s audio in %.2f s (RTF %.2f): %s",
            segment.segment_id,
            result.audio_s,
            result.elapsed_s,
            result.real_time_factor,
            result.text,
        )
        return self._utterance(segment, result)

    def _utterance(
        self,
        segment: SpeechSegment,
        result: TranscriptResult | None,
        faults: tuple[Fault, ...] = (),
    ) -> Utterance:
        if self.keep_empty:
            utterance_id = segment.segment_id
        else:
            utterance_id = self._next_id
            self._next_id += 1
        return Utterance(
            utterance_id=utterance_id,
            segment=segment,
            text=result.text if result else "",
            words=result.words if result else (),
            language=result.language if result else self.config.language,
            transcribed_at=now(),
            faults=faults,
        )

    async def close(self) -> None:
        self.transcriber = None  # frees the model (and its GPU memory) with the last reference
