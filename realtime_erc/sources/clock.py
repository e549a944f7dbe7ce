"""The session clock shared by live audio and video.

Session time 0 is the first audio sample. The microphone fixes the origin (on the
``events.now()`` monotonic clock) when its first block arrives; the camera converts its frame
times with the same origin, so audio and video line up without any device clock in common.
"""

from __future__ import annotations

import threading


class SessionClock:
    """Maps ``events.now()`` readings to session seconds once the origin is known.

    Thread-safe: the microphone's callback thread sets the origin, the camera thread reads it.
    """

    def __init__(self) -> None:
        self._origin: float | None = None
        self._lock = threading.Lock()

    @property
    def origin(self) -> float | None:
        """``now()`` reading of session time 0, or None before the first audio sample."""
        return self._origin

    def start_at(self, origin: float) -> float:
        """Fix the origin (first call wins) and return the origin in force."""
        with self._lock:
            if self._origin is None:
                self._origin = origin
            return self._origin

    def session_time(self, at: float) -> float | None:
        """Session seconds of the ``now()`` reading ``at``; None before the origin is known."""
        origin = self._origin
        return None if origin is None else at - origin
