"""`vesselctl convert`: any Sa2VA checkpoint -> a verified vesselctl model folder.

Read top to bottom: find what the source is, read it (and its base) lazily with strict key
accounting, stream the native weights into sharded safetensors in a staging folder, add config,
tokenizer/processor files, an optional peft adapter and a model card, then reload the result and
run it beside the source model; only a conversion that passes is moved to ``--out``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vesselctl.errors import CheckpointError, ConfigError
from vesselctl.files import (
    atomic_write_json,
    atomic_write_text,
    run_provenance,
    sha256_file,
    to_jsonable,
)
from vesselctl.settings.base import write_resolved_settings
from vesselctl.settings.convert import ConvertSettings

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
RESULT_NAME = "result.json"


@dataclass
class VerifyResult:
    """Source vs converted model on the same synthetic inputs."""

    max_abs_logit_diff: float
    mask_iou: float
    num_masks: int
    max_logit_diff_allowed: float | None
    min_iou: float
    passed: bool


@dataclass
class ConvertResult:
    """What `convert` did; also written to ``<out>/result.json``."""

    out: str
    source: str
    source_format: str
    family: str
    template: str
    dtype: str
    num_parameters: int
    num_shards: int
    size_bytes: int
    lora: dict[str, Any] | None
    lora_merged: bool
    key_accounting: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    seconds: float
    verify: VerifyResult | None = None
    step: Any = None
    warnings: list[str] = field(default_factory=list)


def run(settings: ConvertSettings) -> ConvertResult:
    """Convert ``settings.source`` into ``settings.out`` and verify it."""
    import torch

    from vesselctl.model import checkpoints as ckpt

    started = time.perf_counter()
    source = Path(settings.source)  # type: ignore[arg-type]
    out = Path(settings.out)  # type: ignore[arg-type]
    _check_out(out, settings.overwrite, source)

    # 1. What is it, and what base does it need? (reading is lazy: nothing large loads here)
    fmt = ckpt.detect_format(source)
    trained = None
    if fmt in ("torch_file", "deepspeed", "vesselctl_train"):
        trained = ckpt.read_trained_checkpoint(
            source, trust=settings.trust_checkpoint, lora_alpha=settings.lora_alpha
        )
        base = ckpt.resolve_base(trained, settings.base, settings.mllm, settings.sam2)
    elif fmt in ("official_hf", "vesselctl_model"):
        if settings.base or settings.mllm:
            raise ConfigError(
                f"{source}: is a full model ({fmt}); --base/--mllm/--sam2 apply only to "
                "training checkpoints"
            )
        base = ckpt.read_model_source(source)
    elif fmt in ("internvl_native", "internvl_remote", "qwen2_5_vl"):
        if settings.sam2 is None:
            raise ConfigError(
                f"{source}: is a base MLLM; converting it needs --sam2 PATH as well (and a "
                "tokenizer holding [SEG])"
            )
        base = ckpt.read_base_checkpoints(source, settings.sam2)
    else:
        raise CheckpointError(f"{source}: a '{fmt}' file cannot be converted on its own")

    # 2. Lay the training delta over the base (strict accounting of both).
    weights = ckpt.merged_weights(base, trained, merge_lora=settings.merge_lora)
    delta = weights.delta
    has_lora = bool(delta and delta.lora)
    if not settings.merge_lora and not has_lora:
        raise ConfigError(f"{source}: --keep-adapter: the checkpoint holds no LoRA to keep")

    # 3. Write into a staging folder next to --out; it becomes --out only after verification.
    staging = out.parent / f".{out.name}.converting"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        dtype = getattr(torch, DTYPES[settings.dtype])
        index = ckpt.write_weights(weights, staging, dtype, settings.max_shard_mb * 2**20)
        config = base.config
        config.dtype = DTYPES[settings.dtype]
        config.save_pretrained(str(staging))
        processor = _processor(base)
        processor.save_pretrained(staging)
        adapter = None
        if has_lora and not settings.merge_lora:
            adapter = ckpt.write_adapter(weights, staging / "adapter", dtype)

        sources = _describe_sources(source, trained, base)
        accounting = _accounting(base, delta)
        lora = None
        if delta is not None and delta.lora_spec is not None:
            lora = {
                **asdict(delta.lora_spec),
                "scale": delta.lora_spec.scale,
                "modules": len(delta.lora),
            }
        result = ConvertResult(
            out=str(out),
            source=str(source),
            source_format=trained.kind if trained else fmt,
            family=config.family,
            template=config.template,
            dtype=settings.dtype,
            num_parameters=sum(math.prod(s) for s in base.expected.values()),
            num_shards=len(set(index["weight_map"].values())),
            size_bytes=int(index["metadata"]["total_size"]),
            lora=lora,
            lora_merged=has_lora and settings.merge_lora,
            key_accounting=accounting,
            sources=sources,
            seconds=0.0,
            step=_step(trained),
        )

        # 4. Verify: reload the written folder and run it beside the source model.
        if settings.verify.enabled:
            result.verify = verify(weights, staging, settings, adapter is not None)
        write_resolved_settings(settings, staging)
        atomic_write_json(staging / "run_info.json", run_provenance())
        atomic_write_text(staging / "README.md", model_card(result, settings))
        result.seconds = round(time.perf_counter() - started, 2)
        atomic_write_json(staging / RESULT_NAME, to_jsonable(result))
        if result.verify is not None and not result.verify.passed:
            v = result.verify
            raise CheckpointError(
                f"{source}: verification failed: the converted model differs from the source "
                f"(max |mask-logit diff| {v.max_abs_logit_diff:.3g}, allowed "
                f"{v.max_logit_diff_allowed}; mask IoU {v.mask_iou:.4f}, required "
                f"{v.min_iou}); nothing was written to {out}"
            )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for store in base.stores:
            store.close()
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return result


def _check_out(out: Path, overwrite: bool, source: Path) -> None:
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out}: must not be the source or lie inside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            f"--out {out}: already exists and is not empty; choose a new folder or pass --overwrite"
        )


def _processor(base: Any) -> Any:
    from vesselctl.model.processor import Sa2VAProcessor

    if base.processor is not None:
        return base.processor
    return Sa2VAProcessor(base.tokenizer, base.config)


def _step(trained: Any) -> Any:
    if trained is None:
        return None
    meta = trained.meta or {}
    for key in ("iter", "step"):
        if meta.get(key) is not None:
            return int(meta[key])
    return trained.info.get("step") or trained.info.get("global_steps")


def _describe_sources(source: Path, trained: Any, base: Any) -> list[dict[str, Any]]:
    """Every file the result was built from, with size and SHA-256 (for the model card)."""
    described = []
    seen: set[Path] = set()
    groups = [("checkpoint", trained.files if trained else [])] if trained else []
    groups.append(("base" if trained else "model", base.files))
    for role, files in groups:
        for path in files:
            path = Path(path)
            if path in seen:
                continue
            seen.add(path)
            described.append(
                {
                    "role": role,
                    "path": str(path),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
    return described


def _accounting(base: Any, delta: Any) -> list[dict[str, Any]]:
    rows = []
    for report in [*base.reports, *([delta.report] if delta and delta.report else [])]:
        reasons: dict[str, int] = {}
        for reason in report.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        rows.append(
            {
                "source": report.source,
                "mapped": report.mapped,
                "dropped": reasons,
                "unmapped": len(report.unmapped),
                "unexpected": len(report.unexpected),
                "resized": {k: list(v) for k, v in report.resized.items()},
                "tied_copies": dict(report.aliased),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------
def synthetic_vessel_image(size: int, seed: int = 0) -> Any:
    """A dark-vessel-on-bright-background RGB image (uint8), deterministic."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 200 + 20 * rng.standard_normal((size, size)).astype(np.float32)
    for k in range(4):
        phase, freq = rng.uniform(0, 6.28), 2 + k
        centre = 0.5 + 0.3 * np.sin(freq * xx * 3.14 + phase)
        image -= 120 * np.exp(-(((yy - centre) / (0.02 + 0.01 * k)) ** 2))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.stack([image, (image * 0.8).astype(np.uint8), (image * 0.7).astype(np.uint8)], -1)


def _sample_batch(processor: Any, settings: ConvertSettings) -> Any:
    from vesselctl.model.batch import SegSample

    image = synthetic_vessel_image(settings.verify.image_size)
    return processor([SegSample("verify-0", image, [settings.verify.prompt])], train=False)


def _mask_logits(model: Any, batch: Any) -> Any:
    import torch

    with torch.no_grad():
        output = model(batch)
    return torch.cat([m.float() for m in output.mask_logits], dim=0)


def _inject_lora(model: Any, weights: Any) -> None:
    """Put the checkpoint's LoRA factors on ``model`` with peft, unmerged (peft computes
    ``base(x) + scale * B(A(x))`` itself: an independent check of the merge math)."""
    spec = weights.delta.lora_spec
    factors = {k.removesuffix(".weight"): ab for k, ab in weights.delta.lora.items()}
    _put_lora(model, spec.r, spec.alpha, spec.rslora, factors)


def _put_lora(model: Any, r: int, alpha: float, rslora: bool, factors: dict[str, Any]) -> None:
    """Inject peft LoRA layers into the modules named in ``factors`` and copy in their
    (A, B) factors; dropout off, model in eval mode."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=rslora,
        lora_dropout=0.0,
        target_modules=sorted(factors),
    )
    inject_adapter_in_model(config, model)
    named = dict(model.named_modules())
    with torch.no_grad():
        for module_name, (lora_a, lora_b) in factors.items():
            layer = named[module_name]
            layer.lora_A["default"].weight.copy_(lora_a)
            layer.lora_B["default"].weight.copy_(lora_b)
    model.eval()


def verify(
    weights: Any, folder: Path, settings: ConvertSettings, adapter_kept: bool
) -> VerifyResult:
    """Run the source model (base + trained weights, LoRA through peft) and the converted folder
    on the same synthetic image; compare mask logits and masks. One model in memory at a time."""
    import torch

    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.sa2va import Sa2VAModel

    config = weights.config
    # Source: unmerged weights (fp32) + LoRA via peft.
    from vesselctl.model.checkpoints import MergedWeights

    unmerged = MergedWeights(weights.base, weights.delta, merge_lora=False)
    compute = torch.float32 if settings.verify.dtype == "fp32" else torch.bfloat16
    reference = Sa2VAModel(config).to(compute)
    state = {k: t.to(compute) if t.is_floating_point() else t for k, t in unmerged.iter_tensors()}
    reference.load_state_dict(state, strict=True)
    del state
    reference.eval()
    if weights.delta is not None and weights.delta.lora:
        _inject_lora(reference, weights)
    batch = _sample_batch(_processor(weights.base), settings)
    expected = _mask_logits(reference, batch)
    del reference

    # Converted: exactly what was written, upcast to fp32 so the difference is the conversion's.
    converted = Sa2VAModel.from_pretrained(str(folder), dtype=compute).eval()
    if adapter_kept:
        _load_kept_adapter(converted, folder / "adapter")
    reloaded = Sa2VAProcessor.from_pretrained(folder)
    found = _mask_logits(converted, _sample_batch(reloaded, settings))
    del converted
    if found.shape != expected.shape:
        raise CheckpointError(
            f"verification: the converted model returned masks {tuple(found.shape)}, the source "
            f"{tuple(expected.shape)}"
        )
    diff = float((found - expected).abs().max()) if found.numel() else 0.0
    a, b = expected > 0, found > 0
    union = int((a | b).sum())
    iou = 1.0 if union == 0 else int((a & b).sum()) / union
    allowed = settings.verify.max_logit_diff
    if allowed is None and settings.dtype == "fp32" and settings.verify.dtype == "fp32":
        allowed = 1e-3
    passed = iou >= settings.verify.min_iou and (allowed is None or diff <= allowed)
    return VerifyResult(diff, iou, int(expected.shape[0]), allowed, settings.verify.min_iou, passed)


def _load_kept_adapter(model: Any, adapter_dir: Path) -> None:
    """Load the written peft adapter (adapter/) onto ``model``, as a user of the folder would."""
    import json

    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    factors = {
        name: (
            tensors[f"base_model.model.{name}.lora_A.weight"],
            tensors[f"base_model.model.{name}.lora_B.weight"],
        )
        for name in config["target_modules"]
    }
    _put_lora(model, config["r"], config["lora_alpha"], config["use_rslora"], factors)


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------
def model_card(result: ConvertResult, settings: ConvertSettings) -> str:
    """README.md of the converted folder: where every weight came from, with hashes."""
    lines = [
        f"# Sa2VA ({result.family}) converted by vesselctl",
        "",
        f"- source: `{result.source}` ({result.source_format})",
        f"- family: {result.family}, chat template: {result.template}",
        f"- dtype: {result.dtype}, parameters: {result.num_parameters:,}, "
        f"{result.num_shards} shard(s), {result.size_bytes / 2**30:.2f} GiB",
    ]
    if result.step is not None:
        lines.append(f"- training step: {result.step}")
    if result.lora:
        how = (
            "merged into the weights"
            if result.lora_merged
            else "kept as a peft adapter in adapter/"
        )
        lines.append(
            f"- LoRA: r={result.lora['r']}, alpha={result.lora['alpha']}, "
            f"rslora={result.lora['rslora']} on {result.lora['modules']} modules, {how}"
        )
    lines += ["", "## Sources", "", "| role | file | bytes | sha256 |", "|---|---|---|---|"]
    for s in result.sources:
        lines.append(f"| {s['role']} | `{s['path']}` | {s['bytes']} | `{s['sha256']}` |")
    lines += [
        "",
        "## Key accounting",
        "",
        "| source | mapped | dropped (reason: count) | unmapped | unexpected |",
        "|---|---|---|---|---|",
    ]
    for row in result.key_accounting:
        dropped = "; ".join(f"{r}: {n}" for r, n in row["dropped"].items()) or "-"
        lines.append(
            f"| `{row['source']}` | {row['mapped']} | {dropped} | {row['unmapped']} | "
            f"{row['unexpected']} |"
        )
    for row in result.key_accounting:
        for key, (found, grown) in row["resized"].items():
            lines.append(f"- `{key}`: {found} rows in the base, grown to {grown} (mean row)")
        for key, source in row["tied_copies"].items():
            lines.append(f"- `{key}`: tied to `{source}` in the source; written as an untied copy")
    lines += ["", "## Verification", ""]
    if result.verify is None:
        lines.append("Not run (verify.enabled was false).")
    else:
        v = result.verify
        lines.append(
            f"Reloaded this folder and ran it beside the source model on a synthetic "
            f'{settings.verify.image_size}px vessel image ("{settings.verify.prompt}"): '
            f"max |mask-logit difference| {v.max_abs_logit_diff:.3g} (allowed "
            f"{v.max_logit_diff_allowed}), mask IoU {v.mask_iou:.4f} (required {v.min_iou}): "
            f"{'passed' if v.passed else 'FAILED'}."
        )
    lines += [
        "",
        "## Use",
        "",
        "Load it in predict / evaluate / train with the model settings",
        f"`model.kind: vesselctl` and `model.model_dir: {result.out}`.",
        "",
    ]
    return "\n".join(lines)
