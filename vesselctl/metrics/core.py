"""Dice and clDice of one pair of masks, the two metrics training validation reports.

Thin wrappers over ``compute_image_metrics`` (which checks the masks), so training and evaluation
share one definition and one empty-mask policy: both masks empty -> 1.0, exactly one empty -> 0.0
(a miss is a failure, never dropped).
"""

from __future__ import annotations

import numpy as np

from vesselctl.metrics.image import compute_image_metrics


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice (F1) of two binary masks of the same shape."""
    return float(compute_image_metrics(pred, gt, metrics=("dice",))["dice"])


def cldice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice (Shit et al. 2021): harmonic mean of topology precision and sensitivity.

    Tprec = |S(P) & G| / |S(P)|, Tsens = |S(G) & P| / |S(G)|, skeletons by scikit-image.
    """
    return float(compute_image_metrics(pred, gt, metrics=("cldice",))["cldice"])
