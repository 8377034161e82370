"""Pieces every command shares: the --config/--set options, error handling, console output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from vesselctl.errors import VesselctlError

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML settings file; see `vesselctl config STAGE` for every key.",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. split.seed=7.",
        metavar="KEY=VALUE",
    ),
]


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a VesselctlError into one clear line on stderr and the error's exit code.

    This is the only place errors are caught: library code raises, the CLI reports.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except VesselctlError as exc:
            # Text, not markup: messages may hold brackets such as "[SEG]".
            err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper


def overrides(values: list[str] | None) -> list[str]:
    """Normalise the repeatable --set option (typer gives None when absent)."""
    return list(values or [])


def stdout_is_tty() -> bool:
    """Progress bars only make sense on an interactive terminal."""
    return sys.stdout.isatty()


def print_kv_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """Print a two-column summary table."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(str(key), str(value))
    console.print(table)
