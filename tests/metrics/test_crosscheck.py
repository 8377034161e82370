"""Cross-checks against independent code on random masks: scikit-learn for confusion metrics and
AUCs, scipy/scikit-image for surfaces, distances, skeletons and labels. Agreement to 1e-9."""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from hypothesis.strategies import integers, tuples
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import skeletonize
from sklearn import metrics as skm

from vesselctl.metrics import compute_image_metrics
from vesselctl.metrics.image import (
    auc_scores,
    betti_numbers,
    skeleton,
    surface,
    surface_distances,
)

from .evaluate_data import vessel_mask

TOL = 1e-9
_REFERENCE_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_metrics.py"


@functools.cache
def _reference():
    spec = importlib.util.spec_from_file_location("reference_metrics", _REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_cases(n: int = 8, seed: int = 3):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(20, 50)), int(rng.integers(20, 50))
        gt = vessel_mask(rng, h, w)
        flip = rng.random((h, w)) < 0.08
        pred = (gt ^ flip) if i % 2 else vessel_mask(rng, h, w) | (gt & ~flip)
        prob = np.clip(np.where(pred, 0.7, 0.2) + rng.normal(0, 0.2, (h, w)), 0, 1)
        fov = None
        if i % 3 == 0:
            yy, xx = np.mgrid[:h, :w]
            fov = np.hypot(yy - h / 2, xx - w / 2) < min(h, w) * 0.45
        yield pred, gt, prob, fov


def test_confusion_metrics_and_aucs_match_scikit_learn() -> None:
    for pred, gt, prob, fov in _random_cases():
        m = compute_image_metrics(pred, gt, prob=prob, fov=fov)
        sel = np.ones_like(gt) if fov is None else fov
        g, p, s = gt[sel], pred[sel], prob[sel]
        tn, fp, fn, tp = skm.confusion_matrix(g, p, labels=[False, True]).ravel()
        assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
        expected = {
            "dice": skm.f1_score(g, p),
            "iou": skm.jaccard_score(g, p),
            "accuracy": skm.accuracy_score(g, p),
            "sensitivity": skm.recall_score(g, p),
            "specificity": skm.recall_score(g, p, pos_label=False),
            "precision": skm.precision_score(g, p),
            "mcc": skm.matthews_corrcoef(g, p),
            "balanced_accuracy": skm.balanced_accuracy_score(g, p),
            "auc_roc": skm.roc_auc_score(g, s),
            "auc_pr": skm.average_precision_score(g, s),
        }
        for name, value in expected.items():
            assert abs(m[name] - value) <= TOL, (name, m[name], value)


def test_auc_with_ties_and_levels_matches_scikit_learn() -> None:
    rng = np.random.default_rng(11)
    gt = rng.random((30, 30)) < 0.3
    for levels in (
        rng.integers(0, 256, (30, 30)).astype(np.uint8),
        rng.integers(0, 65536, (30, 30)).astype(np.uint16),
    ):
        scale = 255.0 if levels.dtype == np.uint8 else 65535.0
        roc, pr = auc_scores(levels, gt)
        assert abs(roc - skm.roc_auc_score(gt.ravel(), levels.ravel() / scale)) <= TOL
        assert abs(pr - skm.average_precision_score(gt.ravel(), levels.ravel() / scale)) <= TOL
    coarse = rng.integers(0, 4, (30, 30)) / 3.0  # heavy ties in a float map
    roc, pr = auc_scores(coarse, gt)
    assert abs(roc - skm.roc_auc_score(gt.ravel(), coarse.ravel())) <= TOL
    assert abs(pr - skm.average_precision_score(gt.ravel(), coarse.ravel())) <= TOL


def test_surfaces_distances_skeletons_labels_match_scipy_and_skimage() -> None:
    cross = ndimage.generate_binary_structure(2, 1)
    for pred, gt, _, _ in _random_cases():
        for mask in (pred, gt):
            expected_surface = mask & ~ndimage.binary_erosion(mask, cross, border_value=0)
            assert np.array_equal(surface(mask), expected_surface)
            assert np.array_equal(skeleton(mask), skeletonize(mask))
            assert betti_numbers(mask) == _betti_by_labelling(mask)
        sp = pred & ~ndimage.binary_erosion(pred, cross, border_value=0)
        sg = gt & ~ndimage.binary_erosion(gt, cross, border_value=0)
        pooled = np.concatenate(
            [ndimage.distance_transform_edt(~sg)[sp], ndimage.distance_transform_edt(~sp)[sg]]
        )
        hd95, assd = surface_distances(pred, gt)
        assert abs(hd95 - np.percentile(pooled, 95)) <= TOL
        assert abs(assd - pooled.mean()) <= TOL


def test_every_metric_matches_the_per_metric_reference() -> None:
    reference = _reference()
    cases = list(_random_cases(n=6, seed=5))
    empty = np.zeros_like(cases[0][1])
    cases += [(empty, empty, None, None), (empty, cases[0][1], None, None)]
    for pred, gt, prob, fov in cases:
        _assert_matches(reference, pred, gt, prob, fov)


def _assert_matches(reference, pred, gt, prob, fov) -> None:
    """Every metric of the engine equals the per-metric reference (NaN where it is NaN)."""
    ours = compute_image_metrics(pred, gt, prob=prob, fov=fov)
    theirs = reference.reference_image_metrics(pred, gt, prob=prob, fov=fov)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert abs(ours[key] - value) <= TOL, (key, ours[key], value)


def _betti_by_labelling(mask: np.ndarray) -> tuple[int, int]:
    b0 = int(label(mask, connectivity=2).max())
    background = label(~mask, connectivity=1)
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    return b0, len(set(np.unique(background).tolist()) - {0} - set(edge.tolist()))


@settings(max_examples=150, deadline=None)
@given(arrays(bool, tuples(integers(1, 9), integers(1, 9))))
def test_betti_numbers_match_labelling_on_any_pattern(mask: np.ndarray) -> None:
    assert betti_numbers(mask) == _betti_by_labelling(mask)


@st.composite
def _small_cases(draw):
    shape = draw(tuples(integers(2, 10), integers(2, 10)))
    pred = draw(arrays(bool, shape))
    gt = draw(arrays(bool, shape))
    fov = draw(arrays(bool, shape)) if draw(st.booleans()) else None
    if fov is not None and not fov.any():
        fov = None
    prob = draw(arrays(np.uint8, shape)) if draw(st.booleans()) else None
    return pred, gt, prob, fov


@settings(max_examples=80, deadline=None)
@given(_small_cases())
def test_engine_matches_reference_on_any_small_case(case) -> None:
    """Degenerate inputs included (empty, full, one-pixel masks, FOVs): one policy in both."""
    pred, gt, prob, fov = case
    _assert_matches(_reference(), pred, gt, prob, fov)
