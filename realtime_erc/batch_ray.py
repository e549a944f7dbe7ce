"""``realtime-erc batch --ray``: the batch's recordings on Ray Data.

One row per recording; a pool of ``workers`` actors, each a
:class:`~realtime_erc.batch.RecordingAnalyser` that loads the models once and replays one
recording per row. Rows carry paths, not audio: every node must see the recordings and the
output folder at the same paths (a shared file system on a cluster).

Without an address, Ray's ``RAY_ADDRESS`` is joined when set, else a local Ray is started for
the batch and stopped after it (see :mod:`realtime_erc.ray_support`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from realtime_erc.batch import RecordingAnalyser, RecordingReport
from realtime_erc.config import Config
from realtime_erc.ray_support import import_ray, start_ray


class _Analyser:
    """A Ray Data actor: one :class:`RecordingAnalyser` per actor, a recording per row."""

    def __init__(self, config: Config) -> None:
        self.analyser = RecordingAnalyser(config)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        report = self.analyser.analyse(Path(row["recording"]), Path(row["out"]))
        # as JSON text: labels per speaker differ per row, which Arrow's schemas do not take
        return {"report": json.dumps(report.to_json())}


def run_on_ray(
    config: Config,
    todo: Sequence[tuple[Path, Path]],
    workers: int,
    address: str | None,
    on_done: Callable[[RecordingReport], None],
) -> None:
    """Analyse ``(recording, out)`` pairs on ``workers`` Ray actors of one CPU each."""
    ray = import_ray()
    started = start_ray(address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = context.print_on_execution_start = False
        rows = [{"recording": str(r), "out": str(o)} for r, o in todo]
        data = ray.data.from_items(rows, override_num_blocks=len(rows))
        results = data.map(
            _Analyser,
            fn_constructor_kwargs={"config": config},
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        for row in results.iter_rows():
            on_done(RecordingReport.from_json(json.loads(row["report"])))
    finally:
        if started:
            ray.shutdown()
