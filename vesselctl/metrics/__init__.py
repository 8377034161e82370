"""Segmentation metrics: pure numpy/scipy/scikit-image functions plus aggregation.

``compute_image_metrics`` scores one image (train and predict call it); ``evaluate_folders`` /
``evaluate_files`` / ``evaluate_arrays`` score many in parallel; ``aggregate`` and
``paired_difference`` summarise them. Conventions and the empty-mask policy are in
``vesselctl.metrics.image``.
"""

from vesselctl.metrics.aggregate import aggregate, micro_metrics, paired_difference
from vesselctl.metrics.core import cldice_score, dice_score
from vesselctl.metrics.evaluation import (
    CaseFiles,
    MatchedCases,
    SweepResult,
    evaluate_arrays,
    evaluate_files,
    evaluate_folders,
    match_cases,
    sweep_thresholds,
)
from vesselctl.metrics.image import (
    EMPTY_POLICY,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    compute_image_metrics,
    confusion_metrics,
)

__all__ = [
    "EMPTY_POLICY",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "CaseFiles",
    "MatchedCases",
    "SweepResult",
    "aggregate",
    "cldice_score",
    "compute_image_metrics",
    "confusion_metrics",
    "dice_score",
    "evaluate_arrays",
    "evaluate_files",
    "evaluate_folders",
    "match_cases",
    "micro_metrics",
    "paired_difference",
    "sweep_thresholds",
]
