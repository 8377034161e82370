"""Core overlap metrics shared by training validation and the evaluate stage.

Empty-mask policy: when prediction and ground truth are both empty the image is a perfect
negative and scores 1.0; when only one is empty it scores 0.0 (a miss is a failure, never dropped).
"""

from __future__ import annotations

import numpy as np


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice (F1) of two binary masks of the same shape."""
    p, g = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def cldice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice (Shit et al. 2021): harmonic mean of topology precision and sensitivity.

    Tprec = |S(P) & G| / |S(P)|, Tsens = |S(G) & P| / |S(G)|, skeletons by scikit-image.
    """
    from skimage.morphology import skeletonize

    p, g = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    sp, sg = skeletonize(p), skeletonize(g)
    tprec = np.logical_and(sp, g).sum() / max(int(sp.sum()), 1)
    tsens = np.logical_and(sg, p).sum() / max(int(sg.sum()), 1)
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))
