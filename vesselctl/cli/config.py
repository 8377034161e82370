"""`vesselctl config STAGE`: every setting of a stage with its type, default and description.

The descriptions are the pydantic field descriptions, the same text the command flags show, so the
YAML reference and the CLI help cannot drift apart.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from vesselctl.cli.common import console, handle_errors
from vesselctl.errors import ConfigError

# Stage name -> "module:Class" of its settings model, imported only when asked for.
STAGE_SETTINGS: dict[str, str] = {}


def register_stage_settings(stage: str, target: str) -> None:
    """Make a stage's settings model known to `vesselctl config`."""
    STAGE_SETTINGS[stage] = target


def load_stage_settings_class(stage: str) -> type:
    """Import the settings model of ``stage`` or fail with the list of known stages."""
    if stage not in STAGE_SETTINGS:
        known = ", ".join(sorted(STAGE_SETTINGS)) or "none"
        raise ConfigError(f"unknown stage '{stage}'; stages with settings: {known}")
    module_name, _, class_name = STAGE_SETTINGS[stage].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


@handle_errors
def config(
    stage: Annotated[str, typer.Argument(help="Stage whose settings to show, e.g. prepare.")],
    yaml_output: bool = typer.Option(
        False, "--yaml", help="Print a commented YAML file of the defaults to start a config from."
    ),
) -> None:
    """Show every setting of STAGE: key, type, default and what it does."""
    from vesselctl.settings.base import describe_fields

    cls = load_stage_settings_class(stage)
    rows = describe_fields(cls)
    if yaml_output:
        from vesselctl.settings.base import reference_yaml

        header = f"# vesselctl {stage} settings (defaults); pass with --config FILE"
        typer.echo("\n".join([header, *reference_yaml(cls)]))
        return
    from rich.table import Table

    table = Table(title=f"{stage} settings", title_justify="left")
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for key, type_name, default, description in rows:
        table.add_row(key, type_name, repr(default), description)
    console.print(table)
