"""Settings of `vesselctl report`: which runs, where to write, smoothing and anomaly thresholds."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from vesselctl.settings.base import Section


class AnomalySettings(Section):
    """Thresholds of the anomaly checks; the defaults flag what a person would call abnormal."""

    spike_factor: float = Field(
        3.0,
        gt=1.0,
        description="Flag a loss value above this many times the median of the "
        "values logged just before it.",
    )
    spike_window: int = Field(
        20, ge=3, description="How many earlier logged values the spike check compares against."
    )
    divergence_ratio: float = Field(
        0.5,
        gt=0.0,
        description="Flag divergence when a smoothed loss ends this fraction above "
        "its minimum (0.5 = 50% higher).",
    )
    stall_factor: float = Field(
        5.0,
        gt=1.0,
        description="Flag steps slower than this many times the median time per "
        "step, and log gaps this many times the typical gap.",
    )
    stall_min_seconds: float = Field(
        300.0, ge=0.0, description="A gap between log lines shorter than this is never a stall."
    )
    stuck_records: int = Field(
        20, ge=3, description="Flag a loss that stays exactly constant for this many records."
    )


class ReportSettings(Section):
    """`vesselctl report RUN_OR_LOG... --out DIR`."""

    runs: list[Path] = Field(
        default_factory=list,
        description="Run folders, mmengine work_dirs or log files "
        "(metrics.jsonl or mmengine text logs); several are compared side by side.",
    )
    out: Path | None = Field(
        None, description="Folder to write report.md, report.html, plots/ and report.json into."
    )
    names: list[str] = Field(
        default_factory=list,
        description="Display names of the runs, in order (default: the folder or file names).",
    )
    evaluations: list[Path] = Field(
        default_factory=list,
        description="Evaluation folders (from `vesselctl evaluate`), one "
        "per run in the same order; run folders are also searched for */summary.json.",
    )
    title: str | None = Field(None, description="Report title (default: built from run names).")
    ema: float = Field(
        0.9,
        ge=0.0,
        lt=1.0,
        description="EMA smoothing weight of the past for the curves and "
        "divergence check (0 = none, 0.9 = strong).",
    )
    smoothing_window: int = Field(
        10, ge=1, description="Logged values averaged for the smoothed first/last loss columns."
    )
    iters_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Steps per epoch, to build the per-epoch table from logs that "
        "count iterations only (Iter(train) lines).",
    )
    samples_per_step: int | None = Field(
        None,
        ge=1,
        description="Images per optimizer step over all GPUs, to derive samples/s "
        "from time per step when the log does not record it.",
    )
    anomalies: AnomalySettings = Field(
        default_factory=AnomalySettings, description="Anomaly thresholds."
    )

    @model_validator(mode="after")
    def _check(self) -> ReportSettings:
        if not self.runs:
            raise ValueError(
                "no run given: pass at least one run folder or log file, e.g. "
                "`vesselctl report runs/exp1 --out reports/exp1`"
            )
        if self.out is None:
            raise ValueError("'out' is required: the folder to write the report into (--out DIR)")
        if self.names and len(self.names) != len(self.runs):
            raise ValueError(
                f"'names' has {len(self.names)} entries for {len(self.runs)} runs; give one name "
                "per run or none"
            )
        if self.evaluations and len(self.evaluations) != len(self.runs):
            raise ValueError(
                f"'evaluations' has {len(self.evaluations)} folders for {len(self.runs)} runs; "
                "give one per run, in the same order, or none"
            )
        return self
