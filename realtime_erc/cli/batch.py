"""``realtime-erc batch``: many recordings through the pipeline at full speed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from realtime_erc.cli.options import (
    ConfigOpt,
    ModelOpt,
    RayAddressOpt,
    RayOpt,
    SetOpt,
    console,
    fail,
    load,
    model_option,
)

app = typer.Typer()


@app.command()
def batch(
    recordings: Annotated[
        list[str],
        typer.Argument(help="Recording folders, folders of recordings, or globs of either."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (one subfolder each).")],
    workers: Annotated[
        int, typer.Option(min=0, help="Recordings analysed at once (0 = one per CPU).")
    ] = 0,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    model: ModelOpt = None,
    config_file: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Analyse many recordings as `replay --speed max` would, each into OUT/<name>/ (events.jsonl,
    report.json), with a summary in OUT/summary.md. Finished recordings are not redone; a bad
    one is reported and the others go on."""
    from realtime_erc.batch import BatchOptions, RecordingReport, run_batch

    if ray_address and not ray:
        fail("--ray-address needs --ray")
    config = load(config_file, overrides, **model_option(model))

    def done(report: RecordingReport) -> None:
        if report.error:
            console.print(f"[red]✗[/] {report.name}: {report.error}")
        elif report.skipped:
            console.print(f"[dim]= {report.name}: finished earlier[/]")
        else:
            console.print(
                f"[green]✓[/] {report.name}: {report.utterances} utterances, "
                f"{report.x_realtime:.1f}× real time"
            )

    options = BatchOptions(out=out, workers=workers, ray=ray, ray_address=ray_address)
    summary = run_batch(recordings, config, options, done)
    s = summary.to_json()
    console.print(
        f"{s['analysed']} analysed, {s['skipped']} finished earlier, {s['failed']} failed in "
        f"{s['wall_s']} s ({s['x_realtime'] or '–'}× real time); summary: {out / 'summary.md'}"
    )
    if summary.failed:
        raise typer.Exit(1)
