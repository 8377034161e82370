"""One small adapter over the three ways a step can run: one process, torch DDP, DeepSpeed ZeRO.

Why an adapter and not three loops: the loop (data, logging, validation, checkpoints, failure
handling) is the same for every strategy; only "forward+backward one micro-batch", "finish an
optimiser step", and "save/load optimiser state" differ. Keeping those three in one place means a
fix to the loop reaches every strategy. DeepSpeed accumulates gradients and steps its optimiser
and scheduler itself (``engine.step()`` after every micro-batch); torch needs ``no_sync`` on all
but the last micro-batch, clipping and explicit steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vesselctl.model.batch import Sa2VABatch, Sa2VAOutput
from vesselctl.model.checkpoints import DEEPSPEED_SUBDIR
from vesselctl.settings.train import TrainSettings

#: Records a micro-batch's loss parts after its forward (no GPU wait).
LossRecord = Callable[[Sa2VAOutput], None]
#: Checks what was recorded (waits for the GPU) and raises before a non-finite update.
LossVerify = Callable[[], None]

TORCH_STATE_NAME = "training_state.pt"
DEEPSPEED_TAG = DEEPSPEED_SUBDIR  # the tag names the subfolder convert reads (model/checkpoints)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def adamw_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: decaying biases and norm scales pulls them to 0 for no
    regularising benefit (the usual transformer practice)."""
    decay, no_decay = [], []
    for _, param in trainable_parameters(model):
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 1/warmup to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to ``dtype`` on ``device``; no autocast when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _LossOnly(nn.Module):
    """Shows DDP only the loss. DDP with find_unused_parameters walks the autograd graph from
    every output tensor it finds; the IoU scores are outputs that no loss uses, so their head
    would be expected to get gradients that never come. The full output is kept aside."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.last_output: Sa2VAOutput | None = None

    def forward(self, batch: Sa2VABatch) -> torch.Tensor:
        self.last_output = self.module(batch)
        return self.last_output.loss


class TorchEngine:
    """One process or torch DDP; fp32 weights for what trains, bf16 autocast on CUDA if asked."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
        accumulation: int,
        grad_clip: float,
        ddp: bool,
        autocast_dtype: torch.dtype | None,
        cuda_graphs: bool = False,
    ) -> None:
        self.module = model
        self.cuda_graphs = cuda_graphs  # blocks compiled with mode reduce-overhead
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.accumulation = accumulation
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        self.ddp = ddp
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: SAM2's IoU and object-score heads get no gradient from the
            # mask losses (the IoU only picks the mask), so not every trainable parameter is used.
            self.wrapped: nn.Module = DistributedDataParallel(
                _LossOnly(model),
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        else:
            self.wrapped = model
        self._params = [p for _, p in trainable_parameters(model)]

    def micro_step(
        self,
        batch: Sa2VABatch,
        last_micro: bool,
        record: LossRecord,
        verify: LossVerify | None = None,
    ) -> Sa2VAOutput:
        """Forward and backward one micro-batch; ``record`` sees the output after forward.

        ``verify`` is not called here but in ``optimizer_step``: it waits for the GPU, and
        waiting before backward left the GPU idle while backward was launched.
        """
        if self.cuda_graphs:
            # A new iteration: CUDA-graph outputs of the previous one may now be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        sync = (
            self.wrapped.no_sync()  # type: ignore[operator]
            if self.ddp and not last_micro
            else contextlib.nullcontext()
        )
        with sync:
            with autocast(self.device, self.autocast_dtype):
                output = self.wrapped(batch)
            if self.ddp:
                output = self.wrapped.module.last_output
            record(output)
            (output.loss / self.accumulation).backward()
        return output

    def optimizer_step(self, verify: LossVerify | None = None) -> float:
        """Clip, ``verify`` the recorded losses (may raise: no update), step the optimiser and
        scheduler, zero gradients; return the pre-clip norm.

        The norm is read before the update is launched, so the update runs on the GPU while
        the CPU goes on to the next step instead of waiting for it.
        """
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        if verify is not None:
            verify()
        norm_value = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm_value

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save_state(self, folder: Path, is_main: bool) -> None:
        """Optimiser and scheduler state (replicas are identical, so rank 0 writes)."""
        if is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
            torch.save(state, Path(folder) / TORCH_STATE_NAME)

    def load_state(self, folder: Path) -> None:
        # weights_only: our own file, but never unpickle arbitrary objects.
        state = torch.load(Path(folder) / TORCH_STATE_NAME, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _single_process_group() -> None:
    """DeepSpeed needs a process group even for one process; without launcher variables it
    would go looking for MPI. Start a one-process group on a free local port."""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(port)),
    ):
        os.environ.setdefault(name, value)
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


class DeepSpeedEngine:
    """DeepSpeed ZeRO-2/3: it owns accumulation, clipping, bf16 master weights and stepping."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: dict,
    ) -> None:
        import deepspeed

        if not torch.distributed.is_initialized():
            _single_process_group()
        # The loss-only wrapper again: ZeRO-3 hooks find tensors in a module's outputs, not in
        # dataclasses; checkpoints and exports use the inner model's names (self.module).
        self._wrapper = _LossOnly(model)
        engine, _, _, _ = deepspeed.initialize(
            model=self._wrapper, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.engine = engine
        self.module = self._wrapper.module
        self.device = engine.device
        self.zero_stage = int(config["zero_optimization"]["stage"])
        self.bf16 = bool(config["bf16"]["enabled"])

    def micro_step(
        self,
        batch: Sa2VABatch,
        last_micro: bool,
        record: LossRecord,
        verify: LossVerify | None = None,
    ) -> Sa2VAOutput:
        """Forward, the loss check (DeepSpeed updates inside ``step`` at the accumulation
        boundary, so the check must come before backward), backward, step."""
        self.engine(batch)
        output = self._wrapper.last_output
        record(output)
        if verify is not None:
            verify()
        self.engine.backward(output.loss)
        self.engine.step()  # steps optimiser + scheduler only at the accumulation boundary
        return output

    def optimizer_step(self, verify: LossVerify | None = None) -> float:
        """The norm DeepSpeed's step computed (losses were verified in ``micro_step``)."""
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save_state(self, folder: Path, is_main: bool) -> None:
        """DeepSpeed's own checkpoint (every rank writes its optimiser partition). Frozen weights
        are left out: they come from the model source again on resume."""
        self.engine.save_checkpoint(
            str(folder), tag=DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True
        )

    def load_state(self, folder: Path) -> None:
        # DeepSpeed reads its own files with torch.load; they are the ones this run wrote.
        path, _ = self.engine.load_checkpoint(
            str(folder),
            tag=DEEPSPEED_TAG,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            from vesselctl.errors import CheckpointError

            raise CheckpointError(
                f"{folder}: DeepSpeed found no checkpoint under tag '{DEEPSPEED_TAG}'; "
                "resume from another checkpoint or start a new run folder"
            )

    def gathered(self, params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
        """Full values of ZeRO-3-partitioned parameters inside the block (no-op for ZeRO-2)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


@dataclass
class BuiltEngine:
    """An engine plus the dtypes the loop needs: batches are cast to ``batch_dtype`` (DeepSpeed
    runs the module in bf16) and forwards run under ``autocast_dtype`` (torch strategies)."""

    engine: TorchEngine | DeepSpeedEngine
    batch_dtype: torch.dtype | None
    autocast_dtype: torch.dtype | None
    deepspeed_config: dict | None


def build_engine(
    model: nn.Module,
    settings: TrainSettings,
    strategy: str,
    world_size: int,
    device: torch.device,
    bf16: bool,
    total_steps: int,
) -> BuiltEngine:
    """AdamW + warm-up/cosine schedule + the engine for ``strategy``.

    Torch strategies keep what trains in fp32 (the frozen rest stays in its dtype) and run the
    forward under bf16 autocast on CUDA; DeepSpeed casts the module to bf16 and keeps fp32
    master copies of what trains in its optimiser.
    """
    from vesselctl.training.deepspeed import deepspeed_config

    optim = settings.optim
    uses_deepspeed = strategy in ("zero2", "zero3")
    if not uses_deepspeed:
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        model.to(device)
    # fused: the update in a few fused kernels on CUDA (the multi-tensor default took 7.3 ms per
    # step for Sa2VA-4B's 141M trained values, 9% of the step's GPU time); DeepSpeed manages its
    # own copies.
    optimizer = torch.optim.AdamW(
        adamw_param_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=tuple(optim.betas),
        fused=device.type == "cuda" and not uses_deepspeed,
    )
    warmup_steps = math.ceil(optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup_steps, optim.min_lr_ratio)
    )
    if uses_deepspeed:
        config = deepspeed_config(settings, 3 if strategy == "zero3" else 2, world_size, bf16)
        engine = DeepSpeedEngine(model, optimizer, scheduler, config)
        return BuiltEngine(engine, torch.bfloat16 if bf16 else None, None, config)
    autocast = torch.bfloat16 if bf16 else None
    torch_engine = TorchEngine(
        model,
        optimizer,
        scheduler,
        device,
        optim.accumulation,
        optim.grad_clip,
        ddp=world_size > 1,
        autocast_dtype=autocast,
        cuda_graphs=settings.model.compile_mode == "reduce-overhead" and device.type == "cuda",
    )
    return BuiltEngine(torch_engine, None, autocast, None)
