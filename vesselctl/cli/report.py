"""`vesselctl report`: the training summary, generated from a run's own files at any time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vesselctl.cli.common import ConfigOption, SetOption, console, handle_errors, overrides
from vesselctl.settings.base import field_help, load_settings
from vesselctl.settings.report import ReportSettings


@handle_errors
def report(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help=field_help(ReportSettings, "runs"), metavar="RUN_OR_LOG..."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=field_help(ReportSettings, "out"))
    ] = None,
    ema: Annotated[float | None, typer.Option(help=field_help(ReportSettings, "ema"))] = None,
    title: Annotated[str | None, typer.Option(help=field_help(ReportSettings, "title"))] = None,
    evaluations: Annotated[
        list[Path] | None,
        typer.Option("--eval", help=field_help(ReportSettings, "evaluations"), metavar="EVAL_DIR"),
    ] = None,
    names: Annotated[
        list[str] | None,
        typer.Option("--name", help=field_help(ReportSettings, "names"), metavar="NAME"),
    ] = None,
    iters_per_epoch: Annotated[
        int | None, typer.Option(help=field_help(ReportSettings, "iters_per_epoch"))
    ] = None,
    samples_per_step: Annotated[
        int | None, typer.Option(help=field_help(ReportSettings, "samples_per_step"))
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Report one or more training runs: report.md, self-contained report.html, plots, JSON."""
    from rich.table import Table

    from vesselctl.stages import report as stage

    flags = {
        "runs": runs or None,
        "out": out,
        "ema": ema,
        "title": title,
        "evaluations": evaluations or None,
        "names": names or None,
        "iters_per_epoch": iters_per_epoch,
        "samples_per_step": samples_per_step,
    }
    settings = load_settings(ReportSettings, config, overrides(set_), flags)
    result = stage.run(settings)

    table = Table(title="report", title_justify="left")
    for column in ("run", "status", "steps", "final loss", "problems", "warnings", "evaluation"):
        table.add_column(column)
    for item in result.runs:
        steps = str(item["steps_done"]) if item["steps_done"] is not None else "-"
        if item["max_steps"]:
            steps += f" / {item['max_steps']}"
        final = item["final_loss"]
        table.add_row(
            item["name"],
            item["status"],
            steps,
            "-" if final is None else f"{final:.4f}",
            str(item["problems"]),
            str(item["warnings"]),
            "yes" if item["evaluations"] else "none found",
        )
    console.print(table)
    for line in result.missing:
        console.print(f"[yellow]missing[/] {line}", highlight=False, markup=True)
    console.print(f"report: {result.report_html}", highlight=False)
    console.print(f"        {result.report_md}", highlight=False)
