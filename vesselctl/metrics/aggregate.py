"""Aggregation of per-image metrics: macro and micro averages, spread, bootstrap intervals.

- macro: the mean over images of each per-image value (every image weighs the same);
- micro: the confusion-based metrics of the pooled counts over all pixels of all images (large
  images weigh more; micro IoU is Sa2VA's cIoU);
- median, std (sample, ddof=1), min, max and chosen percentiles of the per-image values;
- percentile bootstrap confidence intervals of the macro mean and of each micro value: images are
  resampled with replacement (seeded), the same resamples serving every metric;
- paired differences between two prediction sets on the same images, with a bootstrap interval
  of the mean difference (images resampled in pairs).

Values that are undefined for an image (NaN, e.g. AUC when the ground truth has one class) are
left out of that metric's statistics, and ``n`` says how many images each statistic used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vesselctl.metrics.image import CONFUSION_METRICS, COUNT_KEYS, confusion_metrics


def _bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """A (resamples, n) matrix of image indices drawn with replacement, reproducible by seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r.get(key, np.nan)) for r in rows], dtype=np.float64)


def describe(
    values: np.ndarray,
    percentiles: Sequence[float],
    indices: np.ndarray | None,
    confidence: float,
) -> dict[str, Any]:
    """Mean, spread, percentiles and bootstrap CI of one metric's per-image values (NaN skipped).

    ``indices`` are the shared bootstrap resamples; resamples only see defined values, so for a
    metric with NaNs the resample keeps the defined entries it drew.
    """
    defined = ~np.isnan(values)
    kept = values[defined]
    stats: dict[str, Any] = {"n": int(kept.size)}
    if kept.size == 0:
        keys = ["mean", "std", "median", "min", "max", "ci_low", "ci_high"]
        stats.update({k: None for k in keys})
        stats["percentiles"] = {f"p{p:g}": None for p in percentiles}
        return stats
    stats["mean"] = float(kept.mean())
    stats["std"] = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    stats["median"] = float(np.median(kept))
    stats["min"] = float(kept.min())
    stats["max"] = float(kept.max())
    at = np.percentile(kept, percentiles)
    stats["percentiles"] = {f"p{p:g}": float(v) for p, v in zip(percentiles, at, strict=True)}
    if indices is None or kept.size < 2:
        stats["ci_low"] = stats["ci_high"] = stats["mean"]
        return stats
    if defined.all():
        means = values[indices].mean(axis=1)
    else:
        drawn = values[indices]
        ok = ~np.isnan(drawn)
        counts = ok.sum(axis=1)
        sums = np.where(ok, drawn, 0.0).sum(axis=1)
        means = sums[counts > 0] / counts[counts > 0]
    stats["ci_low"], stats["ci_high"] = _interval(means, confidence)
    return stats


def micro_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Confusion-based metrics of the counts pooled over all images."""
    totals = [int(sum(int(r[k]) for r in rows)) for k in COUNT_KEYS]
    return {m: float(v) for m, v in confusion_metrics(*totals).items()}


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    percentiles: Sequence[float] = (5, 25, 75, 95),
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Macro statistics of every metric and micro values (with CIs) of the confusion metrics.

    ``rows`` are per-image dicts as ``compute_image_metrics`` returns them (counts included).
    ``resamples=0`` skips the bootstrap (the CI then collapses to the point value).
    """
    if not rows:
        raise ValueError("no images to aggregate")
    n = len(rows)
    indices = _bootstrap_indices(n, resamples, seed) if resamples > 0 and n > 1 else None
    macro = {m: describe(_column(rows, m), percentiles, indices, confidence) for m in metrics}
    micro_point = micro_metrics(rows)
    counts = np.array([[int(r[k]) for k in COUNT_KEYS] for r in rows], dtype=np.float64)
    micro: dict[str, Any] = {}
    resampled = None
    if indices is not None:
        pooled = counts[indices].sum(axis=1)
        resampled = confusion_metrics(*(pooled[:, j] for j in range(4)))
    for m in CONFUSION_METRICS:
        if m not in metrics:
            continue
        entry: dict[str, Any] = {"value": micro_point[m]}
        if resampled is not None:
            entry["ci_low"], entry["ci_high"] = _interval(np.asarray(resampled[m]), confidence)
        else:
            entry["ci_low"] = entry["ci_high"] = micro_point[m]
        micro[m] = entry
    pooled_counts = {k: int(v) for k, v in zip(COUNT_KEYS, counts.sum(axis=0), strict=True)}
    return {
        "n_images": n,
        "macro": macro,
        "micro": micro,
        "pooled_counts": pooled_counts,
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": confidence},
    }


def paired_difference(
    rows_a: Sequence[Mapping[str, Any]],
    rows_b: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per metric: mean of (A - B) over images with a paired bootstrap CI, and how often A wins.

    Rows are matched by ``id``; both sets must hold the same images. "A better" respects the
    metric's direction (lower is better for errors and distances).
    """
    from vesselctl.metrics.image import LOWER_IS_BETTER

    by_id_b = {r["id"]: r for r in rows_b}
    ids = [r["id"] for r in rows_a]
    if set(ids) != set(by_id_b):
        only_a = sorted(set(ids) - set(by_id_b))
        only_b = sorted(set(by_id_b) - set(ids))
        raise ValueError(
            "paired comparison needs the same images: "
            f"only in A {only_a[:5]}, only in B {only_b[:5]}"
        )
    ordered_b = [by_id_b[i] for i in ids]
    n = len(ids)
    indices = _bootstrap_indices(n, resamples, seed) if resamples > 0 and n > 1 else None
    out: dict[str, Any] = {}
    for m in metrics:
        diff = _column(rows_a, m) - _column(ordered_b, m)
        stats = describe(diff, (), indices, confidence)
        defined = diff[~np.isnan(diff)]
        better = defined < 0 if m in LOWER_IS_BETTER else defined > 0
        worse = defined > 0 if m in LOWER_IS_BETTER else defined < 0
        out[m] = {
            "mean_difference": stats["mean"],
            "ci_low": stats["ci_low"],
            "ci_high": stats["ci_high"],
            "n": stats["n"],
            "a_better": int(better.sum()),
            "b_better": int(worse.sum()),
            "ties": int(defined.size - better.sum() - worse.sum()),
        }
    return out
