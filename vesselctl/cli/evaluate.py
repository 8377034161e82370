"""`vesselctl evaluate`: vessel-segmentation metrics of a prediction folder against ground truth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

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
from vesselctl.settings.evaluate import EvaluateSettings

# Metrics shown in the terminal table (everything is in summary.json and per_image.csv).
TABLE_METRICS = (
    "dice",
    "iou",
    "cldice",
    "sensitivity",
    "specificity",
    "precision",
    "accuracy",
    "mcc",
    "betti0_error",
    "betti1_error",
    "hd95",
    "assd",
    "auc_roc",
    "auc_pr",
)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@handle_errors
def evaluate(
    pred: Annotated[
        Path | None, typer.Option("--pred", help=field_help(EvaluateSettings, "pred"))
    ] = None,
    gt: Annotated[
        Path | None, typer.Option("--gt", help=field_help(EvaluateSettings, "gt"))
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help=field_help(EvaluateSettings, "split"))
    ] = None,
    fov: Annotated[
        Path | None, typer.Option("--fov", help=field_help(EvaluateSettings, "fov"))
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=field_help(EvaluateSettings, "out"))
    ] = None,
    allow_missing: Annotated[
        bool | None,
        typer.Option(
            "--allow-missing",
            help=field_help(EvaluateSettings, "allow_missing"),
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help=field_help(EvaluateSettings, "threshold.value")),
    ] = None,
    sweep: Annotated[
        bool | None,
        typer.Option(
            "--sweep", help=field_help(EvaluateSettings, "threshold.sweep"), show_default=False
        ),
    ] = None,
    compare: Annotated[
        Path | None, typer.Option("--compare", help=field_help(EvaluateSettings, "compare"))
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help=field_help(EvaluateSettings, "workers"))
    ] = None,
    ckpt: Annotated[
        Path | None, typer.Option("--ckpt", help=field_help(EvaluateSettings, "ckpt"))
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help=field_help(EvaluateSettings, "model"))
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help=field_help(EvaluateSettings, "data"))
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", help=field_help(EvaluateSettings, "base"))
    ] = None,
    compare_empty: Annotated[
        bool | None,
        typer.Option(
            "--compare-empty",
            help=field_help(EvaluateSettings, "compare_empty"),
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help=field_help(EvaluateSettings, "inference.device")),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help=field_help(EvaluateSettings, "inference.batch_size")),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Score predicted vessel masks against ground truth: overlap, topology, distances, AUCs.

    With --ckpt or --model it first predicts --split of the prepared --data (converting a training
    checkpoint on the fly) and writes everything into one results folder.
    """

    flags = {
        "pred": pred,
        "gt": gt,
        "split": split,
        "fov": fov,
        "out": out,
        "allow_missing": allow_missing,
        "threshold.value": threshold,
        "threshold.sweep": sweep,
        "compare": compare,
        "workers": workers,
        "ckpt": ckpt,
        "model": model,
        "data": data,
        "base": base,
        "compare_empty": compare_empty,
        "inference.device": device,
        "inference.batch_size": batch_size,
    }
    settings = load_settings(EvaluateSettings, config, overrides(set_), flags)
    if settings.predicts:
        from vesselctl.stages import evaluate_model as stage
    else:
        from vesselctl.stages import evaluate as stage  # type: ignore[no-redef]
    if stdout_is_tty():
        from rich.progress import Progress

        # No refresh thread (auto_refresh off): worker processes can then be forked safely.
        with Progress(console=console, transient=True, auto_refresh=False) as bar:

            def progress(total: int) -> Callable[[], None]:
                task = bar.add_task("scoring images", total=total)

                def advance() -> None:
                    bar.advance(task)
                    bar.refresh()

                return advance

            result = stage.run(settings, progress)
    else:
        result = stage.run(settings)

    from rich.table import Table

    confidence = round(settings.aggregation.confidence * 100)
    table = Table(
        title=f"{result.n_images} images, threshold {result.threshold:g} "
        f"({result.threshold_source})",
        title_justify="left",
    )
    for column in ("metric", "mean", f"{confidence}% CI", "median", "micro", "n"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric in (m for m in TABLE_METRICS if m in result.macro):
        stats = result.macro[metric]
        micro = result.micro.get(metric)
        digits = 2 if metric in ("hd95", "assd", "betti0_error", "betti1_error") else 4
        table.add_row(
            metric,
            _fmt(stats["mean"], digits),
            f"{_fmt(stats['ci_low'], digits)}..{_fmt(stats['ci_high'], digits)}",
            _fmt(stats["median"], digits),
            _fmt(micro["value"], digits) if micro else "",
            str(stats["n"]),
        )
    console.print(table)
    if result.compare is not None:
        diff = Table(
            title=f"paired difference: this - {result.compare['other_pred']}", title_justify="left"
        )
        for column in ("metric", "mean diff", f"{confidence}% CI", "this better", "other better"):
            diff.add_column(column, justify="left" if column == "metric" else "right")
        for metric, stats in result.compare["paired"].items():
            if metric not in TABLE_METRICS:
                continue
            diff.add_row(
                metric,
                _fmt(stats["mean_difference"]),
                f"{_fmt(stats['ci_low'])}..{_fmt(stats['ci_high'])}",
                str(stats["a_better"]),
                str(stats["b_better"]),
            )
        console.print(diff)
    if result.missing:
        console.print(
            f"[yellow]{len(result.missing)} image(s) had no prediction and were scored as empty[/]"
        )
    if settings.predicts:
        console.print(
            f"wrote {result.out_dir}: predictions/ (masks, probabilities, overlays), "
            "per_image.csv, summary.json, overlays/, result.json"
        )
    else:
        console.print(f"wrote {result.out_dir}/per_image.csv, summary.json, result.json")
