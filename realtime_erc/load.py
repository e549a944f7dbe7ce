"""The overload policy: what a session stops doing, in which order, when compute falls behind.

The signal is the *lag* of each closed speech segment: how long after the segmenter closed it a
stage starts working on it (queueing included). Stages report it with :meth:`LoadMonitor.observe`
and ask :meth:`LoadMonitor.sheds` before optional work. The level follows the most lagging stage
(each stage's latest lag), so a fast stage does not mask a slow one. Levels, each adding to the
one before:

====== ================ ==========================================================================
level  lag reaches      shed
====== ================ ==========================================================================
1      ``thresholds[0]`` ``provisional`` — no provisional events (the final ones still come)
2      ``thresholds[1]`` ``video`` — camera frames are no longer analysed (faces: absent)
3      ``thresholds[2]`` ``features`` — audio/visual features and emotion heads are skipped
4      ``thresholds[3]`` ``transcription`` — segments are not transcribed (text empty, the event
                         says so in ``errors``), which bounds latency even when ASR alone is
                         slower than real time
====== ================ ==========================================================================

A level is left when the lag falls below half its threshold (hysteresis, so it does not flap).
Audio is never shed before the recorder: ``run --record`` writes every captured sample whatever
the level. Every change of level is published on the status topic (``erc.status/1`` ``load``).
"""

from __future__ import annotations

import logging
from collections import Counter

from realtime_erc.config import LoadPolicy
from realtime_erc.events import LoadReport

log = logging.getLogger(__name__)

SHED_ORDER: tuple[str, ...] = ("provisional", "video", "features", "transcription")
"""What each level adds to the shed work, in order."""


class LoadMonitor:
    """Tracks the lag and the level; counts what was shed. Single-threaded (the event loop).
    ``policy``: the ``[load]`` section: ``shed_thresholds_s``, the lag (seconds) at which each
    level of :data:`SHED_ORDER` starts; ``shedding`` false keeps level 0 whatever the lag (every
    utterance fully processed, latency unbounded)."""

    def __init__(self, policy: LoadPolicy | None = None) -> None:
        self.policy = policy or LoadPolicy()
        self.level = 0
        self.lag_s = 0.0
        self.max_level = 0
        self.shed_counts: Counter[str] = Counter()
        self._stage_lags: dict[str, float] = {}
        self._changed = False

    def observe(self, lag_s: float, stage: str = "") -> None:
        """``stage`` started on a segment ``lag_s`` seconds after it closed."""
        self._stage_lags[stage] = max(0.0, lag_s)
        self.lag_s = max(self._stage_lags.values())
        if not self.policy.shedding:
            return
        level = self.level
        thresholds = self.policy.shed_thresholds_s
        while level < len(thresholds) and self.lag_s >= thresholds[level]:
            level += 1
        while level > 0 and self.lag_s < thresholds[level - 1] / 2:
            level -= 1
        if level != self.level:
            log.warning(
                "load: lag %.1f s → level %d (shedding: %s)",
                self.lag_s,
                level,
                ", ".join(SHED_ORDER[:level]) or "nothing",
            )
            self.level = level
            self.max_level = max(self.max_level, level)
            self._changed = True

    def sheds(self, work: str) -> bool:
        """True when ``work`` (one of :data:`SHED_ORDER`) is skipped at the current level."""
        return work in SHED_ORDER[: self.level]

    def shed(self, work: str) -> bool:
        """:meth:`sheds`, counting the skip when it happens."""
        if self.sheds(work):
            self.shed_counts[work] += 1
            return True
        return False

    @property
    def shedding(self) -> tuple[str, ...]:
        return SHED_ORDER[: self.level]

    def report(self) -> LoadReport:
        return LoadReport(self.level, self.shedding, self.lag_s * 1000, dict(self.shed_counts))

    def take_change(self) -> LoadReport | None:
        """The report when the level changed since the last call, else None."""
        if not self._changed:
            return None
        self._changed = False
        return self.report()
