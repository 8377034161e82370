"""Property tests (hypothesis): perfect predictions score perfectly, Dice and IoU are symmetric,
micro equals macro on a single image."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vesselctl.metrics import aggregate, compute_image_metrics
from vesselctl.metrics.image import CONFUSION_METRICS

SHAPES = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def mask_pairs(draw):
    shape = draw(SHAPES)
    pred = draw(arrays(bool, shape))
    gt = draw(arrays(bool, shape))
    return pred, gt


@settings(max_examples=60, deadline=None)
@given(arrays(bool, SHAPES))
def test_perfect_prediction_scores_one(mask: np.ndarray) -> None:
    m = compute_image_metrics(mask, mask)
    for name in (*CONFUSION_METRICS, "cldice", "tprec", "tsens"):
        assert m[name] == 1.0, name
    assert m["betti0_error"] == m["betti1_error"] == 0.0
    assert m["hd95"] == m["assd"] == 0.0


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_symmetric_metrics(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    forward = compute_image_metrics(pred, gt)
    backward = compute_image_metrics(gt, pred)
    for name in ("dice", "iou", "accuracy", "mcc", "hd95", "assd", "cldice"):
        assert forward[name] == backward[name], name
    assert forward["sensitivity"] == backward["precision"]
    for name in (*CONFUSION_METRICS, "cldice", "tprec", "tsens"):
        assert 0.0 <= forward[name] <= 1.0 or (name == "mcc" and -1.0 <= forward[name] <= 1.0)


@settings(max_examples=60, deadline=None)
@given(mask_pairs())
def test_micro_equals_macro_on_one_image(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    row = {"id": "only", **compute_image_metrics(pred, gt, metrics=CONFUSION_METRICS)}
    summary = aggregate([row], CONFUSION_METRICS, resamples=50)
    for name in CONFUSION_METRICS:
        assert summary["micro"][name]["value"] == summary["macro"][name]["mean"], name
