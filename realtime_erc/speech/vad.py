"""Voice activity detection: Silero VAD v6 (ONNX) for speech probability, webrtcvad as a gate.

Silero is run in streaming mode: windows of :data:`WINDOW` samples at 16 kHz, each prefixed with
the last :data:`CONTEXT` samples of the previous window, with the LSTM state carried between
calls. The v6 graph takes ``input [seq, 576]`` and runs its LSTM along ``seq``, so several
consecutive windows go through one ``run`` with exactly the result of feeding them one by one.

webrtcvad is far cheaper and errs on the side of "voiced" (noise often passes it); digital silence
and quiet room tone do not, so gated-out windows skip Silero and score 0.

Silero under-scores shouting and screaming: over RAVDESS's 1,198 clips levelled over a noise
floor, it left 24 without a segment, every one at strong intensity (angry, fearful, happy, sad),
and on the development sessions it lost 6 of the valid half's ~200 RAVDESS turns. So a window
that webrtcvad passes and that stands :attr:`LoudVoiceOptions.above_floor_db` over the running
noise floor (:class:`NoiseFloor`) counts as speech (its probability lifted to the onset
threshold) when Silero gives it at least :attr:`LoudVoiceOptions.min_prob`, from the
:attr:`LoudVoiceOptions.min_run`-th such window in a row: loud and voiced is what a scream is,
while stationary noise, knocks, claps, tones and melodies made none of those runs, and ordinary
speech keeps the onsets Silero gives it (``docs/SESSIONS.md``, "Sixth pass").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime_erc.config import VadConfig
from realtime_erc.events import SAMPLE_RATE

WINDOW = 512
"""Samples per Silero window at 16 kHz (32 ms)."""

CONTEXT = 64
"""Samples of the previous window prepended to each window (Silero v5/v6 convention)."""

_STATE_SHAPE = (1, 1, 128)


class SileroVad:
    """Streaming Silero VAD v6: one speech probability in [0, 1] per 512-sample window.

    ``model_path`` defaults to the ONNX file shipped in faster-whisper. One intra-op thread: a
    window costs ~0.1 ms batched, ~0.3 ms alone, so more threads only add contention.
    """

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime

        from realtime_erc.features.assets import silero_vad_path

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            str(model_path or silero_vad_path()),
            providers=["CPUExecutionProvider"],
            sess_options=opts,
        )
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and context (start of a new, unrelated stream)."""
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of one ``[512]`` float32 window."""
        return float(self.probabilities(window.reshape(1, WINDOW))[0])

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """Speech probabilities ``[n]`` of ``n`` consecutive windows ``[n, 512]``, in one run."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != WINDOW:
            raise ValueError(f"expected [n, {WINDOW}] windows, got shape {windows.shape}")
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        contexts = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1)  # [n, 576]
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -CONTEXT:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)

    def skip(self, window: np.ndarray) -> None:
        """Account for a window that was not scored (gated out): keep the context contiguous and
        reset the LSTM state, so stale "speech" state never carries across a silence gap."""
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.asarray(window[-CONTEXT:], dtype=np.float32).copy()


class WebRtcGate:
    """webrtcvad (``mode`` 0..3, 3 = most aggressive) as a cheap per-window speech gate.

    A 512-sample window is checked as 10 ms frames at offsets 0, 160, 320 and 352 (the last one
    overlaps so every sample is covered); the window is voiced if any frame is.
    """

    FRAME = SAMPLE_RATE // 100  # 10 ms
    _OFFSETS = (0, 160, 320, WINDOW - SAMPLE_RATE // 100)

    def __init__(self, mode: int = 2) -> None:
        import webrtcvad

        if not 0 <= mode <= 3:
            raise ValueError(f"webrtcvad mode must be 0..3, got {mode}")
        self._vad = webrtcvad.Vad(mode)

    def is_speech(self, window: np.ndarray) -> bool:
        """True if any 10 ms frame of the ``[512]`` float32 window is voiced."""
        pcm = np.clip(np.asarray(window) * 32768.0, -32768, 32767).astype(np.int16)
        return any(
            self._vad.is_speech(pcm[o : o + self.FRAME].tobytes(), SAMPLE_RATE)
            for o in self._OFFSETS
        )


@dataclass(frozen=True)
class LoudVoiceOptions:
    """When a loud voiced window counts as speech although Silero is unsure of it."""

    above_floor_db: float = 20.0
    """How far over the running noise floor a window must stand (0: the rule is off)."""
    min_prob: float = 0.1
    """The least Silero must give it (music and noise bursts mostly score below)."""
    lift_to: float = 0.5
    """The probability such a window is given: the segmenter's onset threshold."""
    min_run: int = 3
    """Lift a window only once this many in a row (it included) qualify: the window where
    ordinary speech begins or ends often qualifies alone, a scream's run on."""


class NoiseFloor:
    """Running noise floor in dBFS: follows the window level down at once (never below
    ``lowest_dbfs``) and up by at most ``rise_db_per_s`` (minimum statistics, simplified), so
    speech never lifts it far while a louder steady noise (a fan switched on) becomes the
    floor within seconds.

    ``update(levels [n] dB) -> floors [n]``: the floor each window is measured against (its
    own level included, so a window never stands over a floor it set).
    """

    def __init__(self, rise_db_per_s: float = 3.0, lowest_dbfs: float = -70.0) -> None:
        self.step = rise_db_per_s * WINDOW / SAMPLE_RATE
        self.lowest = lowest_dbfs
        self.floor: float | None = None

    def update(self, levels: np.ndarray) -> np.ndarray:
        out = np.empty(len(levels))
        floor = self.floor
        for i, level in enumerate(levels):
            # no microphone is quieter than ``lowest_dbfs``: digital silence between a
            # recording's turns must not make a speech tail "loud"
            level = max(float(level), self.lowest)
            floor = level if floor is None else min(level, floor + self.step)
            out[i] = floor
        self.floor = floor
        return out


def window_levels(windows: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each ``[512]`` window (-120 for digital silence): ``[n]``."""
    power = np.mean(np.square(windows, dtype=np.float64), axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-12))


class SpeechDetector:
    """Silero behind an optional webrtcvad gate: ``probabilities([n, 512]) -> [n]``.

    Windows the gate rejects score 0 without running Silero; runs of consecutive accepted
    windows are scored in one batched Silero call. With ``loud`` (see the module docstring), a
    window standing ``loud.above_floor_db`` over the noise floor that Silero scores in
    ``[loud.min_prob, loud.lift_to)`` is given ``loud.lift_to`` once ``loud.min_run`` such
    windows in a row (it the last) have come, across calls.
    """

    def __init__(
        self,
        silero: SileroVad,
        gate: WebRtcGate | None = None,
        loud: LoudVoiceOptions | None = None,
    ) -> None:
        self.silero = silero
        self.gate = gate
        self.loud = loud if loud is not None and loud.above_floor_db > 0 else None
        self._floor = NoiseFloor()
        self._run = 0  # qualifying windows in a row, up to the last one scored
        self.windows_scored = 0
        self.windows_gated = 0
        self.windows_lifted = 0

    def reset(self) -> None:
        self.silero.reset()
        self._floor = NoiseFloor()
        self._run = 0

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        probs = self._scores(windows)
        if self.loud is None or len(probs) == 0:
            return probs
        levels = window_levels(windows)
        loud = levels >= self._floor.update(levels) + self.loud.above_floor_db
        qualifies = loud & (probs >= self.loud.min_prob)
        lift = np.zeros(len(probs), dtype=bool)
        for i, q in enumerate(qualifies):
            self._run = self._run + 1 if q else 0
            lift[i] = self._run >= self.loud.min_run and probs[i] < self.loud.lift_to
        self.windows_lifted += int(lift.sum())
        return np.where(lift, np.float32(self.loud.lift_to), probs)

    def _scores(self, windows: np.ndarray) -> np.ndarray:
        n = len(windows)
        if self.gate is None:
            self.windows_scored += n
            return self.silero.probabilities(windows)
        voiced = np.fromiter((self.gate.is_speech(w) for w in windows), dtype=bool, count=n)
        probs = np.zeros(n, dtype=np.float32)
        i = 0
        while i < n:
            j = i
            while j < n and voiced[j] == voiced[i]:
                j += 1
            if voiced[i]:
                probs[i:j] = self.silero.probabilities(windows[i:j])
                self.windows_scored += j - i
            else:
                self.silero.skip(windows[j - 1])
                self.windows_gated += j - i
            i = j
        return probs


def speech_detector(config: VadConfig) -> SpeechDetector:
    """The detector ``[vad]`` describes: Silero, its webrtcvad gate and the loud-voice rule."""
    gate = WebRtcGate(config.webrtc_mode) if config.webrtc_gate else None
    loud = LoudVoiceOptions(
        config.loud_voice_db,
        config.loud_voice_min_prob,
        config.threshold,
        config.loud_voice_windows,
    )
    return SpeechDetector(SileroVad(), gate, loud)
