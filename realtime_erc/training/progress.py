"""The progress callback the trainers and data builders report to."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int, dict[str, float]], None]
"""``progress(phase, done, total, metrics)``: called per step and per epoch (or per item of a
build); the CLI turns it into progress bars."""


def no_progress(phase: str, done: int, total: int, metrics: dict[str, float]) -> None:
    """The default :data:`Progress`: reports nowhere."""
