"""Loop machinery with a small real torch model (not Sa2VA): schedule, non-finite loss stop,
SIGTERM save, checkpoint pruning and resume bookkeeping."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from vesselctl.errors import TrainingError
from vesselctl.model.batch import Sa2VABatch, Sa2VAOutput
from vesselctl.training import checkpoint as ckpt
from vesselctl.training.engine import TorchEngine, adamw_param_groups, warmup_cosine
from vesselctl.training.launch import DistEnv
from vesselctl.training.logs import RunLog
from vesselctl.training.loop import LoopConfig, TrainingLoop


class Regressor(nn.Module):
    """y = w.x + b; can be told to return a NaN loss or raise SIGTERM at a given call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.calls = 0
        self.nan_at: int | None = None
        self.sigterm_at: int | None = None

    def forward(self, batch: Sa2VABatch) -> Sa2VAOutput:
        self.calls += 1
        if self.calls == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        x = batch.pixel_values
        target = x.sum(dim=1, keepdim=True)
        loss = ((self.linear(self.frozen(x) * 0 + x) - target) ** 2).mean()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        zero = loss * 0
        return Sa2VAOutput(loss=loss, loss_mask=loss, loss_dice=zero, llm_loss=zero)


def _batches(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(8, 4, generator=generator)
        yield Sa2VABatch(
            input_ids=torch.zeros(8, 1, dtype=torch.long),
            attention_mask=torch.ones(8, 1, dtype=torch.long),
            labels=None,
            pixel_values=x,
            sam2_pixel_values=x,
        )


def _loop(
    tmp_path: Path, total: int = 10, every: int = 3, keep: int = 2
) -> tuple[TrainingLoop, Regressor]:
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.0), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 2, 0.0))
    engine = TorchEngine(model, optimizer, scheduler, torch.device("cpu"), 2, 1.0, False, None)
    config = LoopConfig(
        total_steps=total, accumulation=2, effective_batch=16, steps_per_epoch=4, log_every=1,
        val_every=0, val_threshold=0.5, val_micro_batch=1, checkpoint_every=every,
        keep_last=keep, save_final=True, device=torch.device("cpu"), batch_dtype=None,
        autocast_dtype=None, strategy="single",
    )  # fmt: skip
    log = RunLog(tmp_path, True, tensorboard=False, progress=False, total_steps=total, start_step=0)
    loop = TrainingLoop(engine, config, DistEnv(), tmp_path, log, lambda s: {"step": s}, None, None)
    return loop, model


def test_warmup_then_cosine_to_zero() -> None:
    f = warmup_cosine(total_steps=10, warmup_steps=2, min_ratio=0.0)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.0)
    assert all(f(i) >= f(i + 1) for i in range(2, 10))


def test_loop_trains_checkpoints_and_prunes(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path)
    result = loop.run(_batches(), 0.0)
    assert result.state.global_step == 10 and not result.stopped_by_signal
    assert result.state.epoch == 2 and result.state.step_in_epoch == 2
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path)]
    assert steps == [9, 10]  # keep_last 2 (3 and 6 pruned)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]
    progress = ckpt.read_progress(tmp_path / "checkpoints" / "step_9")
    assert progress["global_step"] == 9 and progress["samples_seen"] == 9 * 16


def test_restore_continues_identically(tmp_path: Path) -> None:
    full, full_model = _loop(tmp_path / "a")
    full.run(_batches(), 0.0)
    first, _ = _loop(tmp_path / "b", total=10)
    first.cfg.total_steps = 6
    batches = _batches()
    first.run(batches, 0.0)
    resumed, resumed_model = _loop(tmp_path / "b", total=10)
    resumed.restore(tmp_path / "b" / "checkpoints" / "step_6")
    assert resumed.state.global_step == 6
    resumed.run(batches, 0.0)  # the data stream continues where it stopped
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_non_finite_loss_stops_before_update_and_saves_nothing(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path, every=100)
    model.nan_at = 7  # micro-batch 7 = the first micro-batch of step 4
    with pytest.raises(TrainingError, match="step 4: the loss is not finite") as info:
        loop.run(_batches(), 0.0)
    assert "nothing was saved" in str(info.value)
    assert ckpt.list_checkpoints(tmp_path) == []
    assert loop.state.global_step == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path, every=100)
    model.sigterm_at = 9  # during step 5
    result = loop.run(_batches(), 0.0)
    assert result.stopped_by_signal and result.state.global_step == 5
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5]
    assert "SIGTERM" in (tmp_path / "train.log").read_text()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed after the loop


def test_resume_with_another_effective_batch_is_refused(tmp_path: Path) -> None:
    first, _ = _loop(tmp_path, total=3, every=3)
    first.run(_batches(), 0.0)
    other, _ = _loop(tmp_path, total=3)
    other.cfg.effective_batch = 8  # e.g. twice the GPUs with the same accumulation
    with pytest.raises(TrainingError, match="effective batch 16"):
        other.restore(tmp_path / "checkpoints" / "step_3")


def test_resume_under_another_strategy_is_refused(tmp_path: Path) -> None:
    first, _ = _loop(tmp_path, total=3, every=3)
    first.run(_batches(), 0.0)
    progress = ckpt.read_progress(tmp_path / "checkpoints" / "step_3")
    progress["strategy"] = "zero2"
    (tmp_path / "checkpoints" / "step_3" / ckpt.PROGRESS_NAME).write_text(json.dumps(progress))
    other, _ = _loop(tmp_path, total=3)
    with pytest.raises(TrainingError, match="--strategy zero2"):
        other.restore(tmp_path / "checkpoints" / "step_3")
