"""Dataset statistics: vessel widths on hand-computable bands, and the dataset summary."""

from __future__ import annotations

import numpy as np
import pytest

from vesselctl.data.stats import MAX_WIDTH_BIN, image_stats, summarise, vessel_widths


def band(width: int, length: int = 40) -> np.ndarray:
    mask = np.zeros((width + 20, length + 20), dtype=bool)
    mask[10 : 10 + width, 10 : 10 + length] = True
    return mask


@pytest.mark.parametrize("width", [1, 3, 5, 9])
def test_odd_band_widths_are_exact_along_the_skeleton(width: int) -> None:
    widths = vessel_widths(band(width))
    # Away from the two ends the skeleton runs along the middle row: 2*d - 1 == width.
    assert np.median(widths) == width
    assert widths.max() == width


@pytest.mark.parametrize("width", [2, 4, 6])
def test_even_band_widths_read_one_less(width: int) -> None:
    assert np.median(vessel_widths(band(width))) == width - 1


def test_diagonal_line_and_empty_mask() -> None:
    diagonal = np.eye(30, dtype=bool)
    assert np.all(vessel_widths(diagonal) == 1.0)
    assert vessel_widths(np.zeros((5, 5), bool)).size == 0


def test_vessel_touching_the_border_is_measured_as_ending_there() -> None:
    mask = np.zeros((20, 40), bool)
    mask[0:3, :] = True  # a 3-px vessel along the top edge
    assert np.median(vessel_widths(mask)) == 3


def test_image_stats_and_summary() -> None:
    a = image_stats(20, 60, band(3), {"polygon": 2}, {"vessel": 1, "hole": 1})
    b = image_stats(20, 60, np.zeros((20, 60), bool), {"line": 1}, {"vessel": 1})
    c = image_stats(30, 30, None)  # image without a mask
    d = image_stats(20, 60, band(5), measure_widths=False)
    assert a.mask_pixels == 120 and a.vessel_fraction == pytest.approx(120 / 1200)
    summary = summarise([a, b, c, d])
    assert summary["images"] == 4 and summary["masks"] == 3 and summary["empty_masks"] == 1
    assert summary["shapes"] == 3
    assert summary["shapes_by_type"] == {"line": 1, "polygon": 2}
    assert summary["shapes_by_label"] == {"hole": 1, "vessel": 2}
    assert summary["image_sizes"] == {"20x60": 3, "30x30": 1}
    fraction = summary["vessel_fraction"]
    assert fraction["min"] == 0.0 and fraction["max"] == pytest.approx(200 / 1200)
    assert fraction["mean"] == pytest.approx((120 + 0 + 200) / 1200 / 3)
    assert fraction["pooled"] == pytest.approx(320 / 3600)
    widths = summary["vessel_width_px"]
    assert widths["images_measured"] == 1  # only a: b is empty, d skipped widths
    assert widths["median"] == 3 and widths["p90"] == 3
    assert widths["histogram"][3] == widths["skeleton_samples"] - sum(widths["histogram"][:3])
    assert len(widths["histogram"]) <= MAX_WIDTH_BIN + 1


def test_summary_of_nothing() -> None:
    summary = summarise([])
    assert summary["images"] == 0
    assert summary["vessel_fraction"]["mean"] is None
    assert summary["vessel_width_px"]["mean"] is None
    assert summary["vessel_width_px"]["histogram"] == []
