"""Speed switches for ``Sa2VAModel`` that leave its results unchanged: regional ``torch.compile``
of the LLM decoder layers (with an eager fallback), a measured choice of gradient checkpointing,
and a cache of the frozen encoders' outputs.

Each is off unless asked for; ``benchmarks/perf.py`` measures each against the plain model in the
same run, and tests check that losses and gradients stay the same (fp32, tiny preset).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vesselctl.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from vesselctl.model.batch import Sa2VABatch
    from vesselctl.model.sa2va import Sa2VAModel

log = logging.getLogger(__name__)


# --- torch.compile, one repeated layer at a time ------------------------------------------------

#: The compiled regions of each part, by their paths inside Sa2VAModel (those a model lacks,
#: e.g. the other family's vision tower, are skipped): a ModuleList compiles block by block,
#: any other module as one region. The mask decoder's IoU and object-score heads stay eager:
#: no loss reaches them, and a compiled region hands zero gradients (not None) to such
#: parameters, which AdamW would then decay.
COMPILE_PARTS: dict[str, tuple[str, ...]] = {
    "llm": ("mllm.model.language_model.layers",),
    "mask_decoder": (
        "sam2.mask_decoder.transformer",
        "sam2.mask_decoder.output_hypernetworks_mlps",
    ),
    "mask_losses": ("point_losses",),
    "vision": ("mllm.model.vision_tower.encoder.layer", "mllm.model.visual.blocks"),
    "sam2": ("sam2.vision_encoder.backbone.blocks",),
}

#: What each ``model.compile`` setting compiles. "llm" is the path that trains: the LLM layers
#: (LoRA), SAM2's mask decoder and the mask losses, whose many small eager kernels (forward
#: and backward) left the GPU idle while they were launched (BENCHMARKS.md, issue 10).
COMPILE_SETTING_PARTS: dict[str, tuple[str, ...]] = {
    "llm": ("llm", "mask_decoder", "mask_losses"),
    "all": tuple(COMPILE_PARTS),
}


def _base(model: nn.Module) -> nn.Module:
    """The Sa2VAModel inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def compiled_blocks(model: nn.Module, parts: tuple[str, ...] = tuple(COMPILE_PARTS)) -> list:
    """The compiled regions of ``parts`` (keys of ``COMPILE_PARTS``) of a Sa2VAModel (through
    a peft wrapper too)."""
    base = _base(model)
    blocks: list[nn.Module] = []
    for part in parts:
        if part not in COMPILE_PARTS:
            raise ModelError(f"compile part '{part}' is unknown; expected {tuple(COMPILE_PARTS)}")
        for path in COMPILE_PARTS[part]:
            try:
                module = base.get_submodule(path)
            except AttributeError:
                continue
            blocks.extend(module if isinstance(module, nn.ModuleList) else [module])
    return blocks


def compile_blocks(
    model: nn.Module,
    parts: tuple[str, ...] = ("llm",),
    mode: str | None = None,
    backend: str | Callable = "inductor",
) -> int:
    """``torch.compile`` every repeated block of ``parts`` in place ("regional" compilation).

    Blocks of the same shape share one compiled graph, so this compiles in seconds where
    whole-model compilation takes minutes, and it fuses the many small LoRA / norm / activation
    kernels that make the small LLMs launch-bound. In place (``nn.Module.compile``), so
    parameter names and checkpoints do not change. Returns the number of blocks compiled.
    ``backend`` other than inductor is for tests and debugging.
    """
    import torch._dynamo

    # SAM2's Hiera stages differ in width and window size, and sequence lengths vary between
    # batches: each is a recompile of the same code. The default limit (8) would silently
    # leave later blocks eager.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    blocks = compiled_blocks(model, parts)
    for block in blocks:
        block.compile(mode=mode, backend=backend)
    return len(blocks)


def compile_trained_path(
    model: nn.Module, mode: str | None = None, backend: str | Callable = "inductor"
) -> int:
    """``compile_blocks`` on what trains (``model.compile: llm``): the LLM decoder layers,
    SAM2's mask decoder (transformer and hypernetwork MLPs) and the mask losses."""
    return compile_blocks(model, COMPILE_SETTING_PARTS["llm"], mode=mode, backend=backend)


def uncompile_blocks(model: nn.Module) -> None:
    """Back to eager execution for every compiled block (LLM, vision, SAM2)."""
    for block in compiled_blocks(model):
        block._compiled_call_impl = None


def any_block_compiled(model: nn.Module) -> bool:
    """Whether any block of the model is compiled."""
    return any(getattr(block, "_compiled_call_impl", None) for block in compiled_blocks(model))


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from torch.compile (dynamo / inductor / a backend), not the model."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        module = type(current).__module__ or ""
        if module.startswith(("torch._dynamo", "torch._inductor", "torch._functorch")):
            return True
        current = current.__cause__ or current.__context__
    return False


def run_with_compile_fallback(model: nn.Module, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; if a compiled block fails to compile, warn, go eager and run it again.

    Compilation happens at the first call, so this is where it can fail (a torch build without
    a working inductor/triton, an unsupported op). Backward graphs compile at the first
    backward: ``probe_train_step`` covers that for training.
    """
    try:
        return fn()
    except Exception as exc:
        if not (any_block_compiled(model) and is_compile_failure(exc)):
            raise
        _fall_back(model, exc)
        return fn()


def _fall_back(model: nn.Module, exc: BaseException) -> None:
    uncompile_blocks(model)
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    inner = getattr(root, "inner_exception", None)  # dynamo's BackendCompilerFailed keeps it here
    if isinstance(inner, BaseException):
        root = inner
    text = " ".join(str(root).split())[:300]
    first_line = f"{type(root).__name__}: {text}"
    base = _base(model)
    base.__dict__["compile_fallback_reason"] = first_line
    message = f"torch.compile of the compiled blocks failed ({first_line}); running them eagerly"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


def probe_train_step(model: nn.Module, step: Callable[[], Any]) -> str | None:
    """One training step (forward and backward) with compiled layers; on a compile failure in
    either pass, go eager and return the reason (None when compilation worked). The caller
    zeroes gradients afterwards."""
    base = _base(model)
    base.__dict__.pop("compile_fallback_reason", None)
    try:
        step()
    except Exception as exc:
        if not (any_block_compiled(model) and is_compile_failure(exc)):
            raise
        _fall_back(model, exc)
    return base.__dict__.get("compile_fallback_reason")


# --- gradient checkpointing chosen from measured memory ----------------------------------------


@dataclass
class CheckpointingChoice:
    """What ``choose_gradient_checkpointing`` measured and decided."""

    enabled: bool
    peak_without_gib: float | None  # None: the probe ran out of memory
    limit_gib: float
    reason: str


def choose_gradient_checkpointing(
    model: nn.Module,
    step: Callable[[], Any],
    device: torch.device,
    memory_fraction: float = 0.9,
    pending_bytes: int = 0,
) -> CheckpointingChoice:
    """Run one training step without gradient checkpointing on ``device`` and keep it off when
    the step's peak memory stays under ``memory_fraction`` of the GPU; else switch it on.

    Measured, not guessed: activations depend on tokens per sample, micro-batch and the model,
    which no static rule captures. On a CPU device checkpointing stays off (no memory limit to
    protect). ``step`` must run forward and backward of one micro-batch of the real size; the
    caller zeroes gradients afterwards. ``pending_bytes``: memory the run will hold later but
    the probe does not (e.g. AdamW's two fp32 states per trainable value before the first
    optimiser step), added to the measured peak.
    """
    base = _base(model)
    if device.type != "cuda":
        base.set_llm_gradient_checkpointing(False)
        return CheckpointingChoice(False, None, float("inf"), "not a CUDA device")
    total = torch.cuda.get_device_properties(device).total_memory
    limit = memory_fraction * total
    base.set_llm_gradient_checkpointing(False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step()
        peak = torch.cuda.max_memory_allocated(device) + pending_bytes
    except torch.OutOfMemoryError:
        peak = None
    torch.cuda.empty_cache()
    limit_gib = limit / 2**30
    if peak is None or peak > limit:
        base.set_llm_gradient_checkpointing(True)
        seen = "out of memory" if peak is None else f"peak {peak / 2**30:.1f} GiB"
        return CheckpointingChoice(
            True,
            None if peak is None else peak / 2**30,
            limit_gib,
            f"without checkpointing: {seen} > {limit_gib:.1f} GiB",
        )
    return CheckpointingChoice(
        False,
        peak / 2**30,
        limit_gib,
        f"without checkpointing: peak {peak / 2**30:.1f} GiB <= {limit_gib:.1f} GiB",
    )


# --- cache of frozen-encoder outputs ----------------------------------------------------------


def tensor_key(tensor: torch.Tensor) -> str:
    """Content hash of a CPU tensor (dtype, shape and bytes): equal keys mean equal inputs."""
    if tensor.device.type != "cpu":
        raise ModelError(
            "encoder cache keys are computed from CPU tensors (before the batch moves to the "
            "GPU); call attach_encoder_keys on the batch the processor returned"
        )
    data = tensor.detach().contiguous()
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def attach_encoder_keys(batch: Sa2VABatch) -> Sa2VABatch:
    """Give each vision tile / patch group and each SAM2 image of ``batch`` its content key.

    Runs on the CPU where batches are built (a DataLoader worker), before ``batch.to(device)``.
    """
    batch.sam2_keys = [tensor_key(x) for x in batch.sam2_pixel_values]
    if batch.image_grid_thw is None:  # InternVL: one key per tile
        batch.vision_keys = [tensor_key(x) for x in batch.pixel_values]
    else:  # Qwen2.5-VL: the vision tower sees all images' patches at once; not cached
        batch.vision_keys = None
    return batch


def check_encoder_cache_allowed(augment_enabled: bool, deterministic_augment: bool = False) -> None:
    """The cache is valid only when an image reaches the encoders identically every epoch."""
    if augment_enabled and not deterministic_augment:
        raise ConfigError(
            "encoder cache: data.augment.enabled is true and augmentations are random, so each "
            "epoch shows the encoders different pixels and cached outputs would be wrong; set "
            "data.augment.enabled=false or turn the encoder cache off"
        )


@dataclass
class EncoderCacheStats:
    hits: int = 0
    misses: int = 0
    stored_bytes: int = 0


@dataclass
class FrozenEncoderCache:
    """Outputs of the frozen vision tower (InternVL; before the trainable projector) and of
    SAM2's image encoder (before the trainable mask decoder's conv_s0/conv_s1), keyed by the
    content hash of their input.

    ``storage`` is where outputs live: "cuda" (fastest; about 44 MB per image at 1024 px for
    SAM2 + 2 MB per InternVL tile in bf16) or "cpu" (pinned host memory, copied in per step).
    Valid only while the encoders are frozen and inputs repeat exactly (augmentations off).
    """

    storage: str = "cuda"
    max_bytes: int | None = None
    _vision: dict[str, torch.Tensor] = field(default_factory=dict)
    _sam2: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    stats: EncoderCacheStats = field(default_factory=EncoderCacheStats)

    def _store(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach()
        if self.storage == "cpu":
            stored = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
            stored.copy_(value)
            value = stored
        else:
            value = value.clone()
        self.stats.stored_bytes += value.numel() * value.element_size()
        return value

    def _room(self, nbytes: int) -> bool:
        return self.max_bytes is None or self.stats.stored_bytes + nbytes <= self.max_bytes

    def lookup(
        self,
        table: dict[str, Any],
        keys: list[str],
        inputs: torch.Tensor,
        compute: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    ) -> tuple[torch.Tensor, ...]:
        """Outputs for ``inputs`` (one row per key): cached rows, the rest computed in one call
        (rows along dim 0 of each output) and stored while there is room."""
        if len(keys) != inputs.shape[0]:
            raise ModelError(
                f"encoder cache: {len(keys)} keys for {inputs.shape[0]} inputs; the batch's keys "
                "are stale (attach_encoder_keys after every change to the pixels)"
            )
        missing = [i for i, k in enumerate(keys) if k not in table]
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        computed: dict[int, tuple[torch.Tensor, ...]] = {}
        if missing:
            index = torch.tensor(missing, device=inputs.device)
            with torch.no_grad():
                outputs = compute(inputs.index_select(0, index))
            for row, i in enumerate(missing):
                parts = tuple(o[row] for o in outputs)
                computed[i] = parts
                nbytes = sum(p.numel() * p.element_size() for p in parts)
                if keys[i] not in table and self._room(nbytes):
                    table[keys[i]] = tuple(self._store(p) for p in parts)
        rows = [computed[i] if i in computed else table[k] for i, k in enumerate(keys)]
        device = inputs.device
        return tuple(
            torch.stack([r[j].to(device, non_blocking=True) for r in rows])
            for j in range(len(rows[0]))
        )

    def vision(
        self, keys: list[str], pixel_values: torch.Tensor, compute: Callable
    ) -> torch.Tensor:
        return self.lookup(self._vision, keys, pixel_values, lambda x: (compute(x),))[0]

    def sam2(self, keys: list[str], pixel_values: torch.Tensor, compute: Callable) -> tuple:
        return self.lookup(self._sam2, keys, pixel_values, compute)

    def clear(self) -> None:
        self._vision.clear()
        self._sam2.clear()
        self.stats = EncoderCacheStats()


def enable_encoder_cache(model: Sa2VAModel, cache: FrozenEncoderCache | None) -> None:
    """Serve the frozen encoders of ``model`` from ``cache`` (None switches the cache off).

    Refuses when an encoder trains: a cache of something that changes would be wrong.
    """
    base = _base(model)
    if cache is not None:
        trainable = [
            name
            for name, p in base.named_parameters()
            if p.requires_grad
            and (name.startswith("mllm.model.vision_tower.") or name.startswith("sam2.vision_"))
        ]
        if trainable:
            raise ConfigError(
                f"encoder cache: {len(trainable)} encoder parameter(s) train (e.g. "
                f"{trainable[0]}); the cache only holds outputs of frozen encoders"
            )
    base.__dict__["encoder_cache"] = cache
