"""`vesselctl inspect`: describe a checkpoint safely (never unpickles code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vesselctl.cli.common import (
    ConfigOption,
    SetOption,
    console,
    handle_errors,
    overrides,
    print_kv_table,
)
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
    rows: list[tuple[str, object]] = [
        ("format", result.format),
        ("model family", result.family or "unknown"),
        ("size on disk", f"{result.size_bytes / 2**20:.1f} MiB in {result.files} file(s)"),
        ("tensors / parameters", f"{result.tensors:,} / {result.parameters:,}"),
        ("dtypes", ", ".join(f"{d}: {n}" for d, n in sorted(result.dtypes.items()))),
    ]
    if result.lora:
        lora = result.lora
        rows.append(
            ("LoRA", f"rank {lora['rank']}, alpha {lora.get('alpha')}, {lora['modules']} modules")
        )
    rows += [(f"meta.{key}", str(value)[:200]) for key, value in result.metadata.items()]
    print_kv_table(f"vesselctl inspect {result.path}", rows)
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
