"""Per-image vessel-segmentation metrics computed in one pass over each pair of masks.

Every intermediate is computed once per image and shared by the metrics that need it: the four
confusion counts (one AND and three popcounts), one skeleton per mask (clDice, Tprec, Tsens), one
surface per mask and one nearest-surface search per direction (HD95, ASSD), one labelling and one
Euler-number pass per mask (Betti errors), one histogram of probability levels (AUC-ROC, AUC-PR).

Conventions (the same everywhere in vesselctl; also written into every ``summary.json``):

- Foreground components use 8-connectivity, background components (holes) 4-connectivity, the
  dual pair that keeps Betti numbers consistent on a square grid. Betti-0 = number of 8-connected
  vessel components; Betti-1 = number of holes = 4-connected background components that do not
  touch the image border.
- The surface of a mask is its foreground pixels with at least one 4-neighbour in the background;
  pixels outside the image count as background, so foreground on the image edge is surface.
- Distances are Euclidean, in pixels, between surface pixel centres. HD95 is the 95th percentile
  (linear interpolation) of the pooled distances from each surface to the other; ASSD is their
  mean.
- A field-of-view (FOV) mask restricts every metric: pixels outside it are ignored by the counts
  and AUCs and are cleared from both masks before skeletons, labels and surfaces are computed.
- Empty masks: see ``EMPTY_POLICY``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

CONFUSION_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "mcc",
    "balanced_accuracy",
)
TOPOLOGY_METRICS: tuple[str, ...] = ("cldice", "tprec", "tsens", "betti0_error", "betti1_error")
DISTANCE_METRICS: tuple[str, ...] = ("hd95", "assd")
PROBABILITY_METRICS: tuple[str, ...] = ("auc_roc", "auc_pr")
COUNT_KEYS: tuple[str, ...] = ("tp", "fp", "fn", "tn")
METRIC_NAMES: tuple[str, ...] = (
    CONFUSION_METRICS + TOPOLOGY_METRICS + DISTANCE_METRICS + PROBABILITY_METRICS
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"betti0_error", "betti1_error", "hd95", "assd"})

FOREGROUND_CONNECTIVITY = 8
BACKGROUND_CONNECTIVITY = 4
SURFACE_CONNECTIVITY = 4
HD_PERCENTILE = 95.0
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# One rule for every ratio: when its denominator is zero the quantity it measures is absent from
# both masks, so the image scores 1.0 if prediction and ground truth agree on every pixel (inside
# the FOV) and 0.0 otherwise. A miss is a failure, never dropped.
EMPTY_POLICY: dict[str, str] = {
    "dice, iou": "both masks empty -> 1.0; exactly one empty -> 0.0",
    "sensitivity, specificity, precision, tprec, tsens": (
        "0/0 (nothing to find or nothing predicted) -> 1.0 if prediction equals ground truth, "
        "else 0.0"
    ),
    "mcc": (
        "zero denominator (a row or column of the confusion matrix is empty) -> 1.0 if prediction "
        "equals ground truth, else 0.0 (scikit-learn returns 0.0 here)"
    ),
    "balanced_accuracy": "mean of sensitivity and specificity after their own rule",
    "accuracy": "always defined (an empty field of view is an error)",
    "cldice": "both masks empty -> 1.0; exactly one empty -> 0.0; Tprec + Tsens = 0 -> 0.0",
    "betti0_error, betti1_error": "always defined; an empty mask has Betti numbers 0 and 0",
    "hd95, assd": (
        "both masks empty -> 0.0; exactly one empty -> the image diagonal in pixels (the largest "
        "possible distance), so a miss is penalised, never dropped"
    ),
    "auc_roc, auc_pr": (
        "ground truth inside the FOV has one class only -> undefined (NaN in per_image.csv); "
        "aggregates use the images where it is defined and report how many (n)"
    ),
}


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {mask.shape}")
    if mask.dtype != bool:
        mask = mask != 0
    return np.ascontiguousarray(mask)


def _ratio(num: Any, den: Any, agree: Any) -> Any:
    """``num / den`` with the empty policy: 0/0 -> 1.0 where the masks agree, else 0.0.

    Works on Python numbers and on numpy arrays (for bootstrap resamples of pooled counts).
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    safe = np.where(den > 0, den, 1.0)
    out = np.where(den > 0, num / safe, np.where(agree, 1.0, 0.0))
    return out if out.ndim else float(out)


def confusion_counts(
    pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """TP, FP, FN, TN of two boolean masks, counting only pixels inside ``fov`` when given.

    One AND and three popcounts: FP, FN and TN follow from TP and the marginals.
    """
    if fov is None:
        return _counts_within(pred, gt, int(pred.size))
    return _counts_within(pred & fov, gt & fov, int(np.count_nonzero(fov)))


def _counts_within(pred: np.ndarray, gt: np.ndarray, total: int) -> tuple[int, int, int, int]:
    """TP, FP, FN, TN of masks already cleared outside a region of ``total`` pixels."""
    tp = int(np.count_nonzero(pred & gt))
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    fp = n_pred - tp
    fn = n_gt - tp
    return tp, fp, fn, total - tp - fp - fn


def confusion_metrics(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, Any]:
    """Dice, IoU, accuracy, sensitivity, specificity, precision, MCC and balanced accuracy.

    Accepts scalars (one image, or pooled counts for micro averages) or equal-length arrays
    (bootstrap resamples); applies ``EMPTY_POLICY``. The formulas are written once; scalars use
    plain float arithmetic (numpy 0-d arrays cost more than the arithmetic itself).
    """
    ratio: Callable[[Any, Any], Any]
    if all(np.ndim(x) == 0 for x in (tp, fp, fn, tn)):
        tp, fp, fn, tn = float(tp), float(fp), float(fn), float(tn)
        agree_scalar = fp == 0 and fn == 0

        def ratio(num: Any, den: Any) -> Any:
            return num / den if den > 0 else (1.0 if agree_scalar else 0.0)

        sqrt: Callable[[Any], Any] = math.sqrt
    else:
        tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
        agree = (fp == 0) & (fn == 0)

        def ratio(num: Any, den: Any) -> Any:
            return _ratio(num, den, agree)

        sqrt = np.sqrt
    sensitivity = ratio(tp, tp + fn)
    specificity = ratio(tn, tn + fp)
    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": ratio(tp, tp + fp),
        "mcc": ratio(tp * tn - fp * fn, sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
        "balanced_accuracy": (sensitivity + specificity) / 2,
    }


def skeleton(mask: np.ndarray) -> np.ndarray:
    """The scikit-image skeleton (Zhang's thinning) of a boolean mask; empty for an empty mask."""
    from skimage.morphology import skeletonize

    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    return skeletonize(mask)


def cldice_parts(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """(Tprec, Tsens, clDice) of Shit et al. 2021, with ``EMPTY_POLICY``.

    Tprec = |S(P) & G| / |S(P)| (how much of the predicted centreline lies in true vessels),
    Tsens = |S(G) & P| / |S(G)| (how much of the true centreline the prediction covers), clDice
    their harmonic mean.
    """
    skel_pred = skeleton(pred)
    skel_gt = skeleton(gt)
    agree = bool(np.array_equal(pred, gt))
    tprec = _ratio(np.count_nonzero(skel_pred & gt), np.count_nonzero(skel_pred), agree)
    tsens = _ratio(np.count_nonzero(skel_gt & pred), np.count_nonzero(skel_gt), agree)
    if not pred.any() and not gt.any():
        return tprec, tsens, 1.0
    if not pred.any() or not gt.any() or tprec + tsens == 0:
        return tprec, tsens, 0.0
    return tprec, tsens, 2.0 * tprec * tsens / (tprec + tsens)


def euler_number(mask: np.ndarray) -> int:
    """Euler characteristic (components - holes) of a mask, 8-connected foreground.

    Gray's bit-quad count over every 2x2 window of the zero-padded mask:
    (Q1 - Q3 - 2 * QD) / 4 with Q1/Q3 the windows holding one/three foreground pixels and QD the
    two diagonal pairs. One vectorised pass, no labelling.
    """
    padded = np.pad(mask, 1).view(np.uint8)
    code = (
        padded[:-1, :-1] | (padded[:-1, 1:] << 1) | (padded[1:, :-1] << 2) | (padded[1:, 1:] << 3)
    )
    counts = np.bincount(code.ravel(), minlength=16)
    q1 = counts[1] + counts[2] + counts[4] + counts[8]
    q3 = counts[7] + counts[11] + counts[13] + counts[14]
    qd = counts[6] + counts[9]
    return int(q1 - q3 - 2 * qd) // 4


def betti_numbers(mask: np.ndarray) -> tuple[int, int]:
    """(Betti-0, Betti-1) of a 2-D mask: 8-connected components and 4-connected holes.

    Betti-0 comes from one labelling (scipy); Betti-1 = Betti-0 - Euler number, which for 8/4
    connectivity equals the number of background regions not touching the border (the tests
    check both against scikit-image's ``label``). Pure numpy/scipy, no OpenCV, so forked worker
    processes never touch a thread pool inherited from the parent.
    """
    from scipy import ndimage

    mask = np.ascontiguousarray(mask, dtype=bool)
    if not mask.any():
        return 0, 0
    _, components = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return int(components), int(components) - euler_number(mask)


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour in the background (outside the image = background)."""
    interior = np.zeros_like(mask, dtype=bool)
    # A pixel is interior when it and its four neighbours are foreground; edge pixels never are.
    interior[1:-1, 1:-1] = (
        mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    )
    return mask & ~interior


def _coordinates(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the true pixels, from one flatnonzero and a divmod (no argwhere)."""
    flat = np.flatnonzero(mask)
    return np.stack(np.divmod(flat, mask.shape[1]), axis=1)


def surface_distances(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(HD95, ASSD) between the surfaces of two masks, with ``EMPTY_POLICY``.

    Nearest-surface distances come from a k-d tree over the (few) surface pixels rather than a
    distance transform over the whole image: exact Euclidean distances, work in proportion to the
    surface of thin vessels rather than the image, identical to
    ``scipy.ndimage.distance_transform_edt`` (the tests check this).
    """
    from scipy.spatial import cKDTree

    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 0.0, 0.0
    if not has_pred or not has_gt:
        diagonal = float(np.hypot(*pred.shape))
        return diagonal, diagonal
    points_pred = _coordinates(surface(pred))
    points_gt = _coordinates(surface(gt))
    # Unbalanced, non-compact trees build faster; queries stay exact nearest neighbours.
    pred_to_gt, _ = cKDTree(points_gt, balanced_tree=False, compact_nodes=False).query(points_pred)
    gt_to_pred, _ = cKDTree(points_pred, balanced_tree=False, compact_nodes=False).query(points_gt)
    # Sorted so the sum does not depend on which mask came first: ASSD is exactly symmetric.
    pooled = np.sort(np.concatenate([pred_to_gt, gt_to_pred]))
    return float(np.percentile(pooled, HD_PERCENTILE)), float(pooled.mean())


def _level_histograms(
    prob: np.ndarray, gt: np.ndarray, fov: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of positive and negative pixels per distinct score, in increasing score order, and
    the probability each level stands for.

    uint8/uint16 maps (PNG probability levels) are histogrammed directly; float maps are ranked
    once with ``np.unique``. Ties share a level, as scikit-learn's curves treat them.
    """
    if fov is not None:
        prob = prob[fov]
        gt = gt[fov]
    else:
        prob = prob.ravel()
        gt = gt.ravel()
    if prob.dtype in (np.uint8, np.uint16):
        levels = prob.astype(np.intp, copy=False)
        top = 255 if prob.dtype == np.uint8 else 65535
        scores = np.arange(top + 1, dtype=np.float64) / top  # as threshold_probability reads them
    else:
        values, levels = np.unique(prob, return_inverse=True)
        levels = levels.ravel()
        scores = values.astype(np.float64, copy=False) if values.size else np.zeros(1)
    n_levels = scores.size
    # One bincount over (level, label) pairs instead of two over boolean-indexed copies.
    pairs = np.bincount(levels * 2 + gt, minlength=2 * n_levels).reshape(n_levels, 2)
    return pairs[:, 1], pairs[:, 0], scores


def auc_scores(
    prob: np.ndarray, gt: np.ndarray, fov: np.ndarray | None = None
) -> tuple[float, float]:
    """(AUC-ROC, AUC-PR) of a probability map against a mask, as scikit-learn computes them.

    AUC-ROC is the trapezoidal area under the ROC curve (``roc_auc_score``); AUC-PR is average
    precision, the step-wise sum of precision times recall gain (``average_precision_score``).
    Both come from one histogram over score levels swept from high to low. NaN when the ground
    truth has a single class.
    """
    positives, negatives, _ = _level_histograms(prob, gt, fov)
    tps = np.cumsum(positives[::-1]).astype(np.float64)
    fps = np.cumsum(negatives[::-1]).astype(np.float64)
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    tpr = np.concatenate([[0.0], tps / n_pos])
    fpr = np.concatenate([[0.0], fps / n_neg])
    auc_roc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted > 0)
    auc_pr = float(np.sum(np.diff(tpr) * precision))
    return auc_roc, auc_pr


def threshold_probability(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Binary mask ``prob >= threshold``; uint8/uint16 maps are levels (value/255, value/65535).

    For level maps a lookup table gives exactly the mask the float comparison would give.
    """
    if prob.dtype == np.uint8 or prob.dtype == np.uint16:
        top = 255 if prob.dtype == np.uint8 else 65535
        table = (np.arange(top + 1, dtype=np.float64) / top) >= threshold
        return table[prob]
    return prob >= threshold


def threshold_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: Sequence[float],
    fov: np.ndarray | None = None,
) -> list[tuple[int, int, int, int]]:
    """``confusion_counts(threshold_probability(prob, t), gt, fov)`` for every threshold ``t``.

    Read off one histogram of score levels (the one the AUCs use) instead of thresholding and
    counting the whole image once per threshold; same rule, same counts.
    """
    positives, negatives, scores = _level_histograms(prob, gt, fov)
    n_pos, n_neg = int(positives.sum()), int(negatives.sum())
    counts = []
    for threshold in thresholds:
        chosen = scores >= threshold
        tp, fp = int(positives[chosen].sum()), int(negatives[chosen].sum())
        counts.append((tp, fp, n_pos - tp, n_neg - fp))
    return counts


def resolve_metric_names(metrics: Collection[str] | None, has_prob: bool) -> tuple[str, ...]:
    """The metrics to compute, in canonical order; None means every metric the inputs allow."""
    if metrics is None:
        return tuple(m for m in METRIC_NAMES if has_prob or m not in PROBABILITY_METRICS)
    unknown = sorted(set(metrics) - set(METRIC_NAMES) - set(COUNT_KEYS))
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}"
        )
    wanted = set(metrics)
    if not has_prob and wanted & set(PROBABILITY_METRICS):
        raise ValueError("auc_roc and auc_pr need a probability map (prob=...), got none")
    return tuple(m for m in METRIC_NAMES if m in wanted)


def compute_image_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    prob: np.ndarray | None = None,
    fov: np.ndarray | None = None,
    metrics: Collection[str] | None = None,
) -> dict[str, float]:
    """Every requested metric of one image, keyed by name, plus the counts tp, fp, fn, tn.

    ``pred`` and ``gt`` are 2-D masks of one shape (non-zero = vessel); ``prob`` is the
    probability map ``pred`` was thresholded from (floats in [0, 1], or uint8/uint16 levels) and
    enables ``auc_roc``/``auc_pr``; ``fov`` restricts every metric to its pixels. ``metrics``
    picks names from ``METRIC_NAMES`` (None: all that the inputs allow). Each intermediate is
    computed once and only when a requested metric needs it.
    """
    pred = _check_mask(pred, "pred")
    gt = _check_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    if fov is not None:
        fov = _check_mask(fov, "fov")
        if fov.shape != gt.shape:
            raise ValueError(f"fov {fov.shape} and gt {gt.shape} differ in shape")
        if not fov.any():
            raise ValueError("the field-of-view mask is empty; nothing can be measured")
        pred = pred & fov
        gt = gt & fov
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != gt.shape:
            raise ValueError(f"prob {prob.shape} and gt {gt.shape} differ in shape")
        if prob.dtype.kind == "f" and not (
            np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
        ):
            raise ValueError("prob must hold finite probabilities in [0, 1]")
    names = resolve_metric_names(metrics, prob is not None)
    wanted = set(names)

    # pred and gt are already cleared outside the FOV: only its size is still needed.
    total = int(pred.size) if fov is None else int(np.count_nonzero(fov))
    tp, fp, fn, tn = _counts_within(pred, gt, total)
    out: dict[str, float] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    if wanted & set(CONFUSION_METRICS):
        derived = confusion_metrics(tp, fp, fn, tn)
        out.update({m: derived[m] for m in CONFUSION_METRICS if m in wanted})
    if wanted & {"cldice", "tprec", "tsens"}:
        tprec, tsens, cldice = cldice_parts(pred, gt)
        values = {"tprec": tprec, "tsens": tsens, "cldice": cldice}
        out.update({m: values[m] for m in ("cldice", "tprec", "tsens") if m in wanted})
    if wanted & {"betti0_error", "betti1_error"}:
        b0_pred, b1_pred = betti_numbers(pred)
        b0_gt, b1_gt = betti_numbers(gt)
        if "betti0_error" in wanted:
            out["betti0_error"] = float(abs(b0_pred - b0_gt))
        if "betti1_error" in wanted:
            out["betti1_error"] = float(abs(b1_pred - b1_gt))
    if wanted & set(DISTANCE_METRICS):
        hd95, assd = surface_distances(pred, gt)
        if "hd95" in wanted:
            out["hd95"] = hd95
        if "assd" in wanted:
            out["assd"] = assd
    if prob is not None and wanted & set(PROBABILITY_METRICS):
        auc_roc, auc_pr = auc_scores(prob, gt, fov)
        if "auc_roc" in wanted:
            out["auc_roc"] = auc_roc
        if "auc_pr" in wanted:
            out["auc_pr"] = auc_pr
    return {k: out[k] for k in (*COUNT_KEYS, *names) if k in out}
