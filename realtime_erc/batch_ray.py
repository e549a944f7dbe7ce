"""``realtime-erc batch --ray``: the batch's recordings on Ray Data.

One row per recording; a pool of ``workers`` actors, each a
:class:`~realtime_erc.batch.RecordingAnalyser` that loads the models once and replays one
recording per row. Rows carry paths, not audio: every node must see the recordings and the
output folder at the same paths (a shared file system on a cluster).

Ray is an optional extra (``pip install 'realtime-erc[ray]'``). Without an address, Ray's
``RAY_ADDRESS`` is joined when set, else a local Ray is started for the batch and stopped
after it (``ray.shutdown()``, never ``ray stop``, which kills every Ray on the machine).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from realtime_erc.batch import BatchError, RecordingAnalyser, RecordingReport
from realtime_erc.config import Config


def import_ray():  # -> the ray module
    """Ray, or one error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BatchError(
            "--ray needs Ray: pip install 'realtime-erc[ray]' (or run without --ray for a "
            "local process pool)"
        ) from None
    return ray


def start_ray(address: str | None, **local: Any) -> bool:
    """Connect to ``address`` (else ``RAY_ADDRESS``, else start a local Ray with ``local``
    arguments of ``ray.init``); True if this call started Ray (the caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": "warning", "log_to_driver": False}
    if address is None:
        kwargs |= {"include_dashboard": False, **local}
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise BatchError(
            f"cannot reach the Ray cluster at {address}: {e}; check the address (ray status "
            "on the head node), or drop --ray-address to start a local Ray"
        ) from None
    return True


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
