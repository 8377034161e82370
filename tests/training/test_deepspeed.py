"""The DeepSpeed config is generated from settings and written into the run folder."""

from __future__ import annotations

import json

from vesselctl.settings.base import load_settings
from vesselctl.settings.train import TrainSettings
from vesselctl.training.deepspeed import (
    DEEPSPEED_CONFIG_NAME,
    deepspeed_config,
    write_deepspeed_config,
)


def _settings(*items: str) -> TrainSettings:
    return load_settings(TrainSettings, None, list(items))


def test_zero2_config_matches_settings(tmp_path) -> None:
    s = _settings("optim.micro_batch=4", "optim.accumulation=8", "optim.grad_clip=0.5")
    cfg = deepspeed_config(s, 2, world_size=4, bf16=True)
    assert cfg["train_batch_size"] == 4 * 8 * 4
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"]["enabled"] is True
    assert cfg["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in cfg["zero_optimization"]
    assert "optimizer" not in cfg  # torch AdamW is passed in: no op build
    path = write_deepspeed_config(cfg, tmp_path)
    assert path.name == DEEPSPEED_CONFIG_NAME and json.loads(path.read_text()) == cfg


def test_zero3_offload_moves_optimizer_and_parameters() -> None:
    s = _settings("distributed.offload=true", "distributed.strategy=zero3")
    cfg = deepspeed_config(s, 3, world_size=2, bf16=True)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    zero2 = deepspeed_config(s, 2, world_size=2, bf16=False)["zero_optimization"]
    assert "offload_optimizer" in zero2 and "offload_param" not in zero2
