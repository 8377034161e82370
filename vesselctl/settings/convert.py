"""Settings of `vesselctl convert` and `vesselctl inspect`.

Each field's description is also its CLI help and its line in `vesselctl config convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from vesselctl.settings.base import Section


class VerifySettings(Section):
    """The check after writing: reload the result and run it beside the source."""

    enabled: bool = Field(
        True,
        description="Reload the converted model and compare its mask logits with the source "
        "model's on a synthetic image (needs the model twice in memory, one after the other).",
    )
    min_iou: float = Field(
        0.98, ge=0, le=1, description="Fail when the masks (sigmoid > 0.5) overlap less than this."
    )
    max_logit_diff: float | None = Field(
        None,
        gt=0,
        description="Fail when any mask logit differs by more; default 1e-3 for fp32 output, "
        "no limit for bf16/fp16 (their rounding moves logits; the IoU check still applies).",
    )
    image_size: int = Field(
        96, ge=16, le=2048, description="Side of the synthetic vessel image used for the check."
    )
    prompt: str = Field("blood vessels", description="Phrase segmented during the check.")
    dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Compute dtype of the check; bf16 halves its memory for large models (then "
        "only the IoU limit applies unless max_logit_diff is set).",
    )


class ConvertSettings(Section):
    """Turn an official or vesselctl checkpoint into a verified vesselctl model folder."""

    source: Path | None = Field(
        None,
        description="Checkpoint to convert: official iter_N.pth (file or DeepSpeed folder), an "
        "official Sa2VA HF export, a vesselctl checkpoints/step_N folder, or a model folder.",
    )
    out: Path | None = Field(None, description="Folder to write the vesselctl model into.")
    base: Path | None = Field(
        None,
        description="Model the training checkpoint was fine-tuned from: an official Sa2VA HF "
        "export or a vesselctl model folder.",
    )
    mllm: Path | None = Field(
        None, description="Base MLLM folder (InternVL -hf, remote-code InternVL, or Qwen2.5-VL)."
    )
    sam2: Path | None = Field(
        None, description="Base SAM2 checkpoint (sam2_hiera_large.pt or a Sam2Model folder)."
    )
    merge_lora: bool = Field(
        True,
        description="Merge LoRA into the weights (W += alpha/r * B @ A); off: keep it as a peft "
        "adapter in <out>/adapter.",
    )
    lora_alpha: float | None = Field(
        None,
        gt=0,
        description="LoRA alpha when the checkpoint does not record it (mmengine meta['cfg'] "
        "or trainable.json normally do).",
    )
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype of saved weights.")
    trust_checkpoint: bool = Field(
        False,
        description="Allow full unpickling of .pth files whose metadata is not on the safe "
        "allowlist. Only for files from a source you trust: unpickling can run code.",
    )
    overwrite: bool = Field(False, description="Replace --out when it already holds files.")
    max_shard_mb: int = Field(
        2000, ge=10, description="Largest safetensors shard in MB (also bounds memory use)."
    )
    verify: VerifySettings = Field(default_factory=VerifySettings)

    @model_validator(mode="after")
    def _check_sources(self) -> ConvertSettings:
        if self.source is None:
            raise ValueError("source is required: the checkpoint to convert")
        if self.out is None:
            raise ValueError("out is required: the folder to write the model into (--out DIR)")
        if (self.mllm is None) != (self.sam2 is None):
            raise ValueError("mllm and sam2 go together: pass both --mllm and --sam2")
        if self.base is not None and self.mllm is not None:
            raise ValueError("pass either --base or --mllm/--sam2, not both")
        return self


class InspectSettings(Section):
    """What `vesselctl inspect` reads."""

    checkpoint: Path | None = Field(None, description="Checkpoint file or folder to describe.")
    trust_checkpoint: bool = Field(
        False, description="Allow full unpickling of .pth files (only for trusted files)."
    )
    max_groups: int = Field(40, ge=1, description="Largest number of key groups to list.")

    @model_validator(mode="after")
    def _check_checkpoint(self) -> InspectSettings:
        if self.checkpoint is None:
            raise ValueError("checkpoint is required: the file or folder to inspect")
        return self
