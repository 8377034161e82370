"""The training loop: micro-batches -> optimiser steps, with logging, validation, checkpoints and
the failure rules (non-finite loss stops before the update; out-of-memory names the knobs;
SIGTERM saves a checkpoint and stops cleanly).

The loop does not know the strategy: it talks to an engine (``training/engine.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from vesselctl.errors import TrainingError
from vesselctl.metrics import cldice_score, dice_score
from vesselctl.model.batch import Sa2VABatch, Sa2VAOutput
from vesselctl.training import checkpoint as ckpt
from vesselctl.training.data import SegDataset
from vesselctl.training.engine import DeepSpeedEngine, TorchEngine, autocast
from vesselctl.training.launch import DistEnv
from vesselctl.training.logs import RunLog

OOM_HELP = (
    "lower optim.micro_batch (raise optim.accumulation to keep the effective batch), turn on "
    "model.gradient_checkpointing, use distributed.strategy zero3 with several GPUs, or "
    "distributed.offload true"
)
LOSS_PARTS = ("loss", "loss_mask", "loss_dice", "llm_loss")


@dataclass
class LoopState:
    """Where training stands; saved in progress.json and restored on resume."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    samples_seen: int = 0
    best_val_dice: float | None = None
    best_step: int | None = None


@dataclass
class LoopResult:
    state: LoopState
    total_steps: int
    stopped_by_signal: bool = False
    last_checkpoint: Path | None = None
    last_val: dict[str, float] = field(default_factory=dict)
    train_time_s: float = 0.0
    last_metrics: dict[str, Any] = field(default_factory=dict)


class _StopFlag:
    """Set by SIGTERM; the loop saves and stops at the next optimiser-step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no signal handling
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _all_reduce_sum(values: torch.Tensor, dist: DistEnv, device: torch.device) -> torch.Tensor:
    """Sum a small CPU tensor over ranks, on ``device`` when it is a GPU (NCCL reduces CUDA
    tensors only; gloo takes CPU ones). One process: ``values`` as they are, no device trip."""
    if not dist.is_distributed:
        return values
    on_device = values.to(device) if device.type == "cuda" else values
    torch_dist.all_reduce(on_device, op=torch_dist.ReduceOp.SUM)
    return on_device.cpu()


def _barrier(dist: DistEnv) -> None:
    if dist.is_distributed:
        torch_dist.barrier()


def _memory_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


@dataclass
class LoopConfig:
    """The loop's knobs, taken from TrainSettings by the stage."""

    total_steps: int
    accumulation: int
    effective_batch: int
    steps_per_epoch: int
    log_every: int
    val_every: int
    val_threshold: float
    val_micro_batch: int
    checkpoint_every: int
    keep_last: int
    save_final: bool
    device: torch.device
    batch_dtype: torch.dtype | None
    autocast_dtype: torch.dtype | None
    strategy: str


class TrainingLoop:
    """Runs optimiser steps until ``total_steps`` and owns checkpoint save/restore."""

    def __init__(
        self,
        engine: TorchEngine | DeepSpeedEngine,
        config: LoopConfig,
        dist: DistEnv,
        run_dir: Path,
        log: RunLog,
        trainable_meta: Callable[[int], dict[str, Any]],
        val_dataset: SegDataset | None,
        processor: Callable[..., Sa2VABatch],
    ) -> None:
        self.engine = engine
        self.cfg = config
        self.dist = dist
        self.run_dir = Path(run_dir)
        self.log = log
        self.trainable_meta = trainable_meta
        self.val_dataset = val_dataset
        self.processor = processor
        self.state = LoopState()

    # --- checkpoints -----------------------------------------------------------------------

    def _progress(self) -> dict[str, Any]:
        s = self.state
        return {
            "global_step": s.global_step,
            "epoch": s.epoch,
            "step_in_epoch": s.step_in_epoch,
            "samples_seen": s.samples_seen,
            "best_val_dice": s.best_val_dice,
            "best_step": s.best_step,
            "world_size": self.dist.world_size,
            "effective_batch": self.cfg.effective_batch,
            "strategy": self.cfg.strategy,
            "total_steps": self.cfg.total_steps,
        }

    def save(self) -> Path:
        """A complete checkpoint of the current step (every rank must call this)."""
        step = self.state.global_step
        if self.dist.is_main:
            ckpt.prepare_temp(self.run_dir, step)
        _barrier(self.dist)
        tmp = ckpt.temp_dir(self.run_dir, step)
        module = self.engine.module
        params = [p for p in module.parameters() if p.requires_grad]
        gather = (
            self.engine.gathered(params)
            if isinstance(self.engine, DeepSpeedEngine)
            else contextlib.nullcontext()
        )
        with gather:
            state = ckpt.trainable_state(module) if self.dist.is_main else {}
        if self.dist.is_main:
            ckpt.write_trainable_export(tmp, state, self.trainable_meta(step))
        self.engine.save_state(tmp, self.dist.is_main)
        ckpt.save_rng(tmp, self.dist.rank)
        _barrier(self.dist)
        final = ckpt.final_dir(self.run_dir, step)
        if self.dist.is_main:
            final = ckpt.publish(self.run_dir, step, self._progress())
            removed = ckpt.prune(self.run_dir, self.cfg.keep_last)
            self.log.event(
                f"checkpoint saved: {final}"
                + (f" (removed {', '.join(p.name for p in removed)})" if removed else "")
            )
        _barrier(self.dist)
        return final

    def restore(self, folder: Path) -> None:
        """Load a checkpoint written by ``save`` (every rank must call this)."""
        progress = ckpt.read_progress(folder)
        saved_world = int(progress["world_size"])
        if int(progress["effective_batch"]) != self.cfg.effective_batch:
            raise TrainingError(
                f"{folder}: written with effective batch {progress['effective_batch']} "
                f"({saved_world} processes) but this run's is {self.cfg.effective_batch}; keep "
                "micro_batch x accumulation x processes the same (e.g. change "
                "optim.accumulation) so the data position and schedule stay valid"
            )
        saved_strategy = str(progress.get("strategy"))
        deepspeed_now = isinstance(self.engine, DeepSpeedEngine)
        if (saved_strategy in ("zero2", "zero3")) != deepspeed_now or (
            deepspeed_now and saved_strategy != self.cfg.strategy
        ):
            raise TrainingError(
                f"{folder}: written with strategy {saved_strategy} but this run resolved to "
                f"{self.cfg.strategy}; optimiser states of the two are stored differently. "
                f"Resume with --strategy {saved_strategy} (and the same number of processes)"
            )
        if saved_world != self.dist.world_size and deepspeed_now:
            raise TrainingError(
                f"{folder}: written by {saved_world} processes but this run has "
                f"{self.dist.world_size}; DeepSpeed's ZeRO optimiser state is partitioned per "
                f"process, so resume with --gpus/--nnodes giving {saved_world} processes"
            )
        self._check_same_trainable_groups(folder)
        if isinstance(self.engine, DeepSpeedEngine):
            self.engine.load_state(folder)
        else:
            ckpt.load_trainable_weights(self.engine.module, folder)
            self.engine.load_state(folder)
        if not ckpt.load_rng(folder, self.dist.rank):
            # A new rank after a world-size change: seed it from the step so runs repeat.
            torch.manual_seed(int(progress["global_step"]) * 1009 + self.dist.rank)
        self.state = LoopState(
            global_step=int(progress["global_step"]),
            epoch=int(progress["epoch"]),
            step_in_epoch=int(progress["step_in_epoch"]),
            samples_seen=int(progress["samples_seen"]),
            best_val_dice=progress.get("best_val_dice"),
            best_step=progress.get("best_step"),
        )

    def _check_same_trainable_groups(self, folder: Path) -> None:
        """Name the setting when the checkpoint trained other groups than this run would (e.g. a
        run from before trainable.embeddings defaulted to auto), instead of a key mismatch."""
        meta_path = Path(folder) / ckpt.TRAINABLE_META_NAME
        if not meta_path.is_file():
            return
        import json

        saved = json.loads(meta_path.read_text(encoding="utf-8")).get("trainable_groups") or {}
        now = self.trainable_meta(self.state.global_step).get("trainable_groups") or {}
        changed = [k for k in sorted(saved.keys() & now.keys()) if saved[k] != now[k]]
        if changed:

            def text(value: Any) -> str:
                return str(value).lower() if isinstance(value, bool) else str(value)

            was = ", ".join(f"trainable.{k}={text(saved[k])}" for k in changed)
            now_text = ", ".join(f"trainable.{k}={text(now[k])}" for k in changed)
            flags = " ".join(f"--set {item}" for item in was.split(", "))
            raise TrainingError(
                f"{meta_path}: the checkpoint trained {was} but this run resolves to "
                f"{now_text}; resume with the checkpoint's values ({flags}) or start a new run "
                "folder"
            )

    # --- validation ------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Full-image Dice and clDice on the validation split, averaged over images.

        Images are split over ranks; every rank runs the same number of forwards (the short
        shards repeat an image with weight 0) because ZeRO-3 needs all ranks in every forward.
        """
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return {}
        dataset = self.val_dataset
        n, world, rank = len(dataset), self.dist.world_size, self.dist.rank
        mine = list(range(rank, n, world))
        per_rank = math.ceil(n / world)
        padded = mine + [mine[-1] if mine else 0] * (per_rank - len(mine))
        weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
        module = self.engine.module
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        was_training = module.training
        module.eval()
        totals = torch.zeros(3, dtype=torch.float64)  # dice sum, cldice sum, count
        micro = self.cfg.val_micro_batch
        try:
            for start in range(0, len(padded), micro):
                indices = padded[start : start + micro]
                samples = [dataset[i] for i in indices]
                gts = [s.masks[0] for s in samples]
                for s in samples:
                    s.masks = None
                batch = self.processor(samples, train=False).to(
                    self.cfg.device, self.cfg.batch_dtype
                )
                with autocast(self.cfg.device, self.cfg.autocast_dtype):
                    probs = base.predict_probabilities(batch)
                for j, (prob, gt) in enumerate(zip(probs, gts, strict=True)):
                    weight = weights[start + j]
                    if weight == 0.0:
                        continue
                    pred = (prob[0].float() > self.cfg.val_threshold).cpu().numpy()
                    totals[0] += dice_score(pred, gt)
                    totals[1] += cldice_score(pred, gt)
                    totals[2] += 1
        finally:
            module.train(was_training)
        totals = _all_reduce_sum(totals, self.dist, self.cfg.device)
        count = max(float(totals[2]), 1.0)
        return {"val_dice": float(totals[0]) / count, "val_cldice": float(totals[1]) / count}

    def _validate_and_track(self) -> dict[str, float]:
        started = time.perf_counter()
        try:
            result = self.validate()
        except torch.OutOfMemoryError as exc:
            raise TrainingError(
                f"validation at step {self.state.global_step}: out of GPU memory; lower "
                "validation.micro_batch or processor.max_tiles"
            ) from exc
        if not result:
            return result
        step = self.state.global_step
        improved = self.state.best_val_dice is None or result["val_dice"] > self.state.best_val_dice
        if improved:
            self.state.best_val_dice = result["val_dice"]
            self.state.best_step = step
        self.log.metrics(
            {
                "step": step,
                "epoch": self.state.epoch,
                "split": "val",
                **result,
                "best_val_dice": self.state.best_val_dice,
                "val_time_s": time.perf_counter() - started,
            }
        )
        return {**result, "improved": float(improved)}

    # --- training --------------------------------------------------------------------------

    def _loss_check(self, sums: torch.Tensor) -> tuple[Callable[[Sa2VAOutput], None], Callable]:
        """The loss check of one optimiser step, in two parts.

        ``record`` runs after each micro-batch's forward and keeps its loss parts on the device
        (no GPU wait). ``verify`` copies what was recorded to the CPU in one go (waiting for
        the GPU), reduces it over ranks into ``sums``, and stops every rank together when any
        rank's loss is NaN/inf. The engine calls ``verify`` before the update (one process or
        DDP: after backward and clipping, so the wait overlaps no launch but the optimiser's;
        DeepSpeed, which updates inside its step: before backward), so nothing non-finite is
        ever applied or saved.
        """
        pending: list[torch.Tensor] = []

        def record(output: Sa2VAOutput) -> None:
            if output.loss is None:
                raise TrainingError(
                    "the model returned no loss: the batch has no labels or masks; check the "
                    "training split's masks"
                )
            zero = output.loss.detach().new_zeros((), dtype=torch.float32)
            parts = [getattr(output, name) for name in LOSS_PARTS]
            pending.append(torch.stack([zero if p is None else p.detach().float() for p in parts]))

        def verify() -> None:
            if not pending:
                return
            values = torch.stack(pending).cpu().double()  # [micro-batches, parts]
            pending.clear()
            losses = values[:, 0]
            finite = bool(torch.isfinite(losses).all())
            reduced = torch.cat([values.sum(dim=0), torch.tensor([0.0 if finite else 1.0])])
            reduced = _all_reduce_sum(reduced, self.dist, self.cfg.device)
            if reduced[-1] > 0:
                bad = next((float(v) for v in losses if not math.isfinite(float(v))), None)
                where = f"{bad} on rank {self.dist.rank}" if bad is not None else "on another rank"
                raise TrainingError(
                    f"step {self.state.global_step + 1}: the loss is not finite ({where}); "
                    "stopped before the update, nothing was saved. Lower optim.lr, check the "
                    "data, or resume from the last checkpoint"
                )
            sums.add_(reduced[:-1] / self.dist.world_size)

        return record, verify

    def run(self, batches: Iterator[Sa2VABatch], start_time: float) -> LoopResult:
        cfg = self.cfg
        stop = _StopFlag()
        stop.install()
        result = LoopResult(state=self.state, total_steps=cfg.total_steps)
        step_times: list[float] = []
        start_step = self.state.global_step
        try:
            while self.state.global_step < cfg.total_steps:
                step_start = time.perf_counter()
                data_time = 0.0
                sums = torch.zeros(len(LOSS_PARTS), dtype=torch.float64)
                record, verify = self._loss_check(sums)
                try:
                    for micro in range(cfg.accumulation):
                        fetch_start = time.perf_counter()
                        batch = next(batches).to(cfg.device, cfg.batch_dtype)
                        data_time += time.perf_counter() - fetch_start
                        self.engine.micro_step(batch, micro == cfg.accumulation - 1, record, verify)
                    grad_norm = self.engine.optimizer_step(verify)
                except torch.OutOfMemoryError as exc:
                    raise TrainingError(
                        f"step {self.state.global_step + 1}: out of GPU memory "
                        f"({str(exc).splitlines()[0]}); {OOM_HELP}"
                    ) from exc
                self._advance()
                step_time = time.perf_counter() - step_start
                step_times.append(step_time)
                result.last_metrics = self._train_record(
                    sums / cfg.accumulation, grad_norm, step_time, data_time, step_times
                )
                if self.state.global_step % cfg.log_every == 0:
                    self.log.metrics(result.last_metrics)
                at_end = self.state.global_step >= cfg.total_steps
                saved_now = False
                if cfg.val_every and (self.state.global_step % cfg.val_every == 0 or at_end):
                    val = self._validate_and_track()
                    if val:
                        result.last_val = {k: v for k, v in val.items() if k != "improved"}
                    if val.get("improved"):
                        ckpt_path = self.save()
                        if self.dist.is_main:
                            ckpt.write_best(self.run_dir, self.state.global_step, val["val_dice"])
                        result.last_checkpoint, saved_now = ckpt_path, True
                periodic = self.state.global_step % cfg.checkpoint_every == 0
                if not saved_now and (periodic or (at_end and cfg.save_final)):
                    result.last_checkpoint = self.save()
                    saved_now = True
                if self._stop_requested(stop):
                    if not saved_now:
                        result.last_checkpoint = self.save()
                    self.log.event(
                        f"SIGTERM: stopped after step {self.state.global_step} with a checkpoint"
                    )
                    result.stopped_by_signal = True
                    break
        finally:
            stop.uninstall()
        result.state = self.state
        result.train_time_s = time.perf_counter() - start_time
        if step_times and self.dist.is_main:
            done = self.state.global_step - start_step
            self.log.event(f"trained {done} steps in {sum(step_times):.1f} s")
        return result

    def _stop_requested(self, stop: _StopFlag) -> bool:
        """Agree over ranks: if any rank got SIGTERM, all save and stop at this step."""
        flag = torch.tensor([1.0 if stop.requested else 0.0], dtype=torch.float64)
        return float(_all_reduce_sum(flag, self.dist, self.cfg.device)[0]) > 0

    def _advance(self) -> None:
        s = self.state
        s.global_step += 1
        s.samples_seen += self.cfg.effective_batch
        s.step_in_epoch += 1
        if s.step_in_epoch >= self.cfg.steps_per_epoch:
            s.epoch += 1
            s.step_in_epoch = 0

    def _train_record(
        self,
        means: torch.Tensor,
        grad_norm: float,
        step_time: float,
        data_time: float,
        step_times: list[float],
    ) -> dict[str, Any]:
        recent = step_times[-20:]
        avg = sum(recent) / len(recent)
        remaining = self.cfg.total_steps - self.state.global_step
        record: dict[str, Any] = {
            "step": self.state.global_step,
            "epoch": round(
                self.state.epoch + self.state.step_in_epoch / max(1, self.cfg.steps_per_epoch), 4
            ),
        }
        record.update({name: float(v) for name, v in zip(LOSS_PARTS, means, strict=True)})
        record.update(
            {
                "lr": self.engine.lr,
                "grad_norm": grad_norm,
                "samples_per_s": self.cfg.effective_batch / step_time,
                "time_per_step_s": step_time,
                "data_time_s": data_time,
                "memory_gib": _memory_gib(self.cfg.device),
                "eta_s": avg * remaining,
            }
        )
        return record


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels have no deterministic version; warn rather than crash.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
