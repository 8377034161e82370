"""Loop machinery with a small real torch model (not Sa2VA): schedule, non-finite loss stop,
SIGTERM save, checkpoint pruning and resume bookkeeping."""

from __future__ import annotations

import datetime
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
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
        self.losses: list[float] = []  # every forward's loss, for checking the logged means

    def forward(self, batch: Sa2VABatch) -> Sa2VAOutput:
        self.calls += 1
        if self.calls == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        x = batch.pixel_values
        target = x.sum(dim=1, keepdim=True)
        loss = ((self.linear(self.frozen(x) * 0 + x) - target) ** 2).mean()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        self.losses.append(float(loss.detach()))
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
    tmp_path: Path, total: int = 10, every: int = 3, keep: int = 2, dist: DistEnv | None = None
) -> tuple[TrainingLoop, Regressor]:
    dist = dist or DistEnv()
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.0), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 2, 0.0))
    engine = TorchEngine(
        model, optimizer, scheduler, torch.device("cpu"), 2, 1.0, dist.is_distributed, None
    )
    config = LoopConfig(
        total_steps=total, accumulation=2, effective_batch=16, steps_per_epoch=4, log_every=1,
        val_every=0, val_threshold=0.5, val_micro_batch=1, checkpoint_every=every,
        keep_last=keep, save_final=True, device=torch.device("cpu"), batch_dtype=None,
        autocast_dtype=None, strategy="single",
    )  # fmt: skip
    log = RunLog(
        tmp_path, dist.is_main, tensorboard=False, progress=False, total_steps=total, start_step=0
    )
    loop = TrainingLoop(engine, config, dist, tmp_path, log, lambda s: {"step": s}, None, None)
    return loop, model


def _logged(run_dir: Path, field: str) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[field] for line in lines]


def test_warmup_then_cosine_to_zero() -> None:
    f = warmup_cosine(total_steps=10, warmup_steps=2, min_ratio=0.0)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.0)
    assert all(f(i) >= f(i + 1) for i in range(2, 10))


def test_loop_trains_checkpoints_and_prunes(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path)
    result = loop.run(_batches(), 0.0)
    assert result.state.global_step == 10 and not result.stopped_by_signal
    assert result.state.epoch == 2 and result.state.step_in_epoch == 2
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path)]
    assert steps == [9, 10]  # keep_last 2 (3 and 6 pruned)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]
    # The logged loss of a step is the mean over its micro-batches (accumulation 2).
    means = [sum(model.losses[i : i + 2]) / 2 for i in range(0, 20, 2)]
    assert _logged(tmp_path, "loss") == pytest.approx(means, rel=1e-6)
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


@pytest.mark.parametrize("nan_at", [7, 8])  # the first / last micro-batch of step 4
def test_non_finite_loss_stops_before_update_and_saves_nothing(tmp_path: Path, nan_at: int) -> None:
    loop, model = _loop(tmp_path, every=100)
    model.nan_at = nan_at
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


def _ddp_rank(rank: int, run_dir: Path, port: int) -> None:
    """One of two gloo DDP processes; rank 1's loss turns NaN at its last micro-batch of step 4
    (the one whose backward reduces gradients over ranks). Writes what it saw to a JSON file."""
    torch.set_num_threads(1)
    # A short timeout: a rank that went on alone must fail the test, not hang it.
    torch_dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        dist = DistEnv(rank=rank, local_rank=rank, world_size=2, master_port=port)
        loop, model = _loop(run_dir, every=100, dist=dist)
        model.nan_at = 8 if rank == 1 else None
        error = None
        try:
            loop.run(_batches(seed=rank), 0.0)
        except TrainingError as exc:
            error = str(exc)
        seen = {
            "error": error,
            "step": loop.state.global_step,
            "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
            "losses": model.losses,
            "weights": [p.detach().flatten().tolist() for p in model.parameters()],
        }
        (run_dir / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        torch_dist.destroy_process_group()


def test_ddp_non_finite_loss_on_one_rank_stops_every_rank_before_the_update(
    tmp_path: Path,
) -> None:
    """Two CPU processes (gloo): the deferred check stops both ranks at step 4, before the
    update that the NaN rank's gradients would have poisoned on both; the logged losses of the
    steps before are the means over micro-batches and ranks."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(tmp_path, port), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert "step 4: the loss is not finite (nan on rank 1)" in ranks[1]["error"]
    assert "step 4: the loss is not finite (on another rank)" in ranks[0]["error"]
    assert all(r["step"] == 3 and r["finite"] for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas equal
    assert ckpt.list_checkpoints(tmp_path) == []
    means = [sum(r["losses"][i] + r["losses"][i + 1] for r in ranks) / 4 for i in range(0, 6, 2)]
    assert _logged(tmp_path, "loss") == pytest.approx(means, rel=1e-6)


def _deepspeed_process(rank: int, run_dir: Path, port: int) -> None:
    """One DeepSpeed ZeRO-2 process (gloo, CPU), accumulation 2; for a NaN in the first and in
    the last micro-batch of step 4, a fresh engine trains until the check stops it. Its own
    process: DeepSpeed keeps its process groups in module globals, which a later group in the
    test process would not match."""
    from vesselctl.settings.train import TrainSettings
    from vesselctl.training.deepspeed import deepspeed_config
    from vesselctl.training.engine import DeepSpeedEngine

    torch.set_num_threads(1)
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    os.environ.update({**launcher, "MASTER_PORT": str(port)})
    torch_dist.init_process_group("gloo")
    try:
        settings = TrainSettings(optim={"micro_batch": 8, "accumulation": 2})
        config = deepspeed_config(settings, 2, world_size=1, bf16=False)
        for nan_at in (7, 8):
            folder = run_dir / f"nan_at_{nan_at}"
            torch.manual_seed(0)
            model = Regressor()
            optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.0), lr=0.05)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10, 2, 0.0))
            engine = DeepSpeedEngine(model, optimizer, scheduler, config)
            loop_config = LoopConfig(
                total_steps=10, accumulation=2, effective_batch=16, steps_per_epoch=4,
                log_every=1, val_every=0, val_threshold=0.5, val_micro_batch=1,
                checkpoint_every=100, keep_last=1, save_final=True, device=torch.device("cpu"),
                batch_dtype=None, autocast_dtype=None, strategy="zero2",
            )  # fmt: skip
            log = RunLog(
                folder, True, tensorboard=False, progress=False, total_steps=10, start_step=0
            )
            loop = TrainingLoop(
                engine, loop_config, DistEnv(), folder, log, lambda s: {"step": s}, None, None
            )
            model.nan_at = nan_at
            error = None
            try:
                loop.run(_batches(), 0.0)
            except TrainingError as exc:
                error = str(exc)
            log.close()
            seen = {
                "error": error,
                "step": loop.state.global_step,
                "deepspeed_steps": engine.engine.global_steps,
                "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
                "losses": model.losses,
            }
            (folder / "seen.json").write_text(json.dumps(seen))
    finally:
        torch_dist.destroy_process_group()


def test_deepspeed_non_finite_loss_stops_before_its_update(tmp_path: Path) -> None:
    """DeepSpeed updates inside its step at the accumulation boundary: the check runs before
    each micro-batch's backward, so a NaN in either micro-batch of step 4 updates nothing; the
    logged losses of the steps before are the means over micro-batches."""
    pytest.importorskip("deepspeed")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_deepspeed_process, args=(tmp_path, port), nprocs=1, join=True)
    for nan_at in (7, 8):
        folder = tmp_path / f"nan_at_{nan_at}"
        seen = json.loads((folder / "seen.json").read_text())
        assert "step 4: the loss is not finite (nan on rank 0)" in seen["error"], nan_at
        assert seen["step"] == 3 and seen["deepspeed_steps"] == 3 and seen["finite"], nan_at
        assert ckpt.list_checkpoints(folder) == []
        means = [sum(seen["losses"][i : i + 2]) / 2 for i in range(0, 6, 2)]
        assert _logged(folder, "loss") == pytest.approx(means, rel=1e-6)
