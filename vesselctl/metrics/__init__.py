"""Segmentation metrics: pure numpy/scipy/scikit-image functions plus aggregation."""

from vesselctl.metrics.core import cldice_score, dice_score

__all__ = ["cldice_score", "dice_score"]
