"""Rasterising every LabelMe shape type against masks computed by hand from the pixel rule.

Rule under test: pixel (row, col) is inside a shape when its centre (col + 0.5, row + 0.5) is.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from vesselctl.data.images import encode_png
from vesselctl.data.labelme import LabelmeShape
from vesselctl.data.masks import (
    LabelRoles,
    RasterOptions,
    double_mask,
    fill_rings,
    keyhole_polygon,
    mask_to_coco_rle,
    mask_to_keyhole_polygons,
    mask_to_regions,
    rasterize_shape,
    rasterize_shapes,
)
from vesselctl.errors import DatasetError

ROLES = LabelRoles(frozenset({"vessel"}), frozenset({"hole"}), frozenset({"note"}))


def shape(kind: str, points, label: str = "vessel", index: int = 0, mask=None) -> LabelmeShape:
    return LabelmeShape(index, label, kind, [list(p) for p in points], mask_png_base64=mask)


def centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:height, 0:width]
    return cols + 0.5, rows + 0.5


def test_rectangle_covers_pixels_whose_centres_lie_inside():
    got = rasterize_shape(shape("rectangle", [(1, 1), (4, 3)]), 6, 6)
    expected = np.zeros((6, 6), bool)
    expected[1:3, 1:4] = True
    assert (got == expected).all()
    # Corners given the other way round give the same pixels.
    assert (rasterize_shape(shape("rectangle", [(4, 3), (1, 1)]), 6, 6) == expected).all()


def test_triangle_half_open_on_its_far_edge():
    # Centres on the hypotenuse x + y = 4 (col + row = 3) are on the right edge: outside.
    got = rasterize_shape(shape("polygon", [(0, 0), (4, 0), (0, 4)]), 5, 5)
    rows, cols = np.mgrid[0:5, 0:5]
    assert (got == (rows + cols <= 2)).all()
    assert got.sum() == 6


def test_oriented_rectangle_equals_rectangle():
    got = rasterize_shape(shape("oriented_rectangle", [(1, 1), (4, 1), (4, 3), (1, 3)]), 6, 6)
    assert (got == rasterize_shape(shape("rectangle", [(1, 1), (4, 3)]), 6, 6)).all()


def test_circle_is_the_closed_disc_through_the_rim_point():
    got = rasterize_shape(shape("circle", [(5, 5), (8, 5)]), 11, 11)
    x, y = centres(11, 11)
    assert (got == ((x - 5) ** 2 + (y - 5) ** 2 <= 9)).all()
    assert (
        got.sum() == 32
    )  # 8 centres per quadrant: (.5,.5) (.5,1.5) (.5,2.5) (1.5,1.5) (1.5,2.5) x2


def test_point_and_points_are_discs_of_the_point_radius():
    options = RasterOptions(point_radius=2.0)
    x, y = centres(12, 12)
    got = rasterize_shape(shape("point", [(3, 3)]), 12, 12, options=options)
    assert (got == ((x - 3) ** 2 + (y - 3) ** 2 <= 4)).all()
    got = rasterize_shape(shape("points", [(3, 3), (8, 9)]), 12, 12, options=options)
    expected = ((x - 3) ** 2 + (y - 3) ** 2 <= 4) | ((x - 8) ** 2 + (y - 9) ** 2 <= 4)
    assert (got == expected).all()


def test_line_is_buffered_by_half_the_line_width():
    got = rasterize_shape(shape("line", [(1, 5), (8, 5)]), 10, 10, options=RasterOptions(2.0))
    expected = np.zeros((10, 10), bool)
    expected[4:6, 0:9] = True  # rows with centre 4.5 / 5.5; round caps reach x = 0 and 9
    assert (got == expected).all()


def test_linestrip_covers_centres_within_half_width_of_the_path():
    got = rasterize_shape(
        shape("linestrip", [(2, 2), (2, 12), (12, 12)]), 15, 15, options=RasterOptions(4.0)
    )
    x, y = centres(15, 15)
    # Distance to the two segments (vertical x=2, y in [2,12]; horizontal y=12, x in [2,12]).
    d1 = np.hypot(x - 2, y - np.clip(y, 2, 12))
    d2 = np.hypot(x - np.clip(x, 2, 12), y - 12)
    expected = np.minimum(d1, d2) <= 2.0
    # The buffer is a polygon with 16 segments per quarter circle: allow only boundary pixels.
    assert (got != expected).sum() <= 2
    assert got[2:13, 1:3].all() and got[11:13, 2:13].all()


def test_line_width_zero_draws_nothing():
    got = rasterize_shape(shape("line", [(1, 5), (8, 5)]), 10, 10, options=RasterOptions(0.0))
    assert not got.any()


def _mask_b64(array: np.ndarray) -> str:
    return base64.b64encode(encode_png(array.astype(np.uint8) * 255, kind="mask")).decode()


def test_mask_shape_is_placed_at_its_first_point():
    patch = np.array([[1, 0, 1], [1, 1, 0]], bool)
    got = rasterize_shape(shape("mask", [(2, 1), (4, 2)], mask=_mask_b64(patch)), 5, 6)
    expected = np.zeros((5, 6), bool)
    expected[1:3, 2:5] = patch
    assert (got == expected).all()


def test_mask_shape_is_resampled_at_output_pixel_centres():
    patch = np.array([[1, 0], [0, 1]], bool)
    got = rasterize_shape(shape("mask", [(1, 1), (2, 2)], mask=_mask_b64(patch)), 8, 8, 2.0, 2.0)
    expected = np.zeros((8, 8), bool)
    expected[2:4, 2:4] = True
    expected[4:6, 4:6] = True
    assert (got == expected).all()


def test_rectangles_stay_exact_when_scaling_800_to_512():
    scale = 512 / 800
    rng = np.random.default_rng(7)
    x, y = centres(512, 512)
    for _ in range(50):
        # Corners on the 25-pixel grid map to whole pixels at 512 (25 * 0.64 = 16).
        x0, x1 = sorted(rng.choice(np.arange(0, 801, 25), 2, replace=False))
        y0, y1 = sorted(rng.choice(np.arange(0, 801, 25), 2, replace=False))
        got = rasterize_shapes(
            [shape("rectangle", [(x0, y0), (x1, y1)])], ROLES, 512, 512, scale, scale
        )
        expected = np.zeros((512, 512), bool)
        expected[round(y0 * scale) : round(y1 * scale), round(x0 * scale) : round(x1 * scale)] = 1
        assert (got == expected).all()
        # Any corners: exactly the pixels whose centres fall in the scaled rectangle.
        fx0, fx1 = sorted(rng.uniform(-20, 820, 2))
        fy0, fy1 = sorted(rng.uniform(-20, 820, 2))
        got = rasterize_shapes(
            [shape("rectangle", [(fx0, fy0), (fx1, fy1)])], ROLES, 512, 512, scale, scale
        )
        expected = (x >= fx0 * scale) & (x < fx1 * scale) & (y >= fy0 * scale) & (y < fy1 * scale)
        assert (got == expected).all()


def test_holes_clear_earlier_vessel_and_later_vessel_paints_over():
    outer = shape("rectangle", [(0, 0), (10, 10)], index=0)
    hole = shape("rectangle", [(3, 3), (7, 7)], "hole", index=1)
    patch = shape("rectangle", [(4, 4), (6, 6)], index=2)
    got = rasterize_shapes([outer, hole], ROLES, 10, 10)
    expected = np.ones((10, 10), bool)
    expected[3:7, 3:7] = False
    assert (got == expected).all()
    got = rasterize_shapes([outer, hole, patch], ROLES, 10, 10)
    expected[4:6, 4:6] = True
    assert (got == expected).all()
    # A hole drawn before any vessel removes nothing.
    assert rasterize_shapes([hole, outer], ROLES, 10, 10).all()


def test_shapes_of_one_label_are_or_ed_and_ignored_labels_skipped():
    a = shape("rectangle", [(0, 0), (4, 4)], index=0)
    b = shape("rectangle", [(2, 2), (6, 6)], index=1)
    note = shape("rectangle", [(0, 0), (8, 8)], "note", index=2)
    got = rasterize_shapes([a, b, note], ROLES, 8, 8)
    assert got.sum() == 16 + 16 - 4


def test_unknown_label_names_file_shape_and_fix():
    with pytest.raises(
        DatasetError, match=r"img\.json: shape 0 has label 'artery'.*labels\.vessel"
    ):
        rasterize_shapes(
            [shape("polygon", [(0, 0), (2, 0), (0, 2)], "artery")], ROLES, 4, 4, name="img.json"
        )


def test_points_outside_the_image_are_clipped():
    got = rasterize_shape(shape("polygon", [(-5, -5), (20, -5), (20, 2), (-5, 2)]), 6, 6)
    expected = np.zeros((6, 6), bool)
    expected[0:2, :] = True
    assert (got == expected).all()


def _random_vessel_mask(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(6):
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(mask, p0, p1, 1, int(rng.integers(1, 5)))
    for _ in range(3):
        centre = tuple(int(v) for v in rng.integers(15, size - 15, 2))
        cv2.circle(mask, centre, int(rng.integers(5, 14)), 1, int(rng.integers(1, 4)))
    mask[rng.integers(0, size), rng.integers(0, size)] = 1  # an isolated pixel
    return mask.astype(bool)


@pytest.mark.parametrize("nesting", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_mask_to_polygons_with_holes_round_trips_exactly(seed, nesting):
    mask = _random_vessel_mask(seed)
    if seed == 0:  # an island inside a hole inside a region
        mask[:] = False
        mask[10:60, 10:60] = True
        mask[20:50, 20:50] = False
        mask[30:40, 30:40] = True
    regions = mask_to_regions(mask, nesting=nesting)
    assert any(r.holes for r in regions), "the test mask should contain loops"
    back = np.zeros_like(mask)
    for region in regions:
        back |= fill_rings([keyhole_polygon(region)], *mask.shape)
    assert (back == mask).all()


def test_outer_outlines_only_lose_the_loops():
    mask = _random_vessel_mask(3)
    outer_only = np.zeros_like(mask)
    for region in mask_to_regions(mask):
        outer_only |= fill_rings([region.outer], *mask.shape)
    assert outer_only.sum() > mask.sum()  # loops filled in: why a hole convention is needed


def _decode_coco_rle(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    counts = np.asarray(rle["counts"])
    values = np.arange(len(counts)) % 2 == 1  # runs alternate, background first
    return np.repeat(values, counts).reshape(width, height).T  # column-major


@pytest.mark.parametrize("seed", range(4))
def test_coco_rle_round_trips_exactly(seed):
    rng = np.random.default_rng(seed)
    masks = [
        _random_vessel_mask(seed),
        rng.random((7, 5)) < 0.5,
        np.ones((3, 4), bool),  # starts with foreground: a leading 0 count
        np.zeros((3, 4), bool),
        np.eye(6, dtype=bool)[:, :4],
    ]
    for mask in masks:
        rle = mask_to_coco_rle(mask)
        counts = np.asarray(rle["counts"])
        assert rle["size"] == list(mask.shape) and counts.sum() == mask.size
        assert (counts[1:] > 0).all() and (counts[0] > 0) == (not mask.T.flat[0])
        assert (_decode_coco_rle(rle) == mask).all()


def test_coco_rle_decodes_with_pycocotools_as_sa2va_reads_it():
    """Sa2VA's loader calls ``frPyObjects([segment], h, w)``: an uncompressed RLE dict works."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = _random_vessel_mask(5)
    rle = mask_to_coco_rle(mask)
    segment = {"size": rle["size"], "counts": rle["counts"].tolist()}  # as read from JSON
    decoded = mask_utils.decode(mask_utils.frPyObjects([segment], *mask.shape))
    assert (decoded[..., 0].astype(bool) == mask).all()


@pytest.mark.parametrize("seed", range(4))
def test_keyhole_polygons_match_the_regions_one_by_one(seed):
    mask = _random_vessel_mask(seed)
    expected = [keyhole_polygon(r).ravel() for r in mask_to_regions(mask, nesting=False)]
    got = mask_to_keyhole_polygons(mask)
    assert len(got) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert mask_to_keyhole_polygons(np.zeros((4, 4), bool)) == []


def test_double_mask_turns_each_pixel_into_a_2x2_block():
    values = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    expected = np.repeat(np.repeat(values, 2, axis=0), 2, axis=1)
    assert (double_mask(values) == expected).all()
