"""`vesselctl inspect`: describe a checkpoint safely (never unpickles code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vesselctl.cli.common import ConfigOption, SetOption, console, handle_errors, overrides
from vesselctl.settings.base import field_help, load_settings
from vesselctl.settings.convert import InspectSettings


@handle_errors
def inspect(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(help=field_help(InspectSettings, "checkpoint"), show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option("--trust-checkpoint", help=field_help(InspectSettings, "trust_checkpoint")),
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Describe a checkpoint: format, family, key groups, dtypes, parameters, LoRA, step, size."""
    from rich.table import Table

    from vesselctl.stages import inspect as stage

    flags = {"checkpoint": checkpoint, "trust_checkpoint": True if trust_checkpoint else None}
    settings = load_settings(InspectSettings, config, overrides(set_), flags)
    result = stage.run(settings)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    summary = Table(
        title=f"vesselctl inspect {result.path}", show_header=False, title_justify="left"
    )
    summary.add_column("what", style="bold")
    summary.add_column("value")
    summary.add_row("format", result.format)
    summary.add_row("model family", str(result.family or "unknown"))
    summary.add_row(
        "size on disk", f"{result.size_bytes / 2**20:.1f} MiB in {result.files} file(s)"
    )
    summary.add_row("tensors / parameters", f"{result.tensors:,} / {result.parameters:,}")
    summary.add_row("dtypes", ", ".join(f"{d}: {n}" for d, n in sorted(result.dtypes.items())))
    if result.lora:
        summary.add_row(
            "LoRA",
            f"rank {result.lora['rank']}, alpha {result.lora.get('alpha')}, "
            f"{result.lora['modules']} modules",
        )
    for key, value in result.metadata.items():
        summary.add_row(f"meta.{key}", str(value)[:200])
    console.print(summary)
    groups = Table(title="key groups", title_justify="left")
    for column in ("group", "tensors", "parameters", "dtypes", "example key"):
        groups.add_column(column)
    for g in result.groups:
        groups.add_row(
            g.name, str(g.tensors), f"{g.parameters:,}", ", ".join(sorted(g.dtypes)), g.example
        )
    console.print(groups)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", markup=True, highlight=False)
