"""Settings of `vesselctl train`, composed of small parts (data, LoRA, what trains, optimiser,
distributed, checkpoints, validation, logging).

Every field's description is also its CLI help and its line in `vesselctl config train`. Checks
that need the machine (is CUDA there, is deepspeed installed) live in
``vesselctl.training.launch.check_environment``: settings stay importable without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from vesselctl.settings.base import Section
from vesselctl.settings.model import ModelSourceSettings


class AugmentSettings(Section):
    """Augmentations that suit vessel images; geometry is applied identically to the masks."""

    enabled: bool = Field(True, description="Apply augmentations to training images.")
    hflip_p: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip_p: float = Field(0.5, ge=0, le=1, description="Probability of a vertical flip.")
    rotate_deg: float = Field(
        10.0, ge=0, le=180, description="Largest rotation in degrees (uniform in +-rotate_deg)."
    )
    scale_range: tuple[float, float] = Field(
        (0.9, 1.1), description="Zoom factor range (min, max); 1.0 keeps the size."
    )
    contrast: float = Field(
        0.2, ge=0, le=1, description="Largest relative contrast change (factor in 1+-contrast)."
    )
    gamma: float = Field(
        0.2, ge=0, le=1, description="Largest gamma change (gamma drawn in 1+-gamma)."
    )
    noise_std: float = Field(
        0.02, ge=0, le=0.5, description="Largest std of Gaussian noise, as a fraction of 255."
    )

    @model_validator(mode="after")
    def _check_scale(self) -> AugmentSettings:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(
                f"data.augment.scale_range must be (min, max) with 0 < min <= max; "
                f"found ({low}, {high})"
            )
        return self


class DataSettings(Section):
    """Where the prepared dataset is and which splits train and validate."""

    dataset: Path | None = Field(
        None, description="Prepared dataset folder (from `vesselctl prepare`), with manifest.jsonl."
    )
    train_split: str = Field("train", description="Split of the manifest to train on.")
    val_split: str = Field("val", description="Split of the manifest to validate on.")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes per training process (0 loads in the main "
        "process; default: none on the CPU, on a GPU the machine's CPUs shared among its GPU "
        "processes, up to 8 each).",
    )
    augment: AugmentSettings = Field(default_factory=AugmentSettings)


class ProcessorSettings(Section):
    """Overrides of the model's processor options for training (None keeps the model's value)."""

    max_tiles: int | None = Field(
        None, ge=1, description="InternVL: most 448-px tiles per image (fewer: faster, coarser)."
    )
    max_pixels: int | None = Field(
        None, ge=1, description="Qwen2.5-VL: pixel budget per image (fewer: faster, coarser)."
    )
    max_length: int | None = Field(None, ge=16, description="Longest token sequence per sample.")

    def overrides(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class LoraSettings(Section):
    """LoRA on the LLM's Linear layers (peft)."""

    enabled: bool = Field(
        True, description="Train LoRA adapters on the LLM (else the LLM is frozen)."
    )
    r: int = Field(64, ge=1, description="LoRA rank.")
    alpha: int = Field(128, ge=1, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: str | list[str] = Field(
        "all-linear",
        description=(
            "'all-linear' (every Linear of the LLM except lm_head) or a list of Linear names "
            "such as [q_proj, v_proj]."
        ),
    )
    rslora: bool = Field(False, description="Rank-stabilised LoRA scaling alpha/sqrt(r).")


class TrainableSettings(Section):
    """Which named groups train besides LoRA; everything else stays frozen."""

    projector: bool = Field(True, description="Train the MLLM's vision-to-LLM projector.")
    mask_decoder: bool = Field(True, description="Train SAM2's mask decoder.")
    text_hidden_fcs: bool = Field(
        True, description="Train text_hidden_fcs (the [SEG] hidden state -> SAM2 prompt MLP)."
    )
    sam2_image_encoder: bool = Field(
        False,
        description="Also train SAM2's image encoder (Hiera + FPN); frozen in the official recipe. "
        "Useful only for models trained from random weights, such as the tiny quickstart.",
    )
    embeddings: Literal["auto", "full_copy", "new_tokens", "frozen"] = Field(
        "auto",
        description=(
            "Input embeddings and lm_head: 'full_copy' trains full copies (peft modules_to_save, "
            "as the official recipe), 'new_tokens' trains only the added special tokens' rows "
            "(peft trainable_token_indices), 'frozen' trains neither; 'auto' resolves to "
            "new_tokens when model.kind is official_hf or vesselctl (a Sa2VA checkpoint whose "
            "other rows are already trained), else full_copy."
        ),
    )


class TrainModelSettings(ModelSourceSettings):
    """The model source, with gradient checkpointing that training can decide by measuring."""

    gradient_checkpointing: Literal["auto"] | bool = Field(  # type: ignore[assignment]
        "auto",
        description="Recompute LLM activations in backward (less memory, slower steps); auto: "
        "one measured training step without it decides (on when its peak memory passes 90% of "
        "the GPU; always off on CPU).",
    )
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default",
        description="torch.compile mode of model.compile: default, or reduce-overhead (CUDA "
        "graphs: far fewer kernel launches, which bound the small LLMs; needs model.compile, "
        "model.gradient_checkpointing false and one GPU process without DeepSpeed).",
    )

    @model_validator(mode="after")
    def _check_compile_mode(self) -> TrainModelSettings:
        if self.compile_mode == "reduce-overhead":
            if self.compile == "off":
                raise ValueError(
                    "model.compile_mode is reduce-overhead but model.compile is off; set "
                    "model.compile to llm (or all)"
                )
            if self.gradient_checkpointing is not False:
                raise ValueError(
                    "model.compile_mode reduce-overhead (CUDA graphs) cannot replay gradient "
                    f"checkpointing's recomputation; found model.gradient_checkpointing "
                    f"{self.gradient_checkpointing!r}: set it to false, or use compile_mode default"
                )
        return self


class SpeedSettings(Section):
    """Speed switches that leave results unchanged (see BENCHMARKS.md, issue 10)."""

    encoder_cache: bool = Field(
        False,
        description="Cache the frozen vision tower's and SAM2 image encoder's outputs per image "
        "(each image is encoded once per run); needs data.augment.enabled false.",
    )
    encoder_cache_storage: Literal["gpu", "cpu"] = Field(
        "gpu",
        description="Where cached encoder outputs live: gpu (fastest; ~46 MB per 1024-px image "
        "in bf16) or cpu (pinned host memory, copied in each step).",
    )
    encoder_cache_max_gib: float | None = Field(
        None,
        gt=0,
        description="Most GiB of cached outputs per process (None: no limit); images beyond it "
        "are encoded every time.",
    )


class OptimSettings(Section):
    """AdamW with linear warm-up then cosine decay."""

    lr: float = Field(2e-5, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decoupled weight decay.")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Fraction of the optimiser steps spent warming up linearly."
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Cosine decays to lr * min_lr_ratio (0: to zero)."
    )
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: off).")
    micro_batch: int = Field(2, ge=1, description="Samples per GPU per forward pass.")
    accumulation: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimiser step (per GPU)."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimiser steps (overrides epochs)."
    )


class DistributedSettings(Section):
    """How many processes, on how many machines, and which parallel strategy."""

    strategy: Literal["auto", "single", "ddp", "zero2", "zero3"] = Field(
        "auto",
        description=(
            "auto: ZeRO-3 only when the frozen model does not fit on one GPU, else ZeRO-2 with "
            "several GPUs, else one process; ddp: torch DistributedDataParallel (also on CPU); "
            "zero2/zero3: DeepSpeed."
        ),
    )
    offload: bool = Field(
        False,
        description="DeepSpeed CPU offload (optimizer; with zero3 also parameters). Saves GPU "
        "memory, costs speed.",
    )
    gpus: int = Field(
        1, ge=1, description="Processes per machine (one per GPU; CPU processes without GPUs)."
    )
    nnodes: int = Field(1, ge=1, description="Number of machines.")
    node_rank: int = Field(0, ge=0, description="This machine's index, 0..nnodes-1.")
    master_addr: str = Field("127.0.0.1", description="Address of the node_rank 0 machine.")
    master_port: int = Field(29500, ge=1, le=65535, description="Free TCP port on that machine.")

    @property
    def world_size(self) -> int:
        return self.gpus * self.nnodes

    @model_validator(mode="after")
    def _check(self) -> DistributedSettings:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"distributed.node_rank is {self.node_rank} but nnodes is {self.nnodes}; "
                "node_rank must be 0..nnodes-1"
            )
        if self.offload and self.strategy in ("single", "ddp"):
            raise ValueError(
                f"distributed.offload needs a DeepSpeed strategy (zero2, zero3 or auto); "
                f"found strategy '{self.strategy}'"
            )
        if self.strategy == "single" and self.world_size > 1:
            raise ValueError(
                f"distributed.strategy 'single' runs one process but gpus x nnodes = "
                f"{self.world_size}; use auto, ddp, zero2 or zero3"
            )
        return self


class CheckpointSettings(Section):
    """Resumable checkpoints under <out>/checkpoints/step_<N>/."""

    every_steps: int = Field(500, ge=1, description="Save a checkpoint every N optimiser steps.")
    keep_last: int = Field(2, ge=1, description="Keep the last N checkpoints (plus the best).")
    save_final: bool = Field(True, description="Save a checkpoint after the last step.")


class ValidationSettings(Section):
    """Full-image Dice/clDice on the validation split during training."""

    every_steps: int = Field(
        250, ge=0, description="Validate every N optimiser steps (0: never; also at the end)."
    )
    max_images: int = Field(
        64, ge=0, description="Validate on at most this many images of the split (0: all)."
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="Probability threshold for masks.")
    micro_batch: int = Field(1, ge=1, description="Images per GPU per validation forward.")


class LoggingSettings(Section):
    """metrics.jsonl, TensorBoard, train.log and the progress bar."""

    every_steps: int = Field(1, ge=1, description="Log training metrics every N optimiser steps.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files under tb/.")
    progress: bool = Field(
        True, description="Show a progress bar (only on a terminal; never in logs)."
    )


class TrainSettings(Section):
    """Everything `vesselctl train` needs; defaults follow the user's LoRA recipe."""

    out: Path | None = Field(None, description="Run folder for checkpoints, logs and results.")
    resume: str | None = Field(
        None,
        description="'auto' resumes from the last complete checkpoint in the run folder; or a "
        "checkpoint folder path. A run folder that has checkpoints needs this.",
    )
    seed: int = Field(42, description="Seed for weights of new parts, data order and augmentation.")
    deterministic: bool = Field(
        False, description="Use deterministic algorithms (slower; bitwise-repeatable on one GPU)."
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Training precision: auto is bf16 on GPUs that support it and fp32 otherwise.",
    )
    model: TrainModelSettings = Field(default_factory=TrainModelSettings)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    trainable: TrainableSettings = Field(default_factory=TrainableSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @property
    def effective_batch(self) -> int:
        """Samples per optimiser step over all processes: micro-batch x accumulation x world."""
        return self.optim.micro_batch * self.optim.accumulation * self.distributed.world_size

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        if self.data.train_split == self.data.val_split:
            raise ValueError(
                f"data.train_split and data.val_split are both '{self.data.train_split}'; "
                "validating on the training images hides overfitting: pick another val_split"
            )
        if isinstance(self.lora.targets, list) and not self.lora.targets:
            raise ValueError(
                "lora.targets is an empty list; use 'all-linear' or name Linear layers"
            )
        if isinstance(self.lora.targets, str) and self.lora.targets != "all-linear":
            raise ValueError(
                f"lora.targets is '{self.lora.targets}'; expected 'all-linear' or a list of names"
            )
        if self.resume is not None and self.resume != "auto" and not self.resume.strip():
            raise ValueError("resume is empty; use 'auto' or a checkpoint folder path")
        if self.speed.encoder_cache and self.data.augment.enabled:
            raise ValueError(
                "speed.encoder_cache is true but data.augment.enabled is true: random "
                "augmentations show the encoders different pixels every epoch, so cached outputs "
                "would be wrong; set data.augment.enabled=false or speed.encoder_cache=false"
            )
        if self.trainable.embeddings == "auto":
            # Resolved here so settings.yaml records the choice. A Sa2VA checkpoint already
            # holds trained rows for everything but the new tokens; a base start does not.
            from_sa2va = self.model.kind in ("official_hf", "vesselctl")
            self.trainable.embeddings = "new_tokens" if from_sa2va else "full_copy"
        return self
