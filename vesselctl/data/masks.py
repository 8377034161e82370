"""Rasterising LabelMe shapes into binary vessel masks, and masks back into polygons.

Pixel convention (used everywhere in vesselctl): pixel ``(row, col)`` covers the square
``[col, col + 1) x [row, row + 1)``; a pixel belongs to a shape when its centre
``(col + 0.5, row + 0.5)`` lies inside the shape. Polygon edges are half-open (a centre exactly
on a left/top edge is inside, on a right/bottom edge outside), so two polygons sharing an edge
never both claim a pixel, and an axis-aligned rectangle with corners on pixel boundaries covers
exactly the pixels between them at any scale (800 -> 512 included).

Geometry is scaled to the output size *before* rasterising (``x * scale_x``, ``y * scale_y``),
so a 800x800 annotation rasterised at 512x512 is as sharp as one drawn at 512. Only ``mask``
shapes (already pixels) are resampled, by sampling the source pixel under each output pixel
centre.

Shape types: polygon (even-odd fill), rectangle (two opposite corners), oriented_rectangle (four
corners), circle (centre + a rim point; exact disc, an ellipse under non-uniform scale), line and
linestrip (buffered by ``line_width / 2`` with round caps and joins, in source pixels), point and
points (discs of ``point_radius`` source pixels), mask (a PNG over the box starting at the first
point).

Paint order and holes: shapes are applied in file order, as LabelMe draws them. A vessel shape
sets its pixels; a hole shape clears them; ignored labels do nothing. A hole therefore removes
vessel drawn *before* it, and a vessel drawn after a hole paints over it. This is how loops in a
vessel tree are annotated: draw the outer outline as a polygon labelled e.g. ``vessel``, then the
gap inside the loop as a polygon labelled ``hole``.

The rasteriser is hand-written (scanline spans in numpy) rather than cv2.fillPoly because OpenCV
fills both edges of a polygon inclusively on an integer grid, which breaks the exactness promised
above; the spans are also summed in one pass per run of shapes, which keeps it fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vesselctl.data.labelme import LabelmeShape, decode_mask_shape
from vesselctl.errors import DatasetError

ROLE_VESSEL = "vessel"
ROLE_HOLE = "hole"
ROLE_IGNORE = "ignore"


@dataclass(frozen=True)
class LabelRoles:
    """Which LabelMe labels draw vessel, which cut holes and which are ignored."""

    vessel: frozenset[str]
    hole: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()

    def role(self, label: str) -> str | None:
        """``vessel``, ``hole``, ``ignore``, or None for a label the map does not know."""
        if label in self.vessel:
            return ROLE_VESSEL
        if label in self.hole:
            return ROLE_HOLE
        if label in self.ignore:
            return ROLE_IGNORE
        return None

    def unknown(self, labels: Iterable[str]) -> list[str]:
        """Labels (in given order, once each) that the map does not know."""
        return [lbl for lbl in dict.fromkeys(labels) if self.role(lbl) is None]


@dataclass(frozen=True)
class RasterOptions:
    """How non-area shapes get an area; both widths are in pixels of the source image."""

    line_width: float = 10.0
    point_radius: float = 5.0


_SCRATCH: list[np.ndarray] = [np.zeros(0, dtype=np.int32)]


def _zeroed_scratch(size: int) -> np.ndarray:
    """A zeroed int32 buffer of ``size`` reused between calls (one per process).

    Reuse avoids allocating and page-faulting about 1 MB per run of shapes; prepare's worker
    processes are single-threaded, and nothing keeps a reference past ``covered_box``.
    """
    if _SCRATCH[0].size < size:
        _SCRATCH[0] = np.zeros(size, dtype=np.int32)
    buffer = _SCRATCH[0][:size]
    buffer.fill(0)
    return buffer


@dataclass
class _Spans:
    """Pixels covered by one run of shapes, gathered lazily and rasterised in one numpy pass.

    A span is a half-open run of pixels ``[start, end)`` in one row, kept as two flat indices
    ``row * (width + 1) + col`` (a row has ``width + 1`` slots so ``end`` can be ``width``).
    Rings of all polygons in the run are converted to row crossings together (even-odd within
    each shape, OR between shapes); spans become +1/-1 marks whose running sum along each row
    counts the shapes covering a pixel. Work is limited to the rows and columns the run touches.
    """

    height: int
    width: int
    rings: list[np.ndarray] = field(default_factory=list)
    ring_groups: list[int] = field(default_factory=list)
    starts: list[np.ndarray] = field(default_factory=list)  # flat indices, see above
    ends: list[np.ndarray] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)  # boolean masks (mask shapes)
    next_group: int = 0

    def add(self, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        """Spans ``[starts, ends)`` (columns, clipped to the image) in ``rows`` (inside it)."""
        starts = np.clip(starts, 0, self.width)
        ends = np.clip(ends, 0, self.width)
        keep = ends > starts
        if keep.any():
            row_base = rows[keep] * (self.width + 1)
            self.starts.append(row_base + starts[keep])
            self.ends.append(row_base + ends[keep])

    def add_rings(self, rings: Sequence[np.ndarray]) -> None:
        """Rings filled together by the even-odd rule (one shape; rings inside rings are holes)."""
        group = self.next_group
        self.next_group += 1
        for ring in rings:
            if not (isinstance(ring, np.ndarray) and ring.dtype == np.float64):
                ring = np.asarray(ring, dtype=np.float64)
            if ring.ndim == 2 and len(ring) >= 3:
                self.rings.append(ring)
                self.ring_groups.append(group)

    def covered_box(self) -> tuple[int, int, np.ndarray] | None:
        """``(top, left, block)``: the covered pixels inside the bounding box of the run's spans.

        ``block`` is boolean; pixel masks (mask shapes) are not included (see ``coverage``).
        Working on the box only keeps small shapes (holes) cheap on large images.
        """
        _rasterise_runs([self])
        if not self.starts:
            return None
        starts = np.concatenate(self.starts)
        ends = np.concatenate(self.ends)
        slots = self.width + 1
        rows, start_cols = np.divmod(starts, slots)
        top, bottom = int(rows.min()), int(rows.max()) + 1
        left, right = int(start_cols.min()), int((ends % slots).max())
        if right <= left:
            return None  # only empty spans
        stride = right - left + 1
        delta = _zeroed_scratch((bottom - top) * stride)
        # Box index of a flat index f (row r, column c): (r - top) * stride + c - left, and
        # f - r * slots = c, so it is f + r * (stride - slots) - top * stride - left; an end
        # lies in its start's row.
        shift = rows * (stride - slots) - (top * stride + left)
        # Typed scalars: with a Python int, ufunc.at takes a much slower casting path.
        np.add.at(delta, starts + shift, np.int32(1))
        np.add.at(delta, ends + shift, np.int32(-1))
        # Every row's +1/-1 marks cancel within the row (each span ends in the row it starts
        # in), so one flat running sum equals the per-row sums; in place, it needs no new
        # memory (fresh allocations and their page faults cost more than the sum itself).
        np.cumsum(delta, out=delta)
        counts = delta.reshape(bottom - top, stride)[:, : right - left]
        return top, left, counts > 0

    def _paint_sparse(self, mask: np.ndarray, value: bool) -> bool:
        """Write ``value`` to every pixel of every span; False (nothing done) for dense runs.

        Setting a pixel twice is harmless, so overlapping spans need no counting: this costs
        the number of covered pixels, the running sum of ``covered_box`` the area of the box,
        which is most of the image for holes scattered over it.
        """
        _rasterise_runs([self])
        if not self.starts or not mask.flags.c_contiguous:
            return not self.starts
        starts = np.concatenate(self.starts)
        lengths = np.concatenate(self.ends) - starts
        total = int(lengths.sum())
        if total * 8 > mask.size:
            return False
        keep = lengths > 0
        lengths = lengths[keep]
        # Flat index in the mask: a row holds width pixels, not width + 1 slots.
        first = starts[keep] - starts[keep] // (self.width + 1)
        runs_before = np.cumsum(lengths) - lengths
        pixels = np.arange(total) + np.repeat(first - runs_before, lengths)
        mask.reshape(-1)[pixels] = value
        return True

    def paint(self, mask: np.ndarray, value: bool) -> None:
        """Set (value True) or clear (value False) the run's pixels in ``mask``."""
        box = None if self._paint_sparse(mask, value) else self.covered_box()
        if box is not None:
            top, left, block = box
            view = mask[top : top + block.shape[0], left : left + block.shape[1]]
            if value:
                view |= block
            else:
                view &= ~block
        for pixels in self.pixels:
            if value:
                mask |= pixels
            else:
                mask &= ~pixels

    def coverage(self) -> np.ndarray:
        """Boolean (H, W): pixels covered by at least one shape of the run."""
        covered = np.zeros((self.height, self.width), dtype=bool)
        self.paint(covered, True)
        return covered


def _rasterise_runs(runs: Sequence[_Spans]) -> None:
    """Turn the pending rings of every run into spans, in one numpy pass for all runs.

    One pass over all runs costs the fixed price of some twenty array operations once, not
    once per run (a vessel file is typically two runs: outlines, then holes).
    """
    pending = [run for run in runs if run.rings]
    if not pending:
        return
    height, width = pending[0].height, pending[0].width
    rings: list[np.ndarray] = []
    ring_groups: list[int] = []
    group_ends = []  # per run: one past its last group number, numbering runs one after another
    first_group = 0
    for run in pending:
        rings += run.rings
        ring_groups += [first_group + group for group in run.ring_groups]
        first_group += run.next_group
        group_ends.append(first_group)
        run.rings, run.ring_groups = [], []
    lengths = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
    vertices = np.concatenate(rings)
    offsets = np.cumsum(lengths) - lengths
    following = np.arange(1, len(vertices) + 1)
    following[offsets + lengths - 1] = offsets  # each ring closes on its first vertex
    groups = np.repeat(np.asarray(ring_groups, dtype=np.int64), lengths)
    rows, xs, edge_groups = _edge_crossings(vertices, following, groups, height)
    if rows.size == 0:
        return
    # A crossing at x starts or ends a span at column ceil(x - 0.5): the first pixel whose
    # centre is right of x. Within a (shape, row) the crossings pair up in x order; sorting the
    # columns instead of the x values gives the same sorted columns (ceil is monotone), hence
    # the same spans, and one integer key sorts by shape, row and column at once.
    slots = width + 1
    per_group = height * slots
    cols = np.clip(np.ceil(xs - 0.5), 0, width).astype(np.int64)
    key = np.sort(edge_groups * per_group + rows * slots + cols)
    # Runs own consecutive group numbers, so each run's crossings are one slice of the keys.
    cuts = np.searchsorted(key, np.asarray(group_ends, dtype=np.int64) * per_group).tolist()
    start = 0
    for run, end in zip(pending, cuts, strict=True):
        if end > start:
            flat = key[start:end] % per_group
            # Each (shape, row) holds an even number of crossings: consecutive pairs are inside.
            run.starts.append(flat[0::2])
            run.ends.append(flat[1::2])
        start = end


def _edge_crossings(
    vertices: np.ndarray, following: np.ndarray, groups: np.ndarray, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, x positions and groups where edges cross the pixel-centre line of a row."""
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = x0[following], y0[following]
    y_low, y_high = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows whose centre y = row + 0.5 satisfies y_low <= y < y_high (half-open: no double count
    # at shared vertices, horizontal edges give nothing).
    first = np.clip(np.ceil(y_low - 0.5), 0, height).astype(np.int64)
    last = np.clip(np.ceil(y_high - 0.5), 0, height).astype(np.int64)
    counts = last - first
    keep = counts > 0
    if not keep.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), empty
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    first, counts, groups = first[keep], counts[keep], groups[keep]
    total = int(counts.sum())
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = first[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    slope = (x1 - x0) / (y1 - y0)
    xs = x0[edge] + (rows + 0.5 - y0[edge]) * slope[edge]
    return rows, xs, groups[edge]


def add_ellipse(spans: _Spans, cx: float, cy: float, rx: float, ry: float) -> None:
    """Closed elliptical disc: pixels whose centre satisfies ((x-cx)/rx)^2 + ((y-cy)/ry)^2 <= 1."""
    if rx <= 0 or ry <= 0:
        return
    first = max(0, math.ceil(cy - ry - 0.5))
    last = min(spans.height - 1, math.floor(cy + ry - 0.5))
    if last < first:
        return
    rows = np.arange(first, last + 1)
    dy = (rows + 0.5 - cy) / ry
    inside = np.abs(dy) <= 1.0
    rows, dy = rows[inside], dy[inside]
    half = rx * np.sqrt(np.clip(1.0 - dy * dy, 0.0, None))
    starts = np.ceil(cx - half - 0.5).astype(np.int64)
    ends = np.floor(cx + half - 0.5).astype(np.int64) + 1
    spans.add(rows, starts, ends)


def _line_rings(points: Sequence[tuple[float, float]], width: float) -> list[np.ndarray]:
    """Rings of a polyline buffered by width/2 (round caps and joins), in source coordinates."""
    from shapely.geometry import LineString, MultiPolygon, Point, Polygon

    radius = width / 2.0
    unique = list(dict.fromkeys(points))
    geometry = (
        Point(unique[0]).buffer(radius, quad_segs=16)
        if len(unique) == 1
        else LineString(points).buffer(radius, quad_segs=16)
    )
    polygons = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    rings: list[np.ndarray] = []
    for polygon in polygons:
        if not isinstance(polygon, Polygon) or polygon.is_empty:
            continue
        rings.append(np.asarray(polygon.exterior.coords)[:-1])
        rings.extend(np.asarray(interior.coords)[:-1] for interior in polygon.interiors)
    return rings


def _resample_pixels(
    pixels: np.ndarray,
    top: int,
    left: int,
    height: int,
    width: int,
    scale_y: float,
    scale_x: float,
) -> np.ndarray:
    """Place a source-resolution boolean patch (at ``top, left``) onto the output grid.

    Each output pixel takes the source pixel under its centre, so the result is the nearest
    neighbour with centres aligned (cv2.INTER_NEAREST is off by half a pixel).
    """
    out = np.zeros((height, width), dtype=bool)
    src_rows = np.floor((np.arange(height) + 0.5) / scale_y).astype(np.int64) - top
    src_cols = np.floor((np.arange(width) + 0.5) / scale_x).astype(np.int64) - left
    row_ok = (src_rows >= 0) & (src_rows < pixels.shape[0])
    col_ok = (src_cols >= 0) & (src_cols < pixels.shape[1])
    if row_ok.any() and col_ok.any():
        out[np.ix_(row_ok, col_ok)] = pixels[np.ix_(src_rows[row_ok], src_cols[col_ok])]
    return out


def resample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask with pixel centres aligned."""
    if mask.shape == (height, width):
        return mask.astype(bool, copy=False)
    return _resample_pixels(
        mask.astype(bool, copy=False),
        0,
        0,
        height,
        width,
        height / mask.shape[0],
        width / mask.shape[1],
    )


def add_shape(
    spans: _Spans,
    shape: LabelmeShape,
    scale_y: float,
    scale_x: float,
    options: RasterOptions,
    name: str = "",
) -> None:
    """Add one shape's pixels at the output resolution to ``spans``."""
    points = shape.array()
    kind = shape.shape_type
    if kind in ("polygon", "oriented_rectangle"):  # most shapes: the short way
        if scale_x != 1.0 or scale_y != 1.0:
            points = points * np.array([scale_x, scale_y])
        spans.add_rings((points,))
        return
    scale = np.array([scale_x, scale_y])
    if kind == "rectangle":
        (xa, ya), (xb, yb) = points[0], points[1]
        corners = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]]) * scale
        spans.add_rings([corners])
    elif kind == "circle":
        (cx, cy), (px, py) = points[0], points[1]
        radius = math.hypot(px - cx, py - cy)
        add_ellipse(spans, cx * scale_x, cy * scale_y, radius * scale_x, radius * scale_y)
    elif kind in ("point", "points"):
        r = options.point_radius
        for cx, cy in points:
            add_ellipse(spans, cx * scale_x, cy * scale_y, r * scale_x, r * scale_y)
    elif kind in ("line", "linestrip"):
        if options.line_width > 0:
            rings = _line_rings([tuple(p) for p in points], options.line_width)
            spans.add_rings([ring * scale for ring in rings])
    elif kind == "mask":
        pixels = decode_mask_shape(shape, name)
        left, top = math.floor(points[0][0]), math.floor(points[0][1])
        spans.pixels.append(
            _resample_pixels(pixels, top, left, spans.height, spans.width, scale_y, scale_x)
        )
    else:  # pragma: no cover - the parser rejects other types
        raise DatasetError(f"{name}: shape {shape.index}: unsupported shape_type {kind!r}")


def rasterize_shapes(
    shapes: Sequence[LabelmeShape],
    roles: LabelRoles,
    height: int,
    width: int,
    scale_y: float = 1.0,
    scale_x: float = 1.0,
    options: RasterOptions | None = None,
    name: str = "",
) -> np.ndarray:
    """The boolean vessel mask (height x width) of ``shapes`` painted in order.

    ``scale_y``/``scale_x`` map source coordinates to the output grid (output size / source
    size). Unknown labels raise DatasetError naming the file, shape and label.
    """
    options = options or RasterOptions()
    mask = np.zeros((height, width), dtype=bool)
    # Consecutive shapes with the same role form a run, filled in one pass (OR within the run);
    # runs are painted in file order once the rings of all of them have been rasterised.
    runs: list[tuple[str, _Spans]] = []
    current_role: str | None = None
    spans = _Spans(height, width)
    for shape in shapes:
        role = roles.role(shape.label)
        if role is None:
            known = ", ".join(sorted(roles.vessel | roles.hole | roles.ignore))
            raise DatasetError(
                f"{name}: shape {shape.index} has label '{shape.label}', which the label map "
                f"does not know (known: {known}); add it to labels.vessel, labels.hole or "
                "labels.ignore"
            )
        if role == ROLE_IGNORE:
            continue
        if role != current_role:
            current_role = role
            spans = _Spans(height, width)
            runs.append((role, spans))
        add_shape(spans, shape, scale_y, scale_x, options, name)
    _rasterise_runs([run for _, run in runs])
    for role, run in runs:
        run.paint(mask, role == ROLE_VESSEL)
    return mask


def rasterize_shape(
    shape: LabelmeShape,
    height: int,
    width: int,
    scale_y: float = 1.0,
    scale_x: float = 1.0,
    options: RasterOptions | None = None,
) -> np.ndarray:
    """The boolean pixels of one shape alone (no label map), e.g. for per-shape checks."""
    spans = _Spans(height, width)
    add_shape(spans, shape, scale_y, scale_x, options or RasterOptions())
    return spans.coverage()


def fill_rings(rings: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Even-odd fill of rings given in output pixel coordinates (for round-trip checks)."""
    spans = _Spans(height, width)
    spans.add_rings(rings)
    return spans.coverage()


# ---------------------------------------------------------------------------------------------
# Masks back to polygons
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """One connected region of a mask: an outline and the outlines of its holes.

    ``depth`` counts nesting: 0 for a top-level region, 2 for an island inside a hole of a
    depth-0 region, and so on. Coordinates use the pixel convention above.
    """

    outer: np.ndarray
    holes: tuple[np.ndarray, ...]
    depth: int


def double_mask(binary: np.ndarray) -> np.ndarray:
    """Each pixel of a uint8 (H, W) mask as a 2x2 block: (2H, 2W), exact duplication.

    Multiplying by 257 writes every byte twice in a uint16 (whatever the byte order), so the
    columns are doubled by a view; rows by one broadcast copy, instead of
    cv2.resize(INTER_NEAREST_EXACT).
    """
    height, width = binary.shape
    wide = (binary.astype(np.uint16) * np.uint16(257)).view(np.uint8)  # (H, 2W)
    doubled = np.empty((height, 2, 2 * width), dtype=np.uint8)
    doubled[...] = wide[:, None, :]
    return doubled.reshape(2 * height, 2 * width)


def mask_to_regions(mask: np.ndarray, tolerance: float = 0.0, nesting: bool = True) -> list[Region]:
    """Outlines of a binary mask that rasterise back to the same pixels under this module's rule.

    Contours are traced on the mask upsampled 2x, which puts every outline a quarter pixel
    inside the boundary between a vessel pixel and a background pixel: each vessel pixel centre
    is inside its outline, each background centre outside, so the round trip is exact.
    ``tolerance`` (output pixels) simplifies the outlines with Douglas-Peucker (cv2.approxPolyDP);
    0 keeps the round trip exact; larger values may shave thin vessels.
    ``nesting=False`` skips the full nesting tree (islands inside holes come back as depth-0
    regions): enough when regions are OR-ed together rather than painted in order, and faster.
    """
    import cv2

    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    if not binary.any():
        return []
    doubled = double_mask(binary)
    retrieval = cv2.RETR_TREE if nesting else cv2.RETR_CCOMP
    contours, hierarchy = cv2.findContours(doubled, retrieval, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0].tolist()  # next, previous, first child, parent
    depth = []
    for index in range(len(contours)):
        parent, level = links[index][3], 0
        while parent != -1:
            level += 1
            parent = links[parent][3]
        depth.append(level)
    if tolerance > 0:
        contours = [cv2.approxPolyDP(c, 2.0 * tolerance, True) for c in contours]
    # Upsampled pixel index i has its centre at i + 0.5 on the 2x grid -> (i + 0.5) / 2.
    lengths = [len(c) for c in contours]
    flat = (np.concatenate(contours).reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
    rings = np.split(flat, np.cumsum(lengths)[:-1])

    regions = []
    for index in range(len(contours)):
        if depth[index] % 2:
            continue
        holes = []
        child = links[index][2]
        while child != -1:
            holes.append(rings[child])
            child = links[child][0]
        regions.append(Region(rings[index], tuple(holes), depth[index]))
    regions.sort(key=lambda r: r.depth)
    return regions


def keyhole_polygon(region: Region) -> np.ndarray:
    """One ring for a region with holes: outline, then each hole joined by a zero-width bridge.

    Under even-odd filling (ours, and the parity rule of COCO's polygon decoder) the bridge is
    walked once in each direction and cancels, so the holes survive in a single flat polygon.
    """
    if not region.holes:
        return region.outer
    start = region.outer[:1]
    parts = [region.outer, start]
    for hole in region.holes:
        parts.extend([hole, hole[:1], start])
    return np.concatenate(parts)


def mask_to_keyhole_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Flat ``[x0, y0, x1, y1, ...]`` polygons of a binary mask, one per connected region.

    The same polygons as ``keyhole_polygon`` of each ``mask_to_regions(mask, nesting=False)``
    region, in the same order, built with array slices instead of per-region objects (prepare
    writes them for every image into Sa2VA's annotations.json). A region's holes are joined to
    its outline by zero-width bridges; islands inside holes are regions of their own, which is
    right where regions are OR-ed together (one object).
    """
    import cv2

    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    if not binary.any():
        return []
    contours, hierarchy = cv2.findContours(
        double_mask(binary), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    lengths = [len(c) for c in contours]
    # Upsampled pixel index i has its centre at i + 0.5 on the 2x grid -> (i + 0.5) / 2.
    points = (np.concatenate(contours).reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
    flat = points.reshape(-1)
    links = hierarchy[0]
    next_sibling, first_child = links[:, 0].tolist(), links[:, 2].tolist()
    offsets = np.cumsum([0, *lengths[:-1]]).tolist()
    polygons = []
    for index in np.flatnonzero(links[:, 3] == -1).tolist():  # outlines; holes have a parent
        start, count = offsets[index], lengths[index]
        child = first_child[index]
        if child == -1:
            if count >= 3:
                polygons.append(flat[2 * start : 2 * (start + count)])
            continue
        anchor = points[start : start + 1]
        parts = [points[start : start + count], anchor]
        while child != -1:
            hole = offsets[child]
            parts += [points[hole : hole + lengths[child]], points[hole : hole + 1], anchor]
            child = next_sibling[child]
        polygons.append(np.concatenate(parts).reshape(-1))
    return polygons


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a binary mask: ``{"size": [H, W], "counts": runs}``.

    ``counts`` are the lengths of alternating runs of background and foreground pixels in
    column-major order, starting with background (a mask whose first pixel is foreground
    starts with a 0), as pycocotools' ``frPyObjects`` reads it; an int64 array (orjson writes
    it directly). Exact by construction, and cheaper than tracing polygons (BENCHMARKS.md:
    0.20 ms against 2.25 ms per 512x512 synthetic image).
    """
    import cv2

    height, width = mask.shape
    binary = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    # Column-major order; cv2.transpose rather than numpy's transposed copy (faster).
    flat = (cv2.transpose(binary) if binary.size else binary.T).reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(changes, prepend=0, append=flat.size)
    if flat.size and flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [int(height), int(width)], "counts": counts}
