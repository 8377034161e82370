"""`vesselctl inspect`: describe a checkpoint without trusting it.

The safe replacement for ``torch.load(path, weights_only=False)``: it reads safetensors headers
or weights-only pickles (see ``model.safe_load``) and reports the format, model family, key
groups, dtypes, parameter counts, LoRA rank/alpha, step/epoch metadata and size. It never
refuses unknown keys: describing odd checkpoints is its job.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vesselctl.settings.convert import InspectSettings

INTERNLM2 = "internvl (InternLM2 LLM: not supported)"

# (group name, pattern) checked in order against each key; the first match names its group.
KEY_GROUPS: tuple[tuple[str, str], ...] = (
    ("LoRA A", r"\.lora_A\."),
    ("LoRA B", r"\.lora_B\."),
    ("modules_to_save copies", r"\.modules_to_save\."),
    ("SAM2 memory (video)", r"(memory_|maskmem|obj_ptr|no_mem|no_obj|mask_downsample)"),
    ("SAM2 mask decoder", r"(sam_mask_decoder|mask_decoder)"),
    ("SAM2 prompt encoder", r"(sam_prompt_encoder|prompt_encoder|shared_image_embedding)"),
    ("SAM2 image encoder", r"(image_encoder|vision_encoder)"),
    ("text_hidden_fcs", r"text_hidden_fcs"),
    ("vision encoder", r"(vision_model|vision_tower|(^|\.)visual\.)"),
    ("projector", r"(mlp1\.|multi_modal_projector|merger)"),
    ("token embeddings", r"(embed_tokens|tok_embeddings)"),
    ("lm_head", r"(lm_head|(^|\.)output\.weight)"),
    ("LLM layers", r"(language_model|(^|\.)model\.layers\.|(^|\.)model\.norm)"),
)


@dataclass
class GroupInfo:
    name: str
    tensors: int = 0
    parameters: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    example: str = ""


@dataclass
class InspectResult:
    """Everything `inspect` found."""

    path: str
    format: str
    family: str | None
    size_bytes: int
    files: int
    tensors: int
    parameters: int
    dtypes: dict[str, int]
    groups: list[GroupInfo]
    lora: dict[str, Any] | None
    metadata: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _group_of(key: str) -> str:
    for name, pattern in KEY_GROUPS:
        if re.search(pattern, key):
            return name
    return "other"


def _disk_size(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _family(keys: list[str], config: dict[str, Any] | None) -> str | None:
    """Model family from config.json when there is one, else from characteristic key names."""
    if config:
        model_type = str(config.get("model_type", ""))
        names = json.dumps([config.get("architectures"), config.get("auto_map")]).lower()
        if model_type == "vesselctl_sa2va":
            return str(config.get("family"))
        if isinstance(config.get("llm_config"), dict):
            if "internlm2" in str(config["llm_config"].get("model_type", "")).lower():
                return INTERNLM2
            return "internvl"
        if model_type == "internvl":
            return "internvl"
        if "qwen" in model_type or "qwen" in names:
            return "qwen2_5_vl"
        if model_type.startswith("sam2"):
            return "sam2"
    text = "\n".join(keys)
    if "tok_embeddings" in text or ".attention.wqkv." in text:
        return INTERNLM2
    if "mllm.model.base_model.model." in text or "visual.blocks" in text:
        return "qwen2_5_vl"
    if "language_model" in text or "mlp1." in text or "vision_model." in text:
        return "internvl"
    if "image_encoder.trunk" in text or "vision_encoder.backbone" in text:
        return "sam2"
    return None


def _plain(value: Any) -> Any:
    """Metadata as JSON-friendly values (numpy scalars, foreign stand-ins, tensors)."""
    from vesselctl.model.safe_load import ForeignObject

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value[:20]]
    if isinstance(value, ForeignObject):
        return f"<{value.foreign_name}>"
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return f"<{type(value).__name__}>"


def run(settings: InspectSettings) -> InspectResult:
    """Describe ``settings.checkpoint``."""
    from vesselctl.model import checkpoints as ckpt
    from vesselctl.model.lora_merge import lora_spec_from_mmengine_cfg
    from vesselctl.model.safe_load import load_torch_file

    path = Path(settings.checkpoint)  # type: ignore[arg-type]
    fmt = ckpt.detect_format(path)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    config: dict[str, Any] | None = None
    notes: list[str] = []
    alpha_cfg: str | None = None
    trainable_meta: dict[str, Any] | None = None

    if fmt in ("torch_file", "deepspeed", "vesselctl_train"):
        if fmt == "torch_file":
            data = load_torch_file(path, trust=settings.trust_checkpoint)
            if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
                fmt = "official_iter (mmengine/xtuner single file)"
                tensors = data["state_dict"]
                meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
                metadata = {k: _plain(v) for k, v in meta.items() if k != "cfg"}
                if isinstance(meta.get("cfg"), str):
                    alpha_cfg = meta["cfg"]
                    metadata["cfg"] = f"<{len(meta['cfg'])} characters of training config>"
                schedulers = data.get("param_schedulers")
                if isinstance(schedulers, list) and schedulers:
                    metadata["param_schedulers"] = _plain(schedulers)
            else:
                tensors = ckpt.unwrap_state_dict(data, path)
                fmt = "torch state dict"
        else:
            trained = ckpt.read_trained_checkpoint(
                path, trust=settings.trust_checkpoint, lora_alpha=None
            )
            tensors = trained.tensors
            metadata = {
                **{k: _plain(v) for k, v in trained.meta.items() if k != "cfg"},
                **_plain(trained.info),
            }
            if isinstance(trained.meta.get("cfg"), str):
                alpha_cfg = trained.meta["cfg"]
                metadata["cfg"] = f"<{len(alpha_cfg)} characters of training config>"
            if fmt == "vesselctl_train":
                trainable_meta = trained.meta
                metadata = {
                    k: _plain(v)
                    for k, v in trained.meta.items()
                    if k in ("step", "format", "lora", "modules_to_save", "model_source")
                }
            fmt = "DeepSpeed checkpoint folder" if fmt == "deepspeed" else "vesselctl training step"
        for key, value in tensors.items():
            if hasattr(value, "shape"):
                shapes[key] = tuple(value.shape)
                dtypes[key] = str(value.dtype).removeprefix("torch.")
            else:
                notes.append(f"{key}: not a tensor ({type(value).__name__})")
    else:
        if path.is_file():  # a single .safetensors file
            store = ckpt.TensorStore.from_safetensors([path], str(path))
        else:
            config = (
                ckpt.read_json(path / "config.json") if (path / "config.json").is_file() else None
            )
            store = ckpt.store_from_directory(path, str(path))
        for key in store:
            shapes[key] = store.shape(key)
            dtypes[key] = store.dtype(key)
        store.close()
        if config is not None:
            metadata = {
                k: _plain(config.get(k))
                for k in (
                    "model_type",
                    "family",
                    "template",
                    "architectures",
                    "dtype",
                    "torch_dtype",
                )
                if config.get(k) is not None
            }

    groups: dict[str, GroupInfo] = {}
    all_dtypes: dict[str, int] = {}
    total = 0
    for key, shape in shapes.items():
        numel = math.prod(shape)
        name = _group_of(key)
        info = groups.setdefault(name, GroupInfo(name, example=key))
        info.tensors += 1
        info.parameters += numel
        info.dtypes[dtypes[key]] = info.dtypes.get(dtypes[key], 0) + 1
        all_dtypes[dtypes[key]] = all_dtypes.get(dtypes[key], 0) + 1
        total += numel

    lora = None
    ranks = sorted({shape[0] for key, shape in shapes.items() if ".lora_A." in key and shape})
    if ranks:
        lora = {
            "rank": ranks[0] if len(ranks) == 1 else ranks,
            "modules": sum(1 for k in shapes if ".lora_A." in k),
            "alpha": None,
        }
        if alpha_cfg is not None and len(ranks) == 1:
            try:
                spec = lora_spec_from_mmengine_cfg(alpha_cfg, ranks[0])
            except Exception as exc:  # a contradiction is worth showing, not crashing on
                notes.append(str(exc))
                spec = None
            if spec is not None:
                lora.update(alpha=spec.alpha, rslora=spec.rslora, scale=spec.scale)
        if trainable_meta and isinstance(trainable_meta.get("lora"), dict):
            lora.update(
                alpha=trainable_meta["lora"].get("alpha"),
                rslora=trainable_meta["lora"].get("rslora"),
            )
        if lora["alpha"] is None:
            notes.append("LoRA alpha is not recorded in this file; convert needs --lora-alpha")

    size, files = _disk_size(path)
    ordered = sorted(groups.values(), key=lambda g: -g.parameters)[: settings.max_groups]
    return InspectResult(
        path=str(path),
        format=fmt,
        family=_family(list(shapes), config),
        size_bytes=size,
        files=files,
        tensors=len(shapes),
        parameters=total,
        dtypes=all_dtypes,
        groups=ordered,
        lora=lora,
        metadata=metadata,
        notes=notes,
    )
