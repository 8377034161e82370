"""Settings of `vesselctl evaluate`: inputs, threshold (and its sweep), aggregation, overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vesselctl.settings.base import Section
from vesselctl.settings.predict import InferenceSettings

# The engine's metric names (vesselctl.metrics.image), repeated so that building the CLI help
# does not import numpy; a test keeps the two lists equal.
METRIC_CHOICES = (
    "dice",
    "iou",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "mcc",
    "balanced_accuracy",
    "cldice",
    "tprec",
    "tsens",
    "betti0_error",
    "betti1_error",
    "hd95",
    "assd",
    "auc_roc",
    "auc_pr",
)
SWEEP_METRICS = METRIC_CHOICES[:8]  # the confusion metrics, the ones a sweep can compute
Split = Literal["train", "val", "test"]


def _default_sweep_values() -> list[float]:
    return [round(0.05 * i, 2) for i in range(1, 20)]


class ThresholdSettings(Section):
    """How probability maps become masks, and how the threshold may be chosen on validation."""

    value: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Probability threshold: a pixel is vessel when prob >= value (binary masks "
        "are used as they are).",
    )
    sweep: bool = Field(
        False,
        description="Choose the threshold on a validation split (sweep_values, sweep_metric) and "
        "apply it to the evaluated split; never tuned on the evaluated split.",
    )
    sweep_pred: Path | None = Field(
        None,
        description="Folder of validation-split probability maps for the sweep (default: the "
        "--pred folder, which must then also hold the validation images).",
    )
    sweep_gt: Path | None = Field(
        None,
        description="Validation masks folder for the sweep; only needed when --gt is a mask "
        "folder (a prepared dataset provides sweep_split's masks).",
    )
    sweep_split: Split = Field(
        "val", description="Split of the prepared dataset the threshold is chosen on."
    )
    sweep_metric: Literal[SWEEP_METRICS] = Field(  # type: ignore[valid-type]
        "dice", description="Per-image metric whose mean the sweep maximises."
    )
    sweep_values: list[float] = Field(
        default_factory=_default_sweep_values,
        description="Candidate thresholds for the sweep, each in (0, 1].",
    )

    @field_validator("sweep_values")
    @classmethod
    def _values_in_range(cls, values: list[float]) -> list[float]:
        if not values:
            raise ValueError("needs at least one candidate threshold")
        bad = [v for v in values if not 0.0 < v <= 1.0]
        if bad:
            raise ValueError(f"thresholds must be in (0, 1], found {bad}")
        return values


class AggregationSettings(Section):
    """How per-image values are summarised."""

    bootstrap_resamples: int = Field(
        1000, ge=0, description="Bootstrap resamples for 95% intervals (0 turns them off)."
    )
    seed: int = Field(0, description="Seed of the bootstrap resampling (results are repeatable).")
    confidence: float = Field(
        0.95, gt=0.0, lt=1.0, description="Coverage of the bootstrap confidence intervals."
    )
    percentiles: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 75.0, 95.0],
        description="Percentiles of the per-image values reported in summary.json.",
    )

    @field_validator("percentiles")
    @classmethod
    def _percentiles_in_range(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0.0 <= v <= 100.0]
        if bad:
            raise ValueError(f"percentiles must be in [0, 100], found {bad}")
        return values


class OverlaySettings(Section):
    """Overlay pictures (TP green, FP red, FN blue) of the best and worst images."""

    k: int = Field(5, ge=0, description="Overlays of the k worst and k best images (0: none).")
    rank_by: Literal[METRIC_CHOICES] = Field(  # type: ignore[valid-type]
        "dice", description="Metric that ranks images for the overlays."
    )


class EvaluateSettings(Section):
    """Everything `vesselctl evaluate` needs; see `vesselctl config evaluate`."""

    pred: Path | None = Field(
        None,
        description="Folder of predictions named by image id: binary masks (0/255, 0/1 PNG) or "
        "probability maps (8/16-bit PNG, .npy, .npz).",
    )
    gt: Path | None = Field(
        None, description="Ground truth: a folder of masks, or a prepared dataset (uses --split)."
    )
    split: Split = Field("test", description="Split to evaluate when --gt is a prepared dataset.")
    fov: Path | None = Field(
        None, description="Folder of field-of-view masks; every metric ignores pixels outside."
    )
    out: Path | None = Field(
        None, description="Output folder (default: PRED-eval next to the prediction folder)."
    )
    allow_missing: bool = Field(
        False,
        description="Score an image without a prediction as an empty mask instead of stopping.",
    )
    metrics: list[str] | None = Field(
        None,
        description="Metrics to compute (default: all; AUCs need probability maps).",
    )
    compare: Path | None = Field(
        None,
        description="Second prediction folder: paired per-image differences with bootstrap CIs.",
    )
    workers: int = Field(0, ge=0, description="Worker processes (0: one per CPU core).")
    ckpt: Path | None = Field(
        None,
        description="Predict first with this training checkpoint (vesselctl step_N, iter_N.pth or "
        "a DeepSpeed folder), converted on the fly; replaces --pred.",
    )
    model: Path | None = Field(
        None,
        description="Predict first with this model folder (vesselctl or official Sa2VA HF "
        "export); replaces --pred.",
    )
    data: Path | None = Field(
        None,
        description="Prepared dataset whose --split is predicted and scored (with --ckpt/--model; "
        "default: --gt).",
    )
    base: Path | None = Field(
        None,
        description="Model a --ckpt was trained from (default: the one its run folder records).",
    )
    compare_empty: bool = Field(
        False,
        description="With --ckpt/--model: also score an all-empty prediction of the same images "
        "(the floor a model must beat) as --compare.",
    )
    overwrite: bool = Field(
        False, description="With --ckpt/--model: replace the results in a non-empty --out folder."
    )
    inference: InferenceSettings = Field(
        default_factory=InferenceSettings,
        description="How the model runs with --ckpt/--model (see `vesselctl config predict`).",
    )
    threshold: ThresholdSettings = Field(default_factory=ThresholdSettings)
    aggregation: AggregationSettings = Field(default_factory=AggregationSettings)
    overlays: OverlaySettings = Field(default_factory=OverlaySettings)

    @property
    def predicts(self) -> bool:
        """True when it predicts first (--ckpt or --model) instead of reading --pred."""
        return self.ckpt is not None or self.model is not None

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        unknown = [v for v in values if v not in METRIC_CHOICES]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {unknown}; choose from {', '.join(METRIC_CHOICES)}"
            )
        if not values:
            raise ValueError("needs at least one metric (leave it out for all)")
        return values

    @model_validator(mode="after")
    def _inputs_given(self) -> EvaluateSettings:
        if self.ckpt is not None and self.model is not None:
            raise ValueError("ckpt and model both given; pass --ckpt CKPT or --model DIR, not both")
        if self.predicts:
            if self.pred is not None:
                raise ValueError(
                    "pred is given with --ckpt/--model, which predict into OUT/predictions; "
                    "drop --pred (or drop --ckpt/--model to score existing predictions)"
                )
            if self.data is None and self.gt is None:
                raise ValueError(
                    "data: no prepared dataset given; pass --data PREPARED_DIR (from "
                    "`vesselctl prepare`) to predict and score its --split"
                )
            if self.data is not None and self.gt is not None and self.data != self.gt:
                raise ValueError(
                    f"data ({self.data}) and gt ({self.gt}) differ; with --ckpt/--model the "
                    "prepared dataset gives both the images and the masks: pass only --data"
                )
            if self.compare_empty and self.compare is not None:
                raise ValueError(
                    "compare_empty and compare both name the second prediction set; use one"
                )
        else:
            if self.pred is None:
                raise ValueError(
                    "pred: no prediction folder given; pass --pred PRED_DIR (or --ckpt CKPT / "
                    "--model DIR with --data PREPARED_DIR to predict first)"
                )
            if self.gt is None:
                raise ValueError(
                    "gt: no ground truth given; pass --gt MASKS_DIR_OR_PREPARED_DATASET"
                )
            extra = [n for n in ("data", "base") if getattr(self, n) is not None]
            extra += [n for n in ("compare_empty", "overwrite") if getattr(self, n)]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} apply only with --ckpt/--model; drop them or pass "
                    "--ckpt/--model instead of --pred"
                )
        if (
            self.overlays.k
            and self.metrics is not None
            and self.overlays.rank_by not in self.metrics
        ):
            raise ValueError(
                f"overlays.rank_by '{self.overlays.rank_by}' is not among the chosen metrics "
                f"{self.metrics}; add it or set overlays.rank_by"
            )
        return self
