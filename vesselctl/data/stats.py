"""Dataset statistics: what a folder of vessel annotations holds, in numbers.

Per image, ``image_stats`` measures one binary vessel mask (and counts its shapes); ``summarise``
merges any number of those into one JSON-ready summary. The split keeps the per-image work small
and picklable so it can run in worker processes.

Vessel width convention: at every skeleton pixel the exact Euclidean distance ``d`` from the pixel
centre to the nearest background pixel centre is measured; the local width is ``2*d - 1`` pixels.
A straight band of odd width ``w`` measures exactly ``w``; a band of even width ``w`` measures
``w - 1`` (its skeleton sits on one of the two middle rows); a one-pixel line measures 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Widths above this are pooled into the last histogram bin (vessels are rarely this wide; a
# filled blob would otherwise make the histogram as long as the image).
MAX_WIDTH_BIN = 64


@dataclass
class ImageStats:
    """Numbers measured on one image and its mask; everything here is cheap to pickle."""

    height: int
    width: int
    has_mask: bool = False
    mask_pixels: int = 0
    shapes_by_type: dict[str, int] = field(default_factory=dict)
    shapes_by_label: dict[str, int] = field(default_factory=dict)
    # Vessel width samples along the skeleton: histogram of round(width) (index = width in px,
    # the last bin also holds everything wider) plus the exact sum for an unrounded mean.
    width_hist: list[int] = field(default_factory=list)
    width_sum: float = 0.0

    @property
    def vessel_fraction(self) -> float:
        return self.mask_pixels / float(self.height * self.width) if self.height * self.width else 0


def vessel_widths(mask: np.ndarray) -> np.ndarray:
    """Local vessel widths (pixels) at every skeleton pixel of a binary mask, ``2*d - 1``.

    The skeleton comes from scikit-image; the distance transform from OpenCV's exact Euclidean
    mode (faster than scipy's, same values).
    """
    import cv2
    from skimage.morphology import skeletonize

    binary = np.asarray(mask) > 0
    if not binary.any():
        return np.zeros(0, dtype=np.float64)
    # Pad by one background pixel so vessels touching the border are measured as ending there
    # rather than as infinitely wide (OpenCV treats the outside of the image as foreground).
    padded = np.pad(binary, 1).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    skeleton = skeletonize(padded.astype(bool))
    return 2.0 * distance[skeleton].astype(np.float64) - 1.0


def image_stats(
    height: int,
    width: int,
    mask: np.ndarray | None,
    shapes_by_type: Mapping[str, int] | None = None,
    shapes_by_label: Mapping[str, int] | None = None,
    measure_widths: bool = True,
) -> ImageStats:
    """Measure one image: size, shape counts, vessel pixels and (optionally) vessel widths."""
    stats = ImageStats(
        height=int(height),
        width=int(width),
        shapes_by_type=dict(shapes_by_type or {}),
        shapes_by_label=dict(shapes_by_label or {}),
    )
    if mask is None:
        return stats
    binary = np.asarray(mask) > 0
    stats.has_mask = True
    stats.mask_pixels = int(np.count_nonzero(binary))
    if measure_widths and stats.mask_pixels:
        widths = vessel_widths(binary)
        bins = np.minimum(np.rint(widths).astype(np.int64), MAX_WIDTH_BIN)
        stats.width_hist = np.bincount(bins, minlength=0).tolist()
        stats.width_sum = float(widths.sum())
    return stats


def _percentile_from_hist(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of integer samples given as a histogram."""
    total = hist.sum()
    if total == 0:
        return float("nan")
    cumulative = np.cumsum(hist)
    return float(np.searchsorted(cumulative, q / 100.0 * total, side="left"))


def _describe(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "median": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "median": float(np.median(arr)),
        "max": float(arr.max()),
    }


def summarise(items: Iterable[ImageStats]) -> dict[str, Any]:
    """Merge per-image statistics into one JSON-ready summary of the dataset."""
    items = list(items)
    sizes: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    by_label: Counter[str] = Counter()
    fractions: list[float] = []
    width_hist = np.zeros(MAX_WIDTH_BIN + 1, dtype=np.int64)
    width_sum = 0.0
    width_images = 0
    mask_pixels = 0
    mask_area = 0
    for item in items:
        sizes[f"{item.height}x{item.width}"] += 1
        by_type.update(item.shapes_by_type)
        by_label.update(item.shapes_by_label)
        if item.has_mask:
            fractions.append(item.vessel_fraction)
            mask_pixels += item.mask_pixels
            mask_area += item.height * item.width
        if item.width_hist:
            width_hist[: len(item.width_hist)] += np.asarray(item.width_hist, dtype=np.int64)
            width_sum += item.width_sum
            width_images += 1
    samples = int(width_hist.sum())
    last = int(np.flatnonzero(width_hist).max()) + 1 if samples else 0
    return {
        "images": len(items),
        "masks": sum(1 for i in items if i.has_mask),
        "empty_masks": sum(1 for i in items if i.has_mask and i.mask_pixels == 0),
        "shapes": int(sum(by_type.values())),
        "shapes_by_type": dict(sorted(by_type.items())),
        "shapes_by_label": dict(sorted(by_label.items())),
        # "HxW" -> number of images, most common first.
        "image_sizes": dict(sizes.most_common()),
        "vessel_fraction": {
            **_describe(fractions),
            "pooled": mask_pixels / mask_area if mask_area else None,
        },
        "vessel_width_px": {
            "convention": "2*d - 1, d = Euclidean distance from a skeleton pixel to background",
            "images_measured": width_images,
            "skeleton_samples": samples,
            "mean": width_sum / samples if samples else None,
            "p10": _percentile_from_hist(width_hist, 10) if samples else None,
            "median": _percentile_from_hist(width_hist, 50) if samples else None,
            "p90": _percentile_from_hist(width_hist, 90) if samples else None,
            # Index = width rounded to whole pixels; the last bin pools widths >= MAX_WIDTH_BIN.
            "histogram": width_hist[:last].tolist(),
        },
    }
