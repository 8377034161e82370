"""Where a model comes from and how it is built: the ``model`` section shared by train, predict
and convert. Imports no torch; ``vesselctl.model.load.load_model`` turns it into a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vesselctl.model.presets import PRESETS
from vesselctl.settings.base import Section

ModelKind = Literal["preset", "vesselctl", "official_hf", "base"]
DTypeName = Literal["auto", "bfloat16", "float16", "float32"]


class ModelSourceSettings(Section):
    """A model: a random-weight preset, a vesselctl model folder, an official Sa2VA HF export,
    or base MLLM + SAM2 checkpoints (Sa2VA's starting point)."""

    kind: ModelKind = Field(
        "preset",
        description="Where the model comes from: preset (random weights), vesselctl (a model "
        "folder written by vesselctl), official_hf (an official Sa2VA HF export folder), base "
        "(an InternVL/Qwen2.5-VL folder + a SAM2 checkpoint).",
    )
    preset: str = Field(
        "tiny", description=f"Preset name when kind is preset: {', '.join(PRESETS)}."
    )
    model_dir: Path | None = Field(
        None, description="Model folder when kind is vesselctl or official_hf."
    )
    mllm_dir: Path | None = Field(
        None, description="Base MLLM folder (InternVL -hf or Qwen2.5-VL) when kind is base."
    )
    sam2_dir: Path | None = Field(
        None,
        description="Base SAM2 checkpoint (sam2_hiera_large.pt or a Sam2Model folder) when kind "
        "is base.",
    )
    tokenizer_dir: Path | None = Field(
        None,
        description="Tokenizer folder: for kind base (default: mllm_dir), or to give a "
        "real-size preset a real tokenizer.",
    )
    dtype: DTypeName = Field(
        "auto",
        description="Weight dtype; auto = bfloat16 when a CUDA GPU is present, else float32.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel of the MLLM: sdpa (PyTorch, default), eager, or "
        "flash_attention_2 (needs the optional flash-attn package).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute LLM activations in backward: less memory, slower steps (1.24x / "
        "1.31x the step time for Sa2VA-1B / 4B on an H200, BENCHMARKS.md).",
    )
    compile: Literal["off", "llm", "all"] = Field(
        "off",
        description="torch.compile regions of the model: llm (what trains: the LLM decoder "
        "layers, SAM2's mask decoder and the mask losses), all (also the vision tower and SAM2 "
        "image encoder); falls back to eager if compilation fails.",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: object) -> object:
        """YAML reads a bare ``off`` (in a config file or ``--set model.compile=off``) as
        False: take it as the "off" it was written as."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _check_paths_for_kind(self) -> ModelSourceSettings:
        if self.kind == "preset" and self.preset not in PRESETS:
            raise ValueError(
                f"model.preset is '{self.preset}'; expected one of {', '.join(PRESETS)}"
            )
        if self.kind in ("vesselctl", "official_hf") and self.model_dir is None:
            raise ValueError(f"model.kind is {self.kind}: set model.model_dir to the model folder")
        if self.kind == "base" and (self.mllm_dir is None or self.sam2_dir is None):
            raise ValueError(
                "model.kind is base: set both model.mllm_dir (InternVL/Qwen2.5-VL folder) and "
                "model.sam2_dir (SAM2 checkpoint)"
            )
        return self
