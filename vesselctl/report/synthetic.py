"""Generators of realistic training logs and run folders for tests, benchmarks and the quickstart.

They write the two formats `vesselctl report` reads: official Sa2VA / mmengine text logs and
vesselctl's own ``metrics.jsonl`` run folders. Losses decay from given first values to given last
values (exactly, so a report of the log must reproduce them) with seeded noise, and anomalies
(NaN, spikes, restarts, crashes, truncation) can be planted at chosen steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

# The user's hand-written table: first and last logged values of each loss component.
USER_FIRST = {"loss_mask": 4.8412, "loss_dice": 1.0000, "llm_loss": 7.9200}
USER_LAST = {"loss_mask": 0.4812, "loss_dice": 0.3105, "llm_loss": 0.2843}
WORK_DIR = "/work_dirs/sa2va_vessels"
# The blocks mmengine's Runner prints at start (Runner._log_env, then the config).
_ENVIRONMENT = (
    "-" * 60,
    "System environment:",
    "    sys.platform: linux",
    "    Python: 3.10.12 (main, Nov 20 2023, 15:14:05) [GCC 11.4.0]",
    "    CUDA available: True",
    "    GPU 0,1,2,3: NVIDIA A10",
    "    PyTorch: 2.1.2+cu121",
    "    PyTorch compiling details: PyTorch built with:",
    "      - GCC 9.3",
    "    MMEngine: 0.10.3",
    "",
    "Runtime environment:",
    "    launcher: pytorch",
    "    GPU number: 4",
    "-" * 60,
    "",
)
_CONFIG = (
    "model = dict(",
    "    type='Sa2VAModel',",
    "    lora=dict(r=64, lora_alpha=128))",
    "lr = 2e-05",
    "",
)
_TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "tools/train.py", line 10, in <module>',
    "    runner.train()",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
)


@dataclass
class SyntheticRun:
    """What to generate; defaults give a healthy, finished iteration-based run."""

    total_iters: int = 200
    log_interval: int = 10
    first: dict[str, float] = field(default_factory=lambda: dict(USER_FIRST))
    last: dict[str, float] = field(default_factory=lambda: dict(USER_LAST))
    seed: int = 0
    noise: float = 0.03
    lr: float = 2e-5
    seconds_per_iter: float = 16.2
    memory_mb: int = 15234
    start: datetime = datetime(2025, 11, 23, 5, 12, 20)
    iters_per_epoch: int | None = None  # set -> mmengine "Epoch(train) [e][i/n]" headers
    val_every: int | None = None  # iterations between validation lines
    checkpoint_every: int | None = None
    nan_at: Sequence[int] = ()  # iterations whose logged losses are nan
    spike_at: Sequence[int] = ()  # iterations whose logged total loss jumps 8x
    restart_from: int | None = None  # after the end (or crash), resume from this iteration
    crash_at: int | None = None  # stop with a traceback after this iteration
    truncate_last_line: bool = False  # cut the last line in half (a run still writing)


def _loss_values(run: SyntheticRun, iters: np.ndarray) -> dict[str, np.ndarray]:
    """Exponential decay from ``first`` to ``last`` over the run, with multiplicative noise.

    The first and last logged iterations carry exactly the configured values.
    """
    rng = np.random.default_rng(run.seed)
    progress = (iters - iters[0]) / max(int(iters[-1] - iters[0]), 1)
    values: dict[str, np.ndarray] = {}
    for name, first in run.first.items():
        last = run.last[name]
        curve = last + (first - last) * np.exp(-5.0 * progress)
        curve = curve - (curve[-1] - last) * progress  # land exactly on ``last``
        noisy = curve * (1.0 + run.noise * rng.standard_normal(len(iters)))
        noisy[0], noisy[-1] = first, last
        values[name] = np.round(np.maximum(noisy, 0.0), 4)
    return values


def _eta_text(seconds: float) -> str:
    """mmengine writes eta as ``str(datetime.timedelta(seconds=int(eta)))``."""
    return str(timedelta(seconds=int(seconds)))


def write_mmengine_log(path: Path, run: SyntheticRun | None = None) -> Path:
    """Write an mmengine/xtuner text log like the official Sa2VA fine-tuning prints."""
    run = run or SyntheticRun()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    last_iter = run.crash_at or run.total_iters
    iters = np.arange(run.log_interval, last_iter + 1, run.log_interval)
    values = _loss_values(run, iters)
    rng = np.random.default_rng(run.seed + 1)
    records = 2 * (run.total_iters // run.log_interval) + 2  # a restart logs steps twice
    jitter = 1.0 + 0.03 * rng.standard_normal(records)
    memory_extra = rng.integers(0, 700, records)
    lines: list[str] = []
    clock = run.start

    def stamp() -> str:
        return clock.strftime("%Y/%m/%d %H:%M:%S")

    def header() -> None:
        lines.append(f"{stamp()} - mmengine - INFO - ")
        lines.extend(_ENVIRONMENT)
        lines.append(f"{stamp()} - mmengine - INFO - Config:")
        lines.extend(_CONFIG)
        lines.append(f"{stamp()} - mmengine - WARNING - The prefix is not set in metric class.")
        lines.append(f"{stamp()} - mmengine - INFO - Checkpoints will be saved to {WORK_DIR}.")

    def train_line(it: int, index: int, nan: bool = False) -> str:
        loss_parts = {k: v[index] for k, v in values.items()}
        total = sum(loss_parts.values())
        if it in run.spike_at:
            total *= 8.0
        items = [f"{k}: {'nan' if nan else f'{v:.4f}'}" for k, v in loss_parts.items()]
        total_text = "nan" if nan else f"{total:.4f}"
        eta = _eta_text((run.total_iters - it) * run.seconds_per_iter)
        if run.iters_per_epoch:
            epoch, in_epoch = divmod(it - 1, run.iters_per_epoch)
            width = len(str(run.iters_per_epoch))
            where = f"Epoch(train)  [{epoch + 1}][{in_epoch + 1:>{width}}/{run.iters_per_epoch}]"
        else:
            where = f"Iter(train) [{it:>{len(str(run.total_iters))}}/{run.total_iters}]"
        time = run.seconds_per_iter * float(jitter[index])
        memory = run.memory_mb + int(memory_extra[index])
        return (
            f"{stamp()} - mmengine - INFO - {where}  lr: {run.lr:.4e}  eta: {eta}  "
            f"time: {time:.4f}  data_time: 0.0123  memory: {memory}  loss: {total_text}  "
            + "  ".join(items)
        )

    header()
    restart_done = False
    index = 0
    while index < len(iters):
        it = int(iters[index])
        clock += timedelta(seconds=run.seconds_per_iter * run.log_interval)
        lines.append(train_line(it, index, nan=it in run.nan_at))
        if run.checkpoint_every and it % run.checkpoint_every == 0:
            lines.append(f"{stamp()} - mmengine - INFO - Saving checkpoint at {it} iterations")
        if run.val_every and it % run.val_every == 0:
            dice = min(0.95, 0.3 + 0.6 * it / run.total_iters)
            lines.append(
                f"{stamp()} - mmengine - INFO - Iter(val) [10/10]    eta: 0:00:00  "
                f"time: 1.2000  data_time: 0.0100  memory: 9000"
            )
            lines.append(
                f"{stamp()} - mmengine - INFO - Iter(val) [10/10]    val/dice: {dice:.4f}  "
                f"val/cldice: {dice - 0.05:.4f}  data_time: 0.0100  time: 1.2000"
            )
        index += 1
        if index == len(iters) and run.restart_from is not None and not restart_done:
            restart_done = True
            if run.crash_at:
                lines.extend(_TRACEBACK)
            clock += timedelta(minutes=30)
            header()
            lines.append(
                f"{stamp()} - mmengine - INFO - resumed epoch: 0, iter: {run.restart_from}"
            )
            resume_iters = np.arange(
                run.restart_from + run.log_interval, run.total_iters + 1, run.log_interval
            )
            tail = _loss_values(run, np.concatenate([iters[:1], resume_iters]))
            iters = np.concatenate([iters, resume_iters])
            for name in values:
                values[name] = np.concatenate([values[name], tail[name][1:]])
    if run.crash_at and run.restart_from is None:
        lines.extend(_TRACEBACK)
    text = "\n".join(lines) + "\n"
    if run.truncate_last_line:
        text = text[: -len(lines[-1]) // 2]
    path.write_text(text, encoding="utf-8")
    return path


def write_metrics_jsonl(path: Path, run: SyntheticRun | None = None) -> Path:
    """Write a vesselctl ``metrics.jsonl`` (train lines, plus val lines with ``"split": "val"``)."""
    run = run or SyntheticRun()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    last_iter = run.crash_at or run.total_iters
    iters = np.arange(run.log_interval, last_iter + 1, run.log_interval)
    values = _loss_values(run, iters)
    per_epoch = run.iters_per_epoch or run.total_iters
    lines = []
    for index, it in enumerate(iters):
        it = int(it)
        record: dict[str, object] = {"step": it, "epoch": (it - 1) // per_epoch}
        parts = {k: float(v[index]) for k, v in values.items()}
        total = sum(parts.values()) * (8.0 if it in run.spike_at else 1.0)
        if it in run.nan_at:
            total = math.nan
        record["loss"] = round(total, 4)
        record.update(parts)
        record.update(
            lr=run.lr,
            grad_norm=round(2.0 / (1 + index), 4),
            samples_per_s=round(32 / run.seconds_per_iter, 4),
            time_per_step_s=run.seconds_per_iter,
            data_time_s=0.01,
            memory_gib=round(run.memory_mb / 1024 + 0.001 * (it % 50), 3),
            eta_s=(run.total_iters - it) * run.seconds_per_iter,
        )
        # json writes NaN as the bare token NaN, as Python's json module does by default.
        lines.append(json.dumps(record))
        if run.val_every and it % run.val_every == 0:
            dice = min(0.95, 0.3 + 0.6 * it / run.total_iters)
            lines.append(
                json.dumps(
                    {
                        "step": it,
                        "epoch": record["epoch"],
                        "split": "val",
                        "val_dice": dice,
                        "val_cldice": dice - 0.05,
                    }
                )
            )
    text = "\n".join(lines) + "\n"
    if run.truncate_last_line:
        text = text[: -len(lines[-1]) // 2]
    path.write_text(text, encoding="utf-8")
    return path


def write_run_folder(
    folder: Path,
    run: SyntheticRun | None = None,
    *,
    checkpoints: Sequence[int] = (100, 200),
    with_evaluation: bool = True,
) -> Path:
    """Write a vesselctl train run folder: metrics.jsonl, settings.yaml, run_info.json,
    checkpoints/step_N/ with a weights file, and optionally eval/summary.json with overlays."""
    run = run or SyntheticRun()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_metrics_jsonl(folder / "metrics.jsonl", run)
    settings = {
        "model": {"preset": "sa2va-1b"},
        "lora": {"r": 64, "alpha": 128},
        "optim": {"lr": run.lr, "epochs": 3},
        "data": {"micro_batch": 1, "accumulation": 8},
    }
    (folder / "settings.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    run_info = {
        "created": run.start.isoformat(),
        "host": "gpu-node-1",
        "python": "3.12.3",
        "packages": {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.0"},
        "git_revision": "0123456789abcdef",
        "gpus": [{"index": 0, "name": "NVIDIA A10", "memory_gib": 24.0}],
    }
    (folder / "run_info.json").write_text(json.dumps(run_info, indent=2), encoding="utf-8")
    for step in checkpoints:
        ckpt = folder / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * (1000 + step))
    if with_evaluation:
        write_evaluation(folder / "eval")
    return folder


def write_evaluation(folder: Path, n_overlays: int = 2) -> Path:
    """Write an evaluation folder laid out as `vesselctl evaluate` writes it: summary.json
    (macro mean/std/median/CI per metric, micro value/CI, listed worst-case overlays) and the
    overlay PNGs."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    (folder / "overlays").mkdir(parents=True, exist_ok=True)
    worst = []
    for index in range(n_overlays):
        image = Image.new("RGB", (160, 120), (20, 20, 20))
        draw = ImageDraw.Draw(image)
        draw.line([(10, 100), (80, 20 + 20 * index), (150, 60)], fill=(0, 200, 0), width=5)
        draw.line([(10, 90), (70, 30), (150, 70)], fill=(220, 0, 0), width=3)
        name = f"overlays/worst_{index + 1:02d}_img_{index:04d}.png"
        image.save(folder / name)
        worst.append({"file": name, "id": f"img_{index:04d}", "dice": 0.52 + 0.05 * index})
    summary = {
        "n_images": 20,
        "threshold": {"value": 0.5, "source": "default"},
        "metrics": ["dice", "cldice", "hd95"],
        "macro": {
            "dice": {"mean": 0.781, "std": 0.06, "median": 0.79, "ci_low": 0.752, "ci_high": 0.807},
            "cldice": {
                "mean": 0.802,
                "std": 0.05,
                "median": 0.81,
                "ci_low": 0.771,
                "ci_high": 0.829,
            },
            "hd95": {"mean": 12.4, "std": 4.0, "median": 11.0, "ci_low": 10.1, "ci_high": 15.0},
        },
        "micro": {"dice": {"value": 0.79, "ci_low": 0.77, "ci_high": 0.81}},
        "overlays": {"legend": {"tp": "green"}, "rank_by": "dice", "worst": worst, "best": []},
        "per_case": [{"id": "img_0000", "dice": 0.52}],
        "settings": {"threshold": 0.5},
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return folder
