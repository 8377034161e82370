"""`vesselctl validate PATH`: check a LabelMe folder or a prepared dataset, report every problem."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vesselctl.cli.common import (
    ConfigOption,
    SetOption,
    console,
    handle_errors,
    overrides,
    stdout_is_tty,
)
from vesselctl.settings.base import field_help, load_settings
from vesselctl.settings.validate import ValidateSettings

if TYPE_CHECKING:
    from vesselctl.stages.validate import ValidateResult


@handle_errors
def validate(
    path: Annotated[Path, typer.Argument(help=field_help(ValidateSettings, "path"))],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=field_help(ValidateSettings, "out"))
    ] = None,
    overlays: Annotated[
        Path | None, typer.Option(help=field_help(ValidateSettings, "overlays"))
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option("--strict/--no-strict", help=field_help(ValidateSettings, "strict")),
    ] = None,
    show: Annotated[int | None, typer.Option(help=field_help(ValidateSettings, "show"))] = None,
    workers: Annotated[
        int | None, typer.Option(help=field_help(ValidateSettings, "workers"))
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Check annotations or a prepared dataset; exit 1 on errors (or warnings with --strict)."""
    from vesselctl.stages import validate as stage

    settings = load_settings(
        ValidateSettings,
        config,
        overrides(set_),
        {
            "path": path,
            "out": out,
            "overlays": overlays,
            "strict": strict,
            "show": show,
            "workers": workers,
        },
    )
    if stdout_is_tty():
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("validating", total=None)
            result = stage.run(
                settings, lambda done, total: bar.update(task, completed=done, total=total)
            )
    else:
        result = stage.run(settings)
    _print_summary(result, settings.show)
    if result.failed:
        raise typer.Exit(code=1)


def _print_summary(result: ValidateResult, show: int) -> None:
    from rich.table import Table

    from vesselctl.data.checks import CHECKS

    what = "LabelMe files" if result.kind == "labelme" else "prepared images"
    console.print(f"validated {result.files} {what} in {result.path} ({result.seconds:.1f} s)")
    if result.by_check:
        table = Table(title="problems by check", title_justify="left")
        table.add_column("check")
        table.add_column("severity")
        table.add_column("count", justify="right")
        table.add_column("what it means")
        for check, count in result.by_check.items():
            info = CHECKS[check]
            style = "red" if info.severity == "error" else "yellow"
            table.add_row(check, f"[{style}]{info.severity}[/]", str(count), info.title)
        console.print(table)
    if result.problems and show:
        listed = Table(
            title=f"first {min(show, len(result.problems))} of {len(result.problems)} problems",
            title_justify="left",
            show_lines=False,
        )
        listed.add_column("severity")
        listed.add_column("problem", overflow="fold")
        for problem in result.problems[:show]:
            style = "red" if problem.severity == "error" else "yellow"
            listed.add_row(f"[{style}]{problem.severity}[/]", problem.message, style=None)
        console.print(listed)
    _print_stats(result.stats)
    verdict = "[bold red]FAILED[/]" if result.failed else "[bold green]PASSED[/]"
    strict = " (--strict: warnings fail too)" if result.strict else ""
    console.print(f"{verdict}: {result.errors} errors, {result.warnings} warnings{strict}")
    if result.out_dir is not None:
        console.print(f"report: {result.out_dir / 'validation.json'}")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_stats(stats: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="dataset statistics", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("images read", str(stats["images"]))
    table.add_row("masks (empty)", f"{stats['masks']} ({stats['empty_masks']})")
    table.add_row("shapes", str(stats["shapes"]))
    if stats["shapes_by_type"]:
        table.add_row(
            "  by type", ", ".join(f"{k} {v}" for k, v in stats["shapes_by_type"].items())
        )
    if stats["shapes_by_label"]:
        table.add_row(
            "  by label", ", ".join(f"{k} {v}" for k, v in stats["shapes_by_label"].items())
        )
    sizes = list(stats["image_sizes"].items())
    more = f", ... ({len(sizes) - 5} more sizes)" if len(sizes) > 5 else ""
    table.add_row("image sizes (HxW)", ", ".join(f"{k}: {v}" for k, v in sizes[:5]) + more)
    frac = stats["vessel_fraction"]
    table.add_row(
        "vessel fraction",
        f"mean {_fmt(frac['mean'])}, min {_fmt(frac['min'])}, max {_fmt(frac['max'])}",
    )
    width = stats["vessel_width_px"]
    if width["skeleton_samples"]:
        table.add_row(
            "vessel width (px)",
            f"mean {_fmt(width['mean'], 2)}, p10 {_fmt(width['p10'], 0)}, median "
            f"{_fmt(width['median'], 0)}, p90 {_fmt(width['p90'], 0)} "
            f"({width['skeleton_samples']} skeleton pixels; width = 2*d - 1)",
        )
    console.print(table)
