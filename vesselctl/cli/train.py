"""`vesselctl train`: fine-tune Sa2VA with LoRA on one GPU, several, or several machines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

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
from vesselctl.settings.train import TrainSettings

# Exit code after SIGTERM: the run saved a checkpoint and stopped; 128 + 15 tells a scheduler
# the job was terminated (requeue it with --resume auto).
EXIT_INTERRUPTED = 143


def _help(key: str) -> str:
    return field_help(TrainSettings, key)


@handle_errors
def train(
    data: Annotated[Path | None, typer.Option("--data", help=_help("data.dataset"))] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=_help("out"))] = None,
    preset: Annotated[str | None, typer.Option("--preset", help=_help("model.preset"))] = None,
    resume: Annotated[str | None, typer.Option("--resume", help=_help("resume"))] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help=_help("distributed.gpus"))] = None,
    nnodes: Annotated[
        int | None, typer.Option("--nnodes", help=_help("distributed.nnodes"))
    ] = None,
    node_rank: Annotated[
        int | None, typer.Option("--node-rank", help=_help("distributed.node_rank"))
    ] = None,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help=_help("distributed.master_addr"))
    ] = None,
    master_port: Annotated[
        int | None, typer.Option("--master-port", help=_help("distributed.master_port"))
    ] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help=_help("distributed.strategy"))
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help=_help("optim.max_steps"))
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="Do not show the progress bar.")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Fine-tune Sa2VA (LoRA) on a prepared dataset; resumable, one or many GPUs."""
    from vesselctl.stages import train as stage

    flags = {
        "data.dataset": data,
        "out": out,
        "model.preset": preset,
        "resume": resume,
        "distributed.gpus": gpus,
        "distributed.nnodes": nnodes,
        "distributed.node_rank": node_rank,
        "distributed.master_addr": master_addr,
        "distributed.master_port": master_port,
        "distributed.strategy": strategy,
        "optim.max_steps": max_steps,
        "logging.progress": False if no_progress else None,
    }
    settings = load_settings(TrainSettings, config, overrides(set_), flags)
    result = stage.run(settings)
    # Under a launcher only rank 0 prints, and not when vesselctl relaunched itself: the
    # relaunching process prints the summary.
    quiet = os.environ.get("RANK", "0") != "0" or bool(os.environ.get(stage.LAUNCH_ID_ENV))
    if not quiet:
        _print_summary(result)
    if result.status == "interrupted":
        if not quiet:
            console.print("stopped by SIGTERM after saving; continue with --resume auto")
        raise typer.Exit(code=EXIT_INTERRUPTED)


def _print_summary(result: Any) -> None:
    """The run in one table: status, steps, strategy, loss, best val Dice, last checkpoint."""
    rows = [
        ("status", result.status),
        ("run folder", result.run_dir),
        ("steps", f"{result.steps} / {result.total_steps}"),
        ("strategy", f"{result.strategy} on {result.world_size} process(es), {result.precision}"),
        ("effective batch", result.effective_batch),
    ]
    if result.final_metrics.get("loss") is not None:
        rows.append(("last loss", f"{result.final_metrics['loss']:.4f}"))
    if result.best_val_dice is not None:
        rows.append(("best val Dice", f"{result.best_val_dice:.4f} (step {result.best_step})"))
    if result.last_checkpoint:
        rows.append(("last checkpoint", result.last_checkpoint))
    print_kv_table("train", rows)
