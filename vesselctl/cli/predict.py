"""`vesselctl predict`: masks, probability maps and overlays for images or a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vesselctl.cli.common import (
    ConfigOption,
    SetOption,
    console,
    err_console,
    handle_errors,
    overrides,
    print_kv_table,
)
from vesselctl.settings.base import field_help, load_settings
from vesselctl.settings.predict import PredictSettings


def _help(key: str) -> str:
    return field_help(PredictSettings, key)


@handle_errors
def predict(
    model: Annotated[Path | None, typer.Option("--model", "-m", help=_help("model"))] = None,
    input_path: Annotated[Path | None, typer.Option("--input", "-i", help=_help("input"))] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=_help("out"))] = None,
    prompt: Annotated[str | None, typer.Option(help=_help("prompt"))] = None,
    split: Annotated[str | None, typer.Option(help=_help("split"))] = None,
    base: Annotated[Path | None, typer.Option(help=_help("base"))] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help=_help("inference.batch_size"))
    ] = None,
    device: Annotated[str | None, typer.Option(help=_help("inference.device"))] = None,
    gpus: Annotated[int | None, typer.Option(help=_help("inference.gpus"))] = None,
    threshold: Annotated[float | None, typer.Option(help=_help("inference.threshold"))] = None,
    tta: Annotated[
        bool | None, typer.Option("--tta/--no-tta", help=_help("inference.hflip_tta"))
    ] = None,
    probabilities: Annotated[str | None, typer.Option(help=_help("output.probabilities"))] = None,
    skip_existing: Annotated[
        bool | None, typer.Option("--skip-existing", help=_help("output.skip_existing"))
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help=_help("output.overwrite"))
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="Hide the progress bar.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Predict vessel masks with a model folder or a training checkpoint."""
    settings = load_settings(
        PredictSettings,
        config,
        overrides(set_),
        {
            "model": model,
            "input": input_path,
            "out": out,
            "prompt": prompt,
            "split": split,
            "base": base,
            "inference.batch_size": batch_size,
            "inference.device": device,
            "inference.gpus": gpus,
            "inference.threshold": threshold,
            "inference.hflip_tta": tta,
            "output.probabilities": probabilities,
            "output.skip_existing": skip_existing,
            "output.overwrite": overwrite,
            "progress": False if no_progress else None,
        },
    )
    from vesselctl.stages import predict as stage

    result = stage.run(settings)
    print_kv_table(
        "vesselctl predict",
        [
            ("output", result.out_dir),
            ("predicted", result.predicted),
            ("skipped (already there)", result.skipped),
            ("unreadable", len(result.failures)),
            ("device", result.device),
            ("images/s", f"{result.images_per_s:.2f}"),
        ],
    )
    if result.failures:
        for failure in result.failures:
            err_console.print(
                f"unreadable: {failure['error']}", highlight=False, markup=False, soft_wrap=True
            )
        raise typer.Exit(code=1)
    console.print(f"masks in {result.out_dir / 'masks'}")
