"""The DeepSpeed engine path (ZeRO-3, the hardest one) run for real on DeepSpeed's CPU
accelerator with one gloo process: steps, a checkpoint through save_checkpoint, an exact
restore into a fresh engine, and a gathered trainable export with full shapes."""

from __future__ import annotations

import socket
import time

import pytest
import torch

from tests.training.synthetic import make_prepared_dataset
from vesselctl.settings.train import TrainSettings
from vesselctl.training import checkpoint as ckpt
from vesselctl.training.data import SeededCollate, SegDataset
from vesselctl.training.launch import DistEnv
from vesselctl.training.logs import RunLog
from vesselctl.training.loop import LoopConfig, TrainingLoop

deepspeed = pytest.importorskip("deepspeed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine(settings: TrainSettings, total: int):
    from vesselctl.model.load import load_model
    from vesselctl.training.deepspeed import deepspeed_config
    from vesselctl.training.engine import DeepSpeedEngine, adamw_param_groups, warmup_cosine
    from vesselctl.training.trainable import apply_trainable

    torch.manual_seed(0)
    # gradient_checkpointing 'auto' is the train stage's to resolve; load_model takes a bool
    model, processor = load_model(
        settings.model.model_copy(update={"gradient_checkpointing": False})
    )
    model, _ = apply_trainable(model, settings.lora, settings.trainable, [])
    optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.05), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 1, 0.0))
    config = deepspeed_config(settings, 3, world_size=1, bf16=False)
    return DeepSpeedEngine(model, optimizer, scheduler, config), processor


def test_zero3_steps_checkpoint_and_exact_restore(tmp_path, monkeypatch) -> None:
    data = make_prepared_dataset(tmp_path / "data", n_train=4, n_val=1, size=32)
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**launcher, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)  # undone after the test, so later tests see no launcher
    torch.distributed.init_process_group("gloo")
    try:
        settings = TrainSettings(optim={"micro_batch": 2}, lora={"r": 4, "alpha": 8})
        engine, processor = _engine(settings, total=3)
        train = SegDataset(data, "train", None, seed=0)
        collate = SeededCollate(processor, 0, train=True)

        def batches():
            i = 0
            while True:
                yield collate([((0, j % 4), train[(0, j % 4)]) for j in (i, i + 1)])
                i += 2

        config = LoopConfig(
            total_steps=3, accumulation=1, effective_batch=2, steps_per_epoch=2, log_every=1,
            val_every=3, val_threshold=0.5, val_micro_batch=1, checkpoint_every=3, keep_last=1,
            save_final=True, device=torch.device("cpu"), batch_dtype=None, autocast_dtype=None,
            strategy="zero3",
        )  # fmt: skip
        run = tmp_path / "run"
        log = RunLog(run, True, tensorboard=False, progress=False, total_steps=3, start_step=0)
        val = SegDataset(data, "val", None, seed=0)
        loop = TrainingLoop(
            engine, config, DistEnv(), run, log, lambda s: {"step": s}, val, processor
        )
        result = loop.run(batches(), time.perf_counter())
        log.close()
        assert result.state.global_step == 3 and "val_dice" in result.last_val
        step = run / "checkpoints" / "step_3"
        assert (step / "deepspeed").is_dir()

        fresh, _ = _engine(settings, total=3)
        again = TrainingLoop(
            fresh, config, DistEnv(), run, log, lambda s: {"step": s}, val, processor
        )
        again.restore(step)
        assert again.state.global_step == 3
        a = dict(engine.module.named_parameters())
        b = dict(fresh.module.named_parameters())
        trainable = [n for n, p in a.items() if p.requires_grad]
        with engine.gathered(list(a.values())), fresh.gathered(list(b.values())):
            worst = max(float((a[n] - b[n]).detach().abs().max()) for n in trainable)
            shapes = {n: tuple(a[n].shape) for n in trainable}
        assert worst == 0.0
        from safetensors.torch import load_file

        exported = load_file(str(step / ckpt.TRAINABLE_WEIGHTS_NAME))
        assert {n: tuple(t.shape) for n, t in exported.items()} == shapes
    finally:
        torch.distributed.destroy_process_group()
