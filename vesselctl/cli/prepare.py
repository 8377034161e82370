"""`vesselctl prepare LABELME_DIR OUT_DIR`: LabelMe annotations -> a training-ready dataset."""

from __future__ import annotations

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
    stdout_is_tty,
)
from vesselctl.settings.base import field_help, load_settings
from vesselctl.settings.prepare import PrepareSettings


def _help(key: str) -> str:
    return field_help(PrepareSettings, key)


@handle_errors
def prepare(
    labelme_dir: Annotated[
        Path | None, typer.Argument(help=_help("input"), show_default=False)
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Argument(help=_help("output"), show_default=False)
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help=_help("overwrite"), show_default=False)
    ] = None,
    size: Annotated[
        int | None,
        typer.Option("--size", help="Output height and width in pixels (default 512).", min=8),
    ] = None,
    line_width: Annotated[
        float | None, typer.Option("--line-width", help=_help("raster.line_width"))
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help=_help("split.seed"))] = None,
    group_pattern: Annotated[
        str | None, typer.Option("--group-pattern", help=_help("split.group_pattern"))
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help=_help("workers"), min=0)] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="Never show the progress bar.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Convert LabelMe annotations into images/, masks/, manifest.jsonl and Sa2VA annotations."""
    from vesselctl.stages import prepare as stage

    flags = {
        "input": labelme_dir,
        "output": out_dir,
        "overwrite": overwrite,
        "resize.height": size,
        "resize.width": size,
        "raster.line_width": line_width,
        "split.seed": seed,
        "split.group_pattern": group_pattern,
        "workers": workers,
        "progress": False if no_progress or not stdout_is_tty() else None,
    }
    settings = load_settings(PrepareSettings, config, overrides(set_), flags)
    result = stage.run(settings)
    counts = result.counts
    print_kv_table(
        "prepare",
        [
            ("output", result.output),
            ("input format", result.input_format),
            ("images", f"{result.prepared} prepared of {result.found} found"),
            ("split", f"train {counts['train']} / val {counts['val']} / test {counts['test']}"),
            ("split source", result.split_source),
            ("skipped", len(result.skipped)),
            ("warnings", f"{result.warnings} (see prepare_report.json)"),
            ("line width", f"{settings.raster.line_width} px (source pixels)"),
            ("speed", f"{result.images_per_s:.1f} images/s ({result.elapsed_s:.1f} s)"),
        ],
    )
    for source in result.skipped[:10]:
        console.print(f"skipped: {source}")
