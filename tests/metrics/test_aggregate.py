"""Macro and micro averages, spread, bootstrap intervals and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vesselctl.metrics import aggregate, paired_difference


def _row(case_id: str, tp: int, fp: int, fn: int, tn: int, **metrics: float) -> dict:
    return {"id": case_id, "tp": tp, "fp": fp, "fn": fn, "tn": tn, **metrics}


def test_macro_and_micro_differ_as_defined() -> None:
    rows = [
        _row("a", 1, 0, 0, 9, dice=1.0),  # small vessel, perfect
        _row("b", 10, 10, 10, 70, dice=0.5),  # large vessel, half right
    ]
    out = aggregate(rows, ["dice"], resamples=0)
    assert out["macro"]["dice"]["mean"] == pytest.approx(0.75)
    assert out["micro"]["dice"]["value"] == pytest.approx(2 * 11 / (2 * 11 + 10 + 10))
    assert out["pooled_counts"] == {"tp": 11, "fp": 10, "fn": 10, "tn": 79}
    assert out["macro"]["dice"]["median"] == pytest.approx(0.75)
    assert out["macro"]["dice"]["std"] == pytest.approx(np.std([1.0, 0.5], ddof=1))


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(0)
    rows = [_row(str(i), 5, 1, 1, 20, dice=float(v)) for i, v in enumerate(rng.random(40))]
    first = aggregate(rows, ["dice"], resamples=500, seed=7)
    again = aggregate(rows, ["dice"], resamples=500, seed=7)
    other = aggregate(rows, ["dice"], resamples=500, seed=8)
    stats = first["macro"]["dice"]
    assert stats == again["macro"]["dice"]
    assert stats["ci_low"] < stats["mean"] < stats["ci_high"]
    assert stats["ci_low"] != other["macro"]["dice"]["ci_low"]
    assert stats["percentiles"]["p25"] == pytest.approx(
        np.percentile([r["dice"] for r in rows], 25)
    )
    micro = first["micro"]["dice"]
    assert micro["ci_low"] <= micro["value"] <= micro["ci_high"]


def test_undefined_values_are_left_out_and_counted() -> None:
    rows = [
        _row("a", 1, 0, 0, 9, auc_roc=0.9),
        _row("b", 0, 0, 0, 10, auc_roc=math.nan),
        _row("c", 1, 1, 0, 8, auc_roc=0.7),
    ]
    stats = aggregate(rows, ["auc_roc"], resamples=200)["macro"]["auc_roc"]
    assert stats["n"] == 2
    assert stats["mean"] == pytest.approx(0.8)
    assert 0.7 - 1e-12 <= stats["ci_low"] <= stats["ci_high"] <= 0.9 + 1e-12


def test_paired_difference_respects_direction() -> None:
    a = [_row(str(i), 1, 0, 0, 1, dice=0.8, hd95=2.0) for i in range(5)]
    b = [_row(str(i), 1, 0, 0, 1, dice=0.6, hd95=5.0) for i in reversed(range(5))]
    out = paired_difference(a, b, ["dice", "hd95"], resamples=100)
    assert out["dice"]["mean_difference"] == pytest.approx(0.2)
    assert out["dice"]["a_better"] == 5 and out["dice"]["b_better"] == 0
    assert out["hd95"]["mean_difference"] == pytest.approx(-3.0)
    assert out["hd95"]["a_better"] == 5  # lower distance is better
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, b[:3], ["dice"])


def test_no_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="no images"):
        aggregate([], ["dice"])


def test_array_and_scalar_confusion_metrics_agree_exactly() -> None:
    from vesselctl.metrics import confusion_metrics

    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4, size=(300, 4))  # many zeros: every empty-policy branch
    counts[:5] = [[0, 0, 0, 9], [9, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    vectorised = confusion_metrics(*(counts[:, j] for j in range(4)))
    for i, row in enumerate(counts):
        scalar = confusion_metrics(*(int(v) for v in row))
        for name, value in scalar.items():
            assert isinstance(value, float)
            assert value == vectorised[name][i], (name, row)
