"""`vesselctl convert`: any Sa2VA checkpoint -> a verified vesselctl model folder."""

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
)
from vesselctl.settings.base import field_help, load_settings
from vesselctl.settings.convert import ConvertSettings


def _help(key: str) -> str:
    return field_help(ConvertSettings, key)


@handle_errors
def convert(
    source: Annotated[Path | None, typer.Argument(help=_help("source"), show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=_help("out"))] = None,
    base: Annotated[Path | None, typer.Option("--base", help=_help("base"))] = None,
    mllm: Annotated[Path | None, typer.Option("--mllm", help=_help("mllm"))] = None,
    sam2: Annotated[Path | None, typer.Option("--sam2", help=_help("sam2"))] = None,
    merge_lora: Annotated[
        bool | None, typer.Option("--merge-lora/--keep-adapter", help=_help("merge_lora"))
    ] = None,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help=_help("lora_alpha"))
    ] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=_help("dtype"))] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help=_help("trust_checkpoint"))
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_help("overwrite"))] = False,
    verify: Annotated[
        bool | None, typer.Option("--verify/--no-verify", help=_help("verify.enabled"))
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Convert an official or vesselctl checkpoint into a verified vesselctl model folder."""
    from vesselctl.stages import convert as stage

    flags = {
        "source": source,
        "out": out,
        "base": base,
        "mllm": mllm,
        "sam2": sam2,
        "merge_lora": merge_lora,
        "lora_alpha": lora_alpha,
        "dtype": dtype,
        "trust_checkpoint": True if trust_checkpoint else None,
        "overwrite": True if overwrite else None,
        "verify.enabled": verify,
    }
    settings = load_settings(ConvertSettings, config, overrides(set_), flags)
    result = stage.run(settings)
    rows: list[tuple[str, object]] = [
        ("model folder", result.out),
        ("source", f"{result.source} ({result.source_format})"),
        ("family / template", f"{result.family} / {result.template}"),
        ("parameters", f"{result.num_parameters:,}"),
        (
            "written",
            f"{result.num_shards} shard(s), {result.size_bytes / 2**30:.2f} GiB {result.dtype}",
        ),
    ]
    if result.step is not None:
        rows.append(("training step", result.step))
    if result.lora:
        kept = "merged" if result.lora_merged else "kept as adapter/"
        rows.append(
            (
                "LoRA",
                f"r={result.lora['r']} alpha={result.lora['alpha']} "
                f"({result.lora['modules']} modules, {kept})",
            )
        )
    for row in result.key_accounting:
        dropped = sum(row["dropped"].values())
        rows.append(
            (
                f"keys of {Path(row['source']).name}",
                f"{row['mapped']} mapped, {dropped} dropped by design",
            )
        )
    if result.verify is None:
        rows.append(("verification", "skipped (--no-verify)"))
    else:
        v = result.verify
        rows.append(
            (
                "verification",
                f"passed: max |mask-logit diff| {v.max_abs_logit_diff:.3g}, "
                f"mask IoU {v.mask_iou:.4f}",
            )
        )
    rows.append(("time", f"{result.seconds:.1f} s"))
    print_kv_table("vesselctl convert", rows)
    console.print(f"Model card: {Path(result.out) / 'README.md'}")
