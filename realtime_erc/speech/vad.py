"""Voice activity detection: Silero VAD v6 (ONNX) for speech probability, webrtcvad as a gate.

Silero is run in streaming mode: windows of :data:`WINDOW` samples at 16 kHz, each prefixed with
the last :data:`CONTEXT` samples of the previous window, with the LSTM state carried between
calls. The v6 graph takes ``input [seq, 576]`` and runs its LSTM along ``seq``, so several
consecutive windows go through one ``run`` with exactly the result of feeding them one by one.

webrtcvad is far cheaper and errs on the side of "voiced" (noise often passes it); digital silence
and quiet room tone do not, so gated-out windows skip Silero and score 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


class SpeechDetector:
    """Silero behind an optional webrtcvad gate: ``probabilities([n, 512]) -> [n]``.

    Windows the gate rejects score 0 without running Silero; runs of consecutive accepted
    windows are scored in one batched Silero call.
    """

    def __init__(self, silero: SileroVad, gate: WebRtcGate | None = None) -> None:
        self.silero = silero
        self.gate = gate
        self.windows_scored = 0
        self.windows_gated = 0

    def reset(self) -> None:
        self.silero.reset()

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
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
