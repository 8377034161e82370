"""Every per-image metric on small hand-computed cases, the empty-mask policy and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vesselctl.metrics import METRIC_NAMES, compute_image_metrics
from vesselctl.metrics.image import (
    auc_scores,
    betti_numbers,
    confusion_counts,
    surface,
    surface_distances,
    threshold_counts,
    threshold_probability,
)


def _pair_4x4() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0, :3] = True
    gt[0, 1:] = True
    return pred, gt  # TP 2, FP 1, FN 1, TN 12


def test_confusion_metrics_hand_computed() -> None:
    pred, gt = _pair_4x4()
    m = compute_image_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 12)
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["accuracy"] == pytest.approx(14 / 16)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(12 / 13)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx((2 * 12 - 1 * 1) / math.sqrt(3 * 3 * 13 * 13))
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 12 / 13) / 2)


def test_fov_restricts_counts() -> None:
    pred, gt = _pair_4x4()
    fov = np.zeros((4, 4), bool)
    fov[0, 1:3] = True  # only the two shared pixels
    assert confusion_counts(pred, gt, fov) == (2, 0, 0, 0)
    m = compute_image_metrics(pred, gt, fov=fov)
    assert m["dice"] == 1.0 and m["hd95"] == 0.0


def test_cldice_names_tprec_and_tsens() -> None:
    gt = np.zeros((9, 20), bool)
    gt[4, 2:18] = True
    pred = np.zeros_like(gt)
    pred[4, 2:10] = True
    m = compute_image_metrics(pred, gt, metrics=["cldice", "tprec", "tsens"])
    assert m["tprec"] == pytest.approx(1.0)
    assert m["tsens"] == pytest.approx(0.5)
    assert m["cldice"] == pytest.approx(2 / 3)


def test_betti_ring_and_declared_connectivity() -> None:
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert betti_numbers(ring) == (1, 1)
    # A hole that touches the outside only diagonally is still a hole (4-connected background),
    # and two pixels that touch diagonally are one component (8-connected foreground).
    diag = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 0, 1, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    assert betti_numbers(diag) == (1, 1)
    # A U open to the image border has no hole; two blobs are two components.
    u_shape = np.zeros((5, 5), bool)
    u_shape[:, 0] = u_shape[:, 2] = u_shape[4, :3] = True
    assert betti_numbers(u_shape) == (1, 0)
    blobs = np.zeros((5, 5), bool)
    blobs[0, 0] = blobs[4, 4] = True
    assert betti_numbers(blobs) == (2, 0)
    m = compute_image_metrics(blobs, ring[:5, :5])
    assert m["betti0_error"] == abs(2 - betti_numbers(ring[:5, :5])[0])


def test_surface_is_four_connected_boundary_with_image_edge() -> None:
    square = np.zeros((5, 5), bool)
    square[1:4, 1:4] = True
    expected = square.copy()
    expected[2, 2] = False
    assert np.array_equal(surface(square), expected)
    full = np.ones((3, 3), bool)  # pixels on the image edge are surface
    assert surface(full).sum() == 8


def test_hd95_and_assd_hand_computed() -> None:
    gt = np.zeros((5, 9), bool)
    gt[2, 2] = True
    pred = gt.copy()
    pred[2, 6] = True
    # pred->gt distances [0, 4], gt->pred [0]; pooled sorted [0, 0, 4]: p95 = 0.9 * 4
    hd95, assd = surface_distances(pred, gt)
    assert hd95 == pytest.approx(3.6)
    assert assd == pytest.approx(4 / 3)


def test_auc_hand_computed() -> None:
    prob = np.array([[0.9, 0.8], [0.3, 0.1]])
    gt = np.array([[1, 0], [1, 0]], bool)
    auc_roc, auc_pr = auc_scores(prob, gt)
    assert auc_roc == pytest.approx(0.75)
    assert auc_pr == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    levels = np.rint(prob * 255).astype(np.uint8)  # the histogram path gives the same
    assert auc_scores(levels, gt) == pytest.approx((auc_roc, auc_pr))


def test_threshold_rule_is_greater_or_equal_for_floats_and_levels() -> None:
    prob = np.array([[0.49, 0.5, 0.51]])
    assert threshold_probability(prob, 0.5).tolist() == [[False, True, True]]
    levels = np.array([[127, 128, 255]], np.uint8)  # 127/255 < 0.5 <= 128/255
    assert threshold_probability(levels, 0.5).tolist() == [[False, True, True]]
    levels16 = np.array([[32767, 32768]], np.uint16)
    assert threshold_probability(levels16, 0.5).tolist() == [[False, True]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float64])
@pytest.mark.parametrize("with_fov", [False, True])
def test_threshold_counts_equal_thresholding_each_time(dtype, with_fov: bool) -> None:
    rng = np.random.default_rng(3)
    if dtype == np.float64:
        prob = np.round(rng.random((30, 40)) * 20) / 20  # ties on the candidate thresholds
    else:
        prob = rng.integers(0, np.iinfo(dtype).max + 1, (30, 40)).astype(dtype)
    gt = rng.random((30, 40)) < 0.3
    fov = rng.random((30, 40)) < 0.7 if with_fov else None
    thresholds = [round(0.05 * i, 2) for i in range(1, 20)] + [127 / 255, 128 / 255, 1.0]
    expected = [confusion_counts(threshold_probability(prob, t), gt, fov) for t in thresholds]
    assert threshold_counts(prob, gt, thresholds, fov) == expected


def test_empty_policy_both_empty_is_perfect() -> None:
    empty = np.zeros((6, 7), bool)
    m = compute_image_metrics(empty, empty)
    for name in ("dice", "iou", "sensitivity", "specificity", "precision", "mcc", "cldice"):
        assert m[name] == 1.0, name
    assert m["tprec"] == m["tsens"] == 1.0
    assert m["hd95"] == m["assd"] == 0.0
    assert m["betti0_error"] == m["betti1_error"] == 0.0


def test_empty_policy_one_empty_is_a_failure() -> None:
    empty = np.zeros((6, 8), bool)
    some = empty.copy()
    some[2, 2:5] = True
    diagonal = math.hypot(6, 8)
    for pred, gt in ((empty, some), (some, empty)):
        m = compute_image_metrics(pred, gt)
        for name in ("dice", "iou", "sensitivity", "precision", "mcc", "cldice"):
            assert m[name] == 0.0, name
        assert m["hd95"] == m["assd"] == pytest.approx(diagonal)
    m = compute_image_metrics(some, empty)
    assert m["specificity"] == pytest.approx(45 / 48)


def test_empty_policy_full_ground_truth_specificity() -> None:
    full = np.ones((3, 3), bool)
    assert compute_image_metrics(full, full)["specificity"] == 1.0
    almost = full.copy()
    almost[0, 0] = False
    assert compute_image_metrics(almost, full)["specificity"] == 0.0


def test_auc_undefined_for_one_class_ground_truth() -> None:
    gt = np.zeros((4, 4), bool)
    prob = np.linspace(0, 1, 16).reshape(4, 4)
    m = compute_image_metrics(prob >= 0.5, gt, prob=prob)
    assert math.isnan(m["auc_roc"]) and math.isnan(m["auc_pr"])


def test_metric_selection_and_order() -> None:
    pred, gt = _pair_4x4()
    m = compute_image_metrics(pred, gt, metrics=["hd95", "dice"])
    assert list(m) == ["tp", "fp", "fn", "tn", "dice", "hd95"]
    everything = compute_image_metrics(pred, gt, prob=pred.astype(float))
    assert [k for k in everything if k in METRIC_NAMES] == list(METRIC_NAMES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pred": np.zeros((2, 2)), "gt": np.zeros((3, 3))}, "differ in shape"),
        ({"pred": np.zeros((2, 2, 2)), "gt": np.zeros((2, 2, 2))}, "2-D mask"),
        ({"pred": np.zeros((2, 2)), "gt": np.zeros((2, 2)), "fov": np.zeros((2, 2))}, "empty"),
        (
            {"pred": np.zeros((2, 2)), "gt": np.zeros((2, 2)), "prob": np.full((2, 2), 1.5)},
            "[0, 1]",
        ),
        ({"pred": np.zeros((2, 2)), "gt": np.zeros((2, 2)), "metrics": ["dice", "nope"]}, "nope"),
        ({"pred": np.zeros((2, 2)), "gt": np.zeros((2, 2)), "metrics": ["auc_roc"]}, "probability"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compute_image_metrics(**kwargs)
