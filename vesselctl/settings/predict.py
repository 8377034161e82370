"""Settings of `vesselctl predict`: which model, which images, what to write."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from vesselctl.settings.base import Section


class InferenceSettings(Section):
    """How the model is run."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to run: auto picks CUDA when a GPU is visible, else the CPU."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Compute dtype: auto is bfloat16 on GPUs and float32 on the CPU."
    )
    gpus: int = Field(
        1,
        ge=1,
        description="GPUs on this machine; above 1, predict starts itself under torchrun and "
        "each process predicts its share of the images.",
    )
    batch_size: int = Field(
        8, ge=1, description="Images per forward pass; halved automatically on out-of-memory."
    )
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Probability above which a pixel is vessel."
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Processes that read and preprocess images beside the model (default: none "
        "on the CPU, up to 8 per GPU).",
    )
    gpu_preprocessing: bool = Field(
        True,
        description="On a GPU, resize images for the model there (InternVL-based models): "
        "loader workers only read files. Matches the PIL resize training used within one grey "
        "level; false resizes with PIL in the workers.",
    )
    hflip_tta: bool = Field(
        False, description="Also predict the mirrored image and average the probabilities."
    )
    tile_size: int | None = Field(
        None,
        ge=64,
        description="Split images larger than this many pixels on a side into overlapping tiles.",
    )
    tile_overlap: int = Field(
        64, ge=0, description="Overlap in pixels between neighbouring tiles (with tile_size)."
    )

    @model_validator(mode="after")
    def _overlap_fits_tile(self) -> InferenceSettings:
        if self.tile_size is not None and self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size "
                f"({self.tile_size})"
            )
        return self


class PredictOutputSettings(Section):
    """Which files each prediction writes."""

    probabilities: Literal["png", "npz", "none"] = Field(
        "png",
        description="Probability maps: 8-bit PNG (p*255), float16 .npz (key 'prob'), or none.",
    )
    overlays: bool = Field(True, description="Write the image with the predicted mask drawn on it.")
    skip_existing: bool = Field(
        False,
        description="Resume: keep predictions already in OUT and predict only the missing images.",
    )
    overwrite: bool = Field(False, description="Replace the contents of a non-empty OUT folder.")


class PredictSettings(Section):
    """Everything `vesselctl predict` needs."""

    model: Path | None = Field(
        None, description="A vesselctl model folder, or a training checkpoint to convert first."
    )
    base: Path | None = Field(
        None,
        description="Base model a training checkpoint was trained from (if not in its run folder).",
    )
    input: Path | None = Field(
        None, description="An image, a folder of images, or a prepared dataset folder."
    )
    split: Literal["train", "val", "test"] | None = Field(
        None, description="With a prepared dataset: predict only this split (default: all)."
    )
    out: Path | None = Field(None, description="Output folder for masks, probabilities, overlays.")
    prompt: str = Field(
        "blood vessels", description="What to segment: the phrase put in the prompt."
    )
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    output: PredictOutputSettings = Field(default_factory=PredictOutputSettings)
    progress: bool = Field(True, description="Show a progress bar on an interactive terminal.")

    @model_validator(mode="after")
    def _required(self) -> PredictSettings:
        missing = [n for n in ("model", "input", "out") if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"missing {', '.join(missing)}: give --model, --input and --out (or set them "
                "in the config file)"
            )
        if self.output.skip_existing and self.output.overwrite:
            raise ValueError("output.skip_existing and output.overwrite exclude each other")
        return self
