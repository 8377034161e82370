"""Dice and clDice of one pair of masks, the two metrics training validation reports.

Thin wrappers over ``vesselctl.metrics.image`` so training and evaluation share one definition
and one empty-mask policy: both masks empty -> 1.0, exactly one empty -> 0.0 (a miss is a
failure, never dropped).
"""

from __future__ import annotations

import numpy as np

from vesselctl.metrics.image import cldice_parts, compute_image_metrics


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    for name, mask in (("pred", pred), ("gt", gt)):
        if mask.ndim != 2:
            raise ValueError(f"{name} must be a 2-D mask, got shape {mask.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice (F1) of two binary masks of the same shape."""
    pred, gt = _pair(pred, gt)
    return float(compute_image_metrics(pred, gt, metrics=("dice",))["dice"])


def cldice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice (Shit et al. 2021): harmonic mean of topology precision and sensitivity.

    Tprec = |S(P) & G| / |S(P)|, Tsens = |S(G) & P| / |S(G)|, skeletons by scikit-image.
    """
    pred, gt = _pair(pred, gt)
    return float(cldice_parts(np.ascontiguousarray(pred), np.ascontiguousarray(gt))[2])
