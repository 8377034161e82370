"""What a training run tells you while it runs: metrics.jsonl, TensorBoard, train.log, progress.

Only rank 0 writes. ``metrics.jsonl`` gets one JSON object per logged step, flushed at once, so
`vesselctl report` and ``tail -f`` see it live; validation lines carry ``"split": "val"``.
``train.log`` is the same information as readable text plus run events (start, resume,
checkpoints, errors).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO

METRICS_NAME = "metrics.jsonl"
TEXT_LOG_NAME = "train.log"
TENSORBOARD_DIR = "tb"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """metrics.jsonl + train.log + optional TensorBoard and progress bar, for rank 0."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        total_steps: int,
        start_step: int,
    ) -> None:
        self.enabled = enabled
        self._metrics: TextIO | None = None
        self._text: TextIO | None = None
        self._writer = None
        self._progress = None
        self._task = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # Appending: a resumed run continues the same files (lines carry their step).
        self._metrics = open(run_dir / METRICS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._text = open(run_dir / TEXT_LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, status=""
            )

    def event(self, message: str) -> None:
        """A run event (start, resume, checkpoint, stop) as one line of train.log."""
        if self._text is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._text.write(f"{stamp} {message}\n")
        self._text.flush()

    def metrics(self, record: dict[str, Any]) -> None:
        """One metrics line: JSONL, TensorBoard scalars and a readable train.log line."""
        if self._metrics is None:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._metrics.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._metrics.flush()
        step = int(record["step"])
        prefix = "val" if record.get("split") == "val" else "train"
        if self._writer is not None:
            for key, value in record.items():
                if key in ("step", "split", "epoch") or not isinstance(value, int | float):
                    continue
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
            self._writer.flush()
        parts = [f"{k}={_fmt(v)}" for k, v in record.items() if k not in ("split",)]
        self.event(f"[{prefix}] " + " ".join(parts))
        if self._progress is not None and prefix == "train":
            status = f"loss {_fmt(record.get('loss'))}"
            self._progress.update(self._task, completed=step, status=status)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for handle in (self._metrics, self._text):
            if handle is not None:
                handle.close()
        self._metrics = self._text = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
