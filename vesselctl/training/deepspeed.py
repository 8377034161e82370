"""The DeepSpeed configuration, generated from TrainSettings and written into the run folder.

The file is an output (what DeepSpeed was told), never an input to hand-edit: change settings and
re-run instead. The optimiser is a torch AdamW passed to ``deepspeed.initialize`` by the loop, so
no DeepSpeed op has to be compiled (its FusedAdam JIT build fails on some CUDA setups, and
CPU offload then runs torch's AdamW on the CPU copy: slower than DeepSpeedCPUAdam, but with no
build step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vesselctl.files import atomic_write_json
from vesselctl.settings.train import TrainSettings

DEEPSPEED_CONFIG_NAME = "deepspeed_config.json"


def deepspeed_config(settings: TrainSettings, stage: int, world_size: int, bf16: bool) -> dict:
    """The DeepSpeed config dict for ZeRO ``stage`` (2 or 3) with ``world_size`` processes."""
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")
    optim = settings.optim
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
    if stage == 2:
        zero["allgather_bucket_size"] = 5e7
    else:
        # Parameters smaller than this stay resident instead of being gathered on every use:
        # LoRA matrices and norms are tiny, gathering them costs more than keeping them.
        zero["stage3_param_persistence_threshold"] = 1e5
        zero["stage3_prefetch_bucket_size"] = 5e7
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if settings.distributed.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": optim.micro_batch,
        "gradient_accumulation_steps": optim.accumulation,
        "train_batch_size": optim.micro_batch * optim.accumulation * world_size,
        "gradient_clipping": optim.grad_clip,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # The client optimiser is torch AdamW (see module docstring).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def write_deepspeed_config(config: dict, run_dir: Path) -> Path:
    """Write the config into the run folder (atomically) so the run documents what DeepSpeed got."""
    path = Path(run_dir) / DEEPSPEED_CONFIG_NAME
    atomic_write_json(path, config)
    return path
