"""A straightforward reference for every vesselctl metric: one separate pass per metric.

Each metric is computed on its own with the library function people would reach for first
(scikit-learn for confusion metrics and AUCs, scikit-image for skeletons and labels, scipy for
erosion and distance transforms), recomputing whatever it needs. It applies the same documented
conventions and empty-mask policy as ``vesselctl.metrics.image`` so the two must agree to 1e-9;
``benchmarks/evaluate.py`` times both and the tests cross-check them.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import skeletonize
from sklearn import metrics as skm


def _flat(pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None) -> tuple[np.ndarray, ...]:
    if fov is None:
        return pred.ravel(), gt.ravel()
    return pred[fov], gt[fov]


def _agree(pred: np.ndarray, gt: np.ndarray, fov: np.ndarray | None) -> bool:
    p, g = _flat(pred, gt, fov)
    return bool(np.array_equal(p, g))


def _sk(func, pred, gt, fov, **kwargs) -> float:
    """A scikit-learn score with the empty policy's 1.0 when the masks agree and 0/0 arises."""
    p, g = _flat(pred, gt, fov)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = func(g, p, zero_division=np.nan, **kwargs)
    if np.isnan(value):
        return 1.0 if _agree(pred, gt, fov) else 0.0
    return float(value)


def confusion(pred, gt, fov=None) -> dict[str, int]:
    p, g = _flat(pred, gt, fov)
    tn, fp, fn, tp = skm.confusion_matrix(g, p, labels=[False, True]).ravel()
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn)}


def dice(pred, gt, fov=None) -> float:
    return _sk(skm.f1_score, pred, gt, fov)


def iou(pred, gt, fov=None) -> float:
    p, g = _flat(pred, gt, fov)
    if not p.any() and not g.any():  # jaccard_score has no NaN zero_division
        return 1.0
    return float(skm.jaccard_score(g, p))


def accuracy(pred, gt, fov=None) -> float:
    p, g = _flat(pred, gt, fov)
    return float(skm.accuracy_score(g, p))


def sensitivity(pred, gt, fov=None) -> float:
    return _sk(skm.recall_score, pred, gt, fov)


def specificity(pred, gt, fov=None) -> float:
    return _sk(skm.recall_score, pred, gt, fov, pos_label=False)


def precision(pred, gt, fov=None) -> float:
    return _sk(skm.precision_score, pred, gt, fov)


def mcc(pred, gt, fov=None) -> float:
    p, g = _flat(pred, gt, fov)
    # scikit-learn returns 0.0 for a zero denominator; the policy wants 1.0 when masks agree.
    degenerate = min(p.sum(), (~p).sum(), g.sum(), (~g).sum()) == 0
    if degenerate:
        if _agree(pred, gt, fov):
            return 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(skm.matthews_corrcoef(g, p))
    return float(skm.matthews_corrcoef(g, p))


def balanced_accuracy(pred, gt, fov=None) -> float:
    p, g = _flat(pred, gt, fov)
    if g.all() or not g.any():  # one class: scikit-learn's value is not the policy's
        return (sensitivity(pred, gt, fov) + specificity(pred, gt, fov)) / 2
    return float(skm.balanced_accuracy_score(g, p))


def _masked(mask, fov):
    return mask if fov is None else mask & fov


def _tprec_tsens(pred, gt, fov):
    p, g = _masked(pred, fov), _masked(gt, fov)
    sp, sg = skeletonize(p), skeletonize(g)
    agree = bool(np.array_equal(p, g))
    tprec = (sp & g).sum() / sp.sum() if sp.sum() else (1.0 if agree else 0.0)
    tsens = (sg & p).sum() / sg.sum() if sg.sum() else (1.0 if agree else 0.0)
    return float(tprec), float(tsens)


def tprec(pred, gt, fov=None) -> float:
    return _tprec_tsens(pred, gt, fov)[0]


def tsens(pred, gt, fov=None) -> float:
    return _tprec_tsens(pred, gt, fov)[1]


def cldice(pred, gt, fov=None) -> float:
    p, g = _masked(pred, fov), _masked(gt, fov)
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    tp_, ts_ = _tprec_tsens(pred, gt, fov)
    return 0.0 if tp_ + ts_ == 0 else 2 * tp_ * ts_ / (tp_ + ts_)


def _betti(mask):
    b0 = int(label(mask, connectivity=2).max())
    background = label(~mask, connectivity=1)
    border = np.unique(
        np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    )
    labels = set(np.unique(background).tolist()) - {0} - set(border.tolist())
    return b0, len(labels)


def betti0_error(pred, gt, fov=None) -> float:
    return float(abs(_betti(_masked(pred, fov))[0] - _betti(_masked(gt, fov))[0]))


def betti1_error(pred, gt, fov=None) -> float:
    return float(abs(_betti(_masked(pred, fov))[1] - _betti(_masked(gt, fov))[1]))


def _surface(mask):
    cross = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _distances(pred, gt, fov):
    p, g = _masked(pred, fov), _masked(gt, fov)
    if not p.any() and not g.any():
        return None, 0.0
    if not p.any() or not g.any():
        return None, float(np.hypot(*p.shape))
    sp, sg = _surface(p), _surface(g)
    to_gt = ndimage.distance_transform_edt(~sg)[sp]
    to_pred = ndimage.distance_transform_edt(~sp)[sg]
    return np.concatenate([to_gt, to_pred]), None


def hd95(pred, gt, fov=None) -> float:
    pooled, fixed = _distances(pred, gt, fov)
    return fixed if pooled is None else float(np.percentile(pooled, 95))


def assd(pred, gt, fov=None) -> float:
    pooled, fixed = _distances(pred, gt, fov)
    return fixed if pooled is None else float(pooled.mean())


def _prob_flat(prob, gt, fov):
    prob = prob / 255.0 if prob.dtype == np.uint8 else prob
    prob = prob / 65535.0 if prob.dtype == np.uint16 else prob
    return (prob.ravel(), gt.ravel()) if fov is None else (prob[fov], gt[fov])


def auc_roc(prob, gt, fov=None) -> float:
    s, g = _prob_flat(prob, gt, fov)
    if g.all() or not g.any():
        return float("nan")
    return float(skm.roc_auc_score(g, s))


def auc_pr(prob, gt, fov=None) -> float:
    s, g = _prob_flat(prob, gt, fov)
    if g.all() or not g.any():
        return float("nan")
    return float(skm.average_precision_score(g, s))


MASK_METRICS = {
    "dice": dice,
    "iou": iou,
    "accuracy": accuracy,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "precision": precision,
    "mcc": mcc,
    "balanced_accuracy": balanced_accuracy,
    "cldice": cldice,
    "tprec": tprec,
    "tsens": tsens,
    "betti0_error": betti0_error,
    "betti1_error": betti1_error,
    "hd95": hd95,
    "assd": assd,
}
PROB_METRICS = {"auc_roc": auc_roc, "auc_pr": auc_pr}


def reference_image_metrics(pred, gt, prob=None, fov=None, metrics=None) -> dict[str, float]:
    """The same keys as ``compute_image_metrics``, each metric from its own separate pass."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    fov = None if fov is None else fov.astype(bool)
    out: dict[str, float] = dict(confusion(pred, gt, fov))
    for name, func in MASK_METRICS.items():
        if metrics is None or name in metrics:
            out[name] = func(pred, gt, fov)
    if prob is not None:
        for name, func in PROB_METRICS.items():
            if metrics is None or name in metrics:
                out[name] = func(prob, gt, fov)
    return out
