"""`vesselctl env`: versions and accelerators, the first thing to paste into a bug report."""

from __future__ import annotations

import platform
import sys

import typer

from vesselctl.cli.common import console, handle_errors


@handle_errors
def env(
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Print versions of python, torch, transformers, peft, deepspeed and the visible GPUs."""
    import json

    from vesselctl.files import gpu_summary, package_versions

    info: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        info["bf16_supported"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except ImportError:
        info["cuda"] = None
        info["cuda_available"] = False
    info["gpus"] = gpu_summary()
    if json_output:
        console.print_json(json.dumps(info))
        return
    from rich.table import Table

    table = Table(title="vesselctl environment", title_justify="left")
    table.add_column("component", style="bold")
    table.add_column("version / value")
    table.add_row("python", info["python"])
    table.add_row("platform", info["platform"])
    for name, version in info["packages"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    table.add_row("CUDA (torch build)", str(info["cuda"]))
    if info["gpus"]:
        for gpu in info["gpus"]:
            table.add_row(f"GPU {gpu['index']}", f"{gpu['name']} ({gpu['memory_gib']} GiB)")
    else:
        table.add_row("GPUs", "none visible")
    console.print(table)
