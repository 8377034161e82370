"""Dataset checks: each looks at one thing and returns ``Problem`` records; bad data never raises.

Every check has an id and a fixed severity (``CHECKS``): an *error* is something that makes
training or evaluation wrong or impossible (unreadable files, wrong sizes, unknown labels,
leakage between splits, masks that are not binary, files changed since prepare); a *warning* is
something legal but usually a mistake (zero-area shapes, crossing edges that leave pixels
unfilled, points outside the image that will be clipped, empty or tiny masks, the same image twice
within one split, images no annotation uses).

A problem names the file (relative to the checked folder), the shape (``shapes[i]``, the index in
the JSON's ``shapes`` list, counting from 0), what was found, what was expected and the fix.
LabelMe files are read with prepare's own parser and rasteriser, so validate sees exactly what
prepare would.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vesselctl.data.labelme import LabelmeProblem, LabelmeShape, Severity
from vesselctl.data.manifest import ManifestRecord
from vesselctl.data.masks import LabelRoles, RasterOptions
from vesselctl.errors import DatasetError
from vesselctl.files import sha256_bytes


@dataclass(frozen=True)
class CheckInfo:
    """One kind of problem: its id, how serious it is and what it detects."""

    id: str
    severity: Severity
    title: str


CHECKS: dict[str, CheckInfo] = {
    c.id: c
    for c in (
        CheckInfo("json_unreadable", "error", "annotation file cannot be read or is not JSON"),
        CheckInfo("json_schema", "error", "annotation lacks a LabelMe field or has a wrong type"),
        CheckInfo("labelme_warning", "warning", "annotation field that is odd but usable"),
        CheckInfo("image_missing", "error", "the image an annotation or record names is absent"),
        CheckInfo("unannotated_image", "warning", "image in a LabelMe folder that no JSON uses"),
        CheckInfo("image_outside", "error", "imagePath points outside the dataset folder"),
        CheckInfo("image_unreadable", "error", "image file is truncated or not an image"),
        CheckInfo("size_mismatch", "error", "declared image size differs from the real image"),
        CheckInfo("unknown_label", "error", "shape label is not in the label map"),
        CheckInfo("unknown_shape_type", "error", "shape_type is not one LabelMe writes"),
        CheckInfo("point_count", "error", "shape has too few points for its type (e.g. < 3)"),
        CheckInfo("zero_area", "warning", "shape covers no area (collinear or repeated points)"),
        CheckInfo(
            "self_intersection", "warning", "polygon crosses itself, leaving a pocket unfilled"
        ),
        CheckInfo("out_of_bounds", "warning", "shape points lie outside the image (clipped)"),
        CheckInfo("empty_mask", "warning", "image has no vessel pixels"),
        CheckInfo("tiny_mask", "warning", "image has fewer vessel pixels than the threshold"),
        CheckInfo("duplicate_image", "warning", "same image content twice within one split"),
        CheckInfo("split_leakage", "error", "same image content in two different splits"),
        CheckInfo(
            "near_duplicate", "warning", "image looks like another one (resized or re-encoded)"
        ),
        CheckInfo("mask_missing", "error", "the mask of an image is absent"),
        CheckInfo("mask_unreadable", "error", "mask file is truncated or not an image"),
        CheckInfo("mask_not_binary", "error", "mask not one channel of 0/255 (or 0/x as input)"),
        CheckInfo("mask_size_mismatch", "error", "mask and image differ in size"),
        CheckInfo("checksum_mismatch", "error", "file content differs from the manifest's sha256"),
    )
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file; ``message`` is the line a user reads."""

    file: str
    check: str
    found: str
    expected: str
    fix: str
    shape: int | None = None

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"unknown check id {self.check!r}; known: {', '.join(CHECKS)}")

    @property
    def severity(self) -> Severity:
        return CHECKS[self.check].severity

    @property
    def message(self) -> str:
        return f"{self.file}: {self.found}; expected {self.expected}; fix: {self.fix}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity, "message": self.message}


def _shape_name(index: int, shape_type: str, label: str | None) -> str:
    label_text = f" '{label}'" if label is not None else ""
    return f"shapes[{index}] ({shape_type}{label_text})"


# The LabelMe parser's problem codes (vesselctl.data.labelme) -> the check they belong to. Codes
# not listed fall back to json_schema (errors) or labelme_warning (warnings).
_PARSER_CODES = {
    "unreadable": "json_unreadable",
    "bad_json": "json_unreadable",
    "unknown_shape_type": "unknown_shape_type",
    "point_count": "point_count",
    "no_image": "image_missing",
    "missing_image": "image_missing",
    "image_path_escapes": "image_outside",
}


def from_parser_problem(problem: LabelmeProblem) -> Problem:
    """Turn a problem found by the LabelMe parser into a validate ``Problem``."""
    check = _PARSER_CODES.get(problem.code)
    if check is None or CHECKS[check].severity != problem.severity:
        check = "json_schema" if problem.severity == "error" else "labelme_warning"
    if problem.shape_index is not None:
        where = f"shapes[{problem.shape_index}].{problem.field}: "
    elif problem.field.startswith("("):  # "(file)", "(top level)": the whole file
        where = ""
    else:
        where = f"{problem.field}: "
    return Problem(
        problem.file,
        check,
        f"{where}{problem.found}",
        problem.expected,
        problem.fix,
        problem.shape_index,
    )


def check_shapes_geometry(
    file: str,
    shapes: Sequence[LabelmeShape],
    image_size: tuple[int, int] | None,
    bounds_tolerance: float = 0.0,
    report_twists: bool = False,
    min_pocket_pixels: int = 1,
) -> list[Problem]:
    """Geometry checks of a file's parsed shapes: zero area, crossing edges, points outside.

    Point counts and shape types are checked by the parser (``vesselctl.data.labelme``); this
    sees shapes that passed it. ``image_size`` is (height, width) of the real image (or the
    declared one when the image cannot be read; None skips the bounds check). A point is inside
    when 0 <= x <= width and 0 <= y <= height, widened by ``bounds_tolerance`` pixels.

    All shapes of a file are checked in one vectorised pass (annotations converted from masks
    carry thousands of points per file; a Python loop per point or per shape would dominate).
    """
    arrays = [(s, s.array()) for s in shapes]
    arrays = [(s, a) for s, a in arrays if len(a)]
    if not arrays:
        return []
    shapes = [s for s, _ in arrays]
    counts = np.fromiter((len(a) for _, a in arrays), dtype=np.int64, count=len(arrays))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    points = np.concatenate([a for _, a in arrays])
    x, y = points[:, 0], points[:, 1]
    findings: dict[int, list[Problem]] = defaultdict(list)

    # Zero area: shoelace over each ring (next point wraps to the ring's first point).
    following = np.arange(len(points)) + 1
    following[starts + counts - 1] = starts
    signed = 0.5 * np.add.reduceat(x * y[following] - y * x[following], starts)
    crossing_candidates = []
    for k, shape in enumerate(shapes):
        ring = points[starts[k] : starts[k] + counts[k]]
        reason = _zero_area_reason(shape.shape_type, ring, float(signed[k]))
        if reason:
            findings[k].append(
                Problem(
                    file,
                    "zero_area",
                    f"{_shape_name(shape.index, shape.shape_type, shape.label)} {reason}",
                    "a shape that covers some pixels",
                    "redraw or delete the shape; as it is it adds nothing to the mask",
                    shape.index,
                )
            )
        elif shape.shape_type == "polygon":
            crossing_candidates.append(k)

    # Crossing edges, reported when they change the mask: pixels the ring winds around twice
    # are left empty by the even-odd fill. All polygons are scanned at once (GEOS validity on
    # every outline cost more than the rest of the geometry checks); shapely then explains each
    # flagged outline. A twist (figure-eight: lobes meeting where edges cross) fills exactly as
    # drawn and is common in outlines traced from pixel masks: reported only with report_twists.
    if crossing_candidates:
        import shapely

        chosen = np.asarray(crossing_candidates)
        pockets = _pocket_pixels_rings(points, starts[chosen], counts[chosen], image_size)
        examine = chosen if report_twists else chosen[pockets >= min_pocket_pixels]
        pocket_of = dict(zip(chosen.tolist(), pockets.tolist(), strict=True))
        for k in examine.tolist():
            polygon = shapely.Polygon(points[starts[k] : starts[k] + counts[k]])
            reason = str(shapely.is_valid_reason(polygon))
            pocket = int(pocket_of[k])
            if pocket >= min_pocket_pixels:
                plural = "s" if pocket != 1 else ""
                effect = f"leaving {pocket} pixel{plural} it winds around twice unfilled"
            elif reason.startswith("Self-intersection"):
                effect = _twist_effect(polygon)
            else:
                effect = None
            if effect is None:
                continue
            shape = shapes[k]
            at = reason.partition("[")[2].rstrip("]").replace(" ", ", ")
            where = f" near ({at})" if at else ""
            findings[k].append(
                Problem(
                    file,
                    "self_intersection",
                    f"{_shape_name(shape.index, shape.shape_type, shape.label)} has edges that "
                    f"cross{where}, {effect}",
                    "a polygon whose edges do not cross",
                    "move the crossing points in LabelMe (for loops in a vessel, draw the gap "
                    "inside as its own 'hole' shape)",
                    shape.index,
                )
            )

    # Points outside the image, counted and measured per shape.
    if image_size is not None:
        height, width = image_size
        dx = np.maximum(np.maximum(-x, x - width), 0.0)
        dy = np.maximum(np.maximum(-y, y - height), 0.0)
        distance = np.hypot(dx, dy)
        outside = distance > bounds_tolerance
        if outside.any():
            n_out = np.add.reduceat(outside.astype(np.int64), starts)
            far = np.maximum.reduceat(distance, starts)
            for k in np.flatnonzero(n_out).tolist():
                shape = shapes[k]
                all_out = int(n_out[k]) == int(counts[k])
                findings[k].append(
                    Problem(
                        file,
                        "out_of_bounds",
                        f"{_shape_name(shape.index, shape.shape_type, shape.label)} has "
                        f"{int(n_out[k])} of {int(counts[k])} points outside the {width}x{height}"
                        f" image, up to {float(far[k]):.1f} px away",
                        f"points within 0..{width} (x) and 0..{height} (y)",
                        "every point is outside: the shape was probably drawn on another image "
                        "size; check imageHeight/imageWidth and the image, or delete the shape"
                        if all_out
                        else "nothing if intended (points are clipped to the image); "
                        "otherwise move them inside",
                        shape.index,
                    )
                )
    return [problem for k in sorted(findings) for problem in findings[k]]


def _zero_area_reason(shape_type: str, points: np.ndarray, signed_area: float) -> str | None:
    """Why a shape covers nothing, or None. Lines and points have a drawn width, so never zero."""
    if shape_type in ("polygon", "oriented_rectangle"):
        # A zero signed area can also be a bow-tie whose lobes cancel: ask shapely then.
        if signed_area == 0.0 and _covered_area(points) == 0.0:
            return "has zero area (its points are collinear or repeated)"
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = points[0], points[1]
        if x0 == x1 or y0 == y1:
            return f"has zero {'width' if x0 == x1 else 'height'} (corners {points.tolist()})"
    elif shape_type == "circle" and np.array_equal(points[0], points[1]):
        return "has radius 0 (centre and rim point coincide)"
    return None


def _pocket_pixels_rings(
    points: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    image_size: tuple[int, int] | None,
) -> np.ndarray:
    """Per ring, the pixels (centres inside the image) it winds around an even, non-zero number
    of times: inside the outline, yet left empty by the even-odd fill the rasteriser uses. Ring
    i is ``points[starts[i]:starts[i]+counts[i]]``.

    Scanline over pixel-centre rows with the rasteriser's half-open edge rule; the winding
    number between two crossings of a row is the running sum of edge directions. Crossings are
    sorted by (ring, row, x); each (ring, row) group sums to zero because rings are closed, so
    one running sum over all groups gives every winding number.
    """
    result = np.zeros(len(counts), dtype=np.int64)
    if len(counts) == 0:
        return result
    ring_of_point = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    index = starts[ring_of_point] + offset
    following = np.where(offset + 1 == counts[ring_of_point], starts[ring_of_point], index + 1)
    x0, y0 = points[index, 0], points[index, 1]
    x1, y1 = points[following, 0], points[following, 1]
    if image_size is None:
        top = int(np.floor(min(points[:, 1].min(), 0.0)))
        height = int(np.ceil(points[:, 1].max())) + 1
        left, width = int(np.floor(min(points[:, 0].min(), 0.0))), int(np.ceil(points[:, 0].max()))
        width += 1
    else:
        (height, width), top, left = image_size, 0, 0
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(low - 0.5), top, height).astype(np.int64)
    last = np.clip(np.ceil(high - 0.5), top, height).astype(np.int64)
    n = last - first
    keep = n > 0
    if not keep.any():
        return result
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    first, n, ring = first[keep], n[keep], ring_of_point[keep]
    edge = np.repeat(np.arange(len(n)), n)
    rows = first[edge] + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    xs = x0[edge] + (rows + 0.5 - y0[edge]) * ((x1 - x0) / (y1 - y0))[edge]
    direction = np.where(y1 > y0, 1, -1)[edge]
    ring = ring[edge]
    order = np.lexsort((xs, rows, ring))
    rows, xs, direction, ring = rows[order], xs[order], direction[order], ring[order]
    winding = np.cumsum(direction)
    same_group = (rows[:-1] == rows[1:]) & (ring[:-1] == ring[1:])
    pocket = same_group & (winding[:-1] != 0) & (winding[:-1] % 2 == 0)
    if not pocket.any():
        return result
    lo = np.clip(np.ceil(xs[:-1][pocket] - 0.5), left, width)
    hi = np.clip(np.ceil(xs[1:][pocket] - 0.5), left, width)
    lengths = np.maximum(hi - lo, 0).astype(np.int64)
    result += np.bincount(ring[:-1][pocket], weights=lengths, minlength=len(counts)).astype(
        np.int64
    )
    return result


# Lobes smaller than this (px^2) are slivers that move no pixel centre.
_SLIVER_AREA = 0.5


def _twist_effect(polygon: Any) -> str | None:
    """How many lobes a self-crossing outline falls into (only when twists are reported)."""
    import shapely

    pieces = shapely.make_valid(polygon)
    lobes = [g for g in getattr(pieces, "geoms", [pieces]) if g.area >= _SLIVER_AREA]
    return f"twisting it into {len(lobes)} lobes (filled as drawn)" if len(lobes) > 1 else None


def _covered_area(points: np.ndarray) -> float:
    """Area a possibly self-crossing ring really covers (shapely's make_valid)."""
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    return float(make_valid(Polygon(points)).area)


def check_mask_pixels(file: str, mask_pixels: int, tiny_threshold: int) -> list[Problem]:
    """Empty and tiny vessel masks (``tiny_threshold`` pixels; 0 turns the tiny check off)."""
    if mask_pixels == 0:
        return [
            Problem(
                file,
                "empty_mask",
                "the mask has no vessel pixels",
                "at least one vessel pixel",
                "annotate the vessels, or drop the image; an empty target teaches the model to "
                "answer with nothing",
            )
        ]
    if mask_pixels < tiny_threshold:
        return [
            Problem(
                file,
                "tiny_mask",
                f"the mask has only {mask_pixels} vessel pixels",
                f"at least {tiny_threshold} (checks.tiny_mask_pixels)",
                "check the annotation is complete, or lower checks.tiny_mask_pixels",
            )
        ]
    return []


def check_mask_values(
    file: str, mask: np.ndarray, rule: Literal["0/255", "binary"] = "0/255"
) -> list[Problem]:
    """Mask pixel values. ``0/255``: a prepared mask, one channel holding only 0 and 255.
    ``binary``: an input mask for prepare, one channel (or identical channels) holding 0 and at
    most one other value (0/1, 0/255...), as prepare accepts."""
    fix = (
        "re-run `vesselctl prepare`, which writes single-channel 0/255 PNG masks"
        if rule == "0/255"
        else "re-export the mask as a single-channel PNG without anti-aliasing (0 and 255)"
    )
    if mask.ndim == 3 and rule == "binary" and (mask == mask[..., :1]).all():
        mask = mask[..., 0]
    if mask.ndim != 2:
        channels = mask.shape[2] if mask.ndim == 3 else "?"
        return [
            Problem(
                file,
                "mask_not_binary",
                f"the mask has {channels} channels (shape {tuple(mask.shape)})"
                + (" that differ" if rule == "binary" else ""),
                "a single-channel mask",
                fix,
            )
        ]
    values = np.unique(mask)
    listed = values.tolist()
    if rule == "0/255":
        ok = set(listed) <= {0, 255}
        expected = "only 0 and 255"
        if set(listed) <= {0, 1}:
            fix = (
                "the mask is 0/1: multiply by 255 or re-run `vesselctl prepare` (0/1 masks "
                "train silently as almost-empty targets)"
            )
    else:
        ok = len(listed) <= 2 and (len(listed) < 2 or listed[0] == 0)
        expected = "0 and one other value (e.g. 0/255 or 0/1)"
    if ok:
        return []
    shown = ", ".join(str(v) for v in listed[:8]) + (", ..." if len(listed) > 8 else "")
    return [
        Problem(
            file,
            "mask_not_binary",
            f"the mask holds values {{{shown}}} ({len(listed)} distinct)",
            expected,
            fix,
        )
    ]


@dataclass(frozen=True)
class HashedImage:
    """One image's content hash and where it sits: the input to the duplicate check."""

    file: str
    split: str | None
    digest: str


def find_duplicates(images: Iterable[HashedImage]) -> list[Problem]:
    """Images with identical pixel content: leakage across splits (error), repeats within one.

    Files without a split (a plain LabelMe folder) count as one split: duplicates there will
    leak as soon as a split puts the copies on different sides.
    """
    groups: dict[str, list[HashedImage]] = defaultdict(list)
    for image in images:
        groups[image.digest].append(image)
    problems: list[Problem] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda g: g.file)
        splits = sorted({g.split or "" for g in group})
        for image in group:
            others = [g for g in group if g is not image]
            other_text = ", ".join(
                f"{g.file}" + (f" ({g.split})" if g.split else "") for g in others[:5]
            ) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            if len(splits) > 1:
                problems.append(
                    Problem(
                        image.file,
                        "split_leakage",
                        f"the image in split '{image.split}' has the same pixels as {other_text}",
                        "every image in exactly one split",
                        "delete the copies from the LabelMe folder, or give them one group "
                        "(split.group_pattern) and re-run `vesselctl prepare`",
                    )
                )
            else:
                problems.append(
                    Problem(
                        image.file,
                        "duplicate_image",
                        f"the image has the same pixels as {other_text}",
                        "each image once",
                        "delete the copy; if kept, a split can put the copies on both sides "
                        "(leakage)",
                    )
                )
    return problems


def find_group_leakage(records: Iterable[tuple[str, str, str]]) -> list[Problem]:
    """Groups (e.g. patients, from prepare's ``split.group_pattern``) whose images sit in more
    than one split: ``records`` are (file, split, group) of a prepared dataset."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    records = list(records)
    for _, split, group in records:
        splits_of[group].add(split)
    problems = []
    for file, split, group in records:
        splits = splits_of[group]
        if len(splits) > 1:
            problems.append(
                Problem(
                    file,
                    "split_leakage",
                    f"the image is in split '{split}' but its group '{group}' also has images in "
                    + ", ".join(sorted(splits - {split})),
                    "every group (e.g. patient) in exactly one split",
                    "re-run `vesselctl prepare` into a fresh folder (it splits by group); do "
                    "not edit manifest.jsonl or splits.json by hand",
                )
            )
    return problems


THUMBNAIL_SIDE = 16


def thumbnail(image: np.ndarray) -> np.ndarray | None:
    """A 16x16 gray thumbnail, zero mean and unit norm, for finding resized or re-encoded copies
    (None for a flat image, which has no pattern to compare)."""
    import cv2

    from vesselctl.data.images import to_uint8

    gray = to_uint8(image)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    side = THUMBNAIL_SIDE
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return (small / norm).ravel() if norm > 1e-6 else None


@dataclass(frozen=True)
class Thumbnail:
    """One image's thumbnail and content hash: the input to the near-duplicate check."""

    file: str
    split: str | None
    digest: str
    vector: np.ndarray


def find_near_duplicates(items: Sequence[Thumbnail], similarity: float) -> list[Problem]:
    """Images whose thumbnails correlate at least ``similarity`` (Pearson, 16x16 gray) with
    another image of different pixels: resized, re-encoded or lightly edited copies. Exact
    copies are left to ``find_duplicates``. Compared in blocks, so memory stays small."""
    if len(items) < 2:
        return []
    vectors = np.stack([t.vector for t in items])
    digests = np.array([t.digest for t in items])
    matches: dict[int, list[tuple[int, float]]] = defaultdict(list)
    block = 1024
    for begin in range(0, len(items), block):
        scores = vectors[begin : begin + block] @ vectors.T
        rows, cols = np.nonzero(scores >= similarity)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            i = begin + row
            if i != col and digests[i] != digests[col]:
                matches[i].append((col, float(scores[row, col])))
    problems = []
    for i in sorted(matches):
        item = items[i]
        others = sorted(matches[i], key=lambda m: -m[1])
        listed = ", ".join(
            f"{items[j].file}" + (f" ({items[j].split})" if items[j].split else "") + f" {r:.3f}"
            for j, r in others[:5]
        ) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        across = any(items[j].split != item.split for j, _ in others)
        problems.append(
            Problem(
                item.file,
                "near_duplicate",
                f"the image looks like {listed} (thumbnail correlation)"
                + (f"; this one is in split '{item.split}': possible leakage" if across else ""),
                f"no other image correlating {similarity} or more",
                "look at both: drop resized or re-saved copies, or keep them in one group; "
                "raise checks.near_duplicate_similarity if they are distinct images",
            )
        )
    return problems


def pixel_digest(image: np.ndarray) -> str:
    """Hash of decoded pixels (shape and dtype included): a PNG and a TIFF of one image match."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(f"{image.shape}|{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def find_unannotated_images(root: Path, used: Iterable[str]) -> list[Problem]:
    """Images under a LabelMe folder that no annotation uses (relative paths in ``used``).

    An image with a JSON of the same stem beside it counts as annotated even when that JSON
    could not be read (its own problems are reported already)."""
    from vesselctl.data.sources import IMAGE_SUFFIXES

    root = Path(root)
    used_set = set(used)
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .git and co
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relative = path.relative_to(root).as_posix()
            if (
                filename.startswith(".")
                or path.suffix.lower() not in IMAGE_SUFFIXES
                or relative in used_set
                or path.with_suffix(".json").is_file()
            ):
                continue
            problems.append(
                Problem(
                    relative,
                    "unannotated_image",
                    "no LabelMe JSON in the folder uses this image",
                    "an annotation for every image (prepare only reads images that JSON names)",
                    "annotate it in LabelMe, or move it out of the folder if it is not data",
                )
            )
    return problems


def count_by_check(problems: Sequence[Problem]) -> dict[str, int]:
    """Number of problems per check id, in the order of ``CHECKS``."""
    counts = {check: 0 for check in CHECKS}
    for problem in problems:
        counts[problem.check] += 1
    return {check: n for check, n in counts.items() if n}


def _recorded_sha256(extra: dict[str, Any], which: str) -> str | None:
    """The sha256 prepare recorded for a record's ``image`` or ``mask`` (``sha256_<which>``)."""
    value = extra.get(f"sha256_{which}")
    return value if isinstance(value, str) else None


def _read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__


@dataclass
class PairCheck:
    """What checking one image and its mask found; the arrays stay in the worker process."""

    problems: list[Problem]
    image: np.ndarray | None
    mask: np.ndarray | None


_PREPARED_FIX = "re-run `vesselctl prepare` into a fresh folder"
_INPUT_FIX = "re-export the file"


def check_prepared_record(root: Path, record: ManifestRecord, tiny_mask_pixels: int) -> PairCheck:
    """Every per-image check of a prepared dataset record: files, checksums, sizes, mask values
    (0/255 only), empty and tiny masks."""
    return _check_pair(
        record.image,
        record.image_path(root),
        record.mask or f"(mask of record '{record.id}')",
        record.mask_path(root),
        tiny_mask_pixels,
        "0/255",
        record,
    )


def check_mask_pair(
    root: Path, image_relative: str, mask_relative: str, tiny_mask_pixels: int
) -> PairCheck:
    """Every per-image check of an image + mask PNG pair (prepare's other input format): both
    readable, same size, the mask binary (0 and one other value), not empty or tiny."""
    return _check_pair(
        image_relative,
        Path(root) / image_relative,
        mask_relative,
        Path(root) / mask_relative,
        tiny_mask_pixels,
        "binary",
        None,
    )


def _check_pair(
    image_name: str,
    image_path: Path,
    mask_name: str,
    mask_path: Path | None,
    tiny_mask_pixels: int,
    rule: Literal["0/255", "binary"],
    record: ManifestRecord | None,
) -> PairCheck:
    """Shared by prepared records (``record`` given: checksums and recorded sizes too) and input
    image/mask pairs. Masks are decoded with OpenCV unchanged, not through ``read_image``, which
    would fold a 3-channel or alpha mask into one channel and hide the defect checked here."""
    import cv2

    from vesselctl.data.images import decode_image_bytes

    fix = _PREPARED_FIX if record is not None else _INPUT_FIX
    problems: list[Problem] = []
    image: np.ndarray | None = None
    data, error = _read_bytes(image_path)
    if data is None:
        problems.append(
            Problem(
                image_name,
                "image_missing" if error == "missing" else "image_unreadable",
                "the image is " + ("absent" if error == "missing" else f"unreadable ({error})"),
                "the image file" + (f" of manifest record '{record.id}'" if record else ""),
                fix,
            )
        )
    else:
        if record is not None:
            problems.extend(_checksum(image_name, record, "image", data))
        try:
            # Prepared images are already upright: no EXIF turn (prepare applied it).
            image = decode_image_bytes(data, image_name, apply_exif=record is None)
        except DatasetError as exc:
            problems.append(
                Problem(
                    image_name,
                    "image_unreadable",
                    f"cannot decode the image ({exc})",
                    "a complete, readable image",
                    fix,
                )
            )
    if (
        record is not None
        and image is not None
        and image.shape[:2] != (record.height, record.width)
    ):
        problems.append(
            Problem(
                image_name,
                "size_mismatch",
                f"the image is {image.shape[1]}x{image.shape[0]} (WxH) but manifest.jsonl says "
                f"{record.width}x{record.height} (record '{record.id}')",
                "the size recorded in the manifest",
                "re-run `vesselctl prepare`; do not edit prepared images by hand",
            )
        )

    mask_data, mask_error = _read_bytes(mask_path) if mask_path else (None, "missing")
    if mask_data is None:
        problems.append(
            Problem(
                mask_name,
                "mask_missing" if mask_error == "missing" else "mask_unreadable",
                (
                    f"manifest record '{record.id}' gives no mask"
                    if mask_path is None and record is not None
                    else "the mask file is "
                    + ("absent" if mask_error == "missing" else f"unreadable ({mask_error})")
                ),
                f"a mask for the image {image_name}",
                fix,
            )
        )
        return PairCheck(problems, image, None)
    if record is not None:
        problems.extend(_checksum(mask_name, record, "mask", mask_data))
    raw_mask = cv2.imdecode(np.frombuffer(mask_data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw_mask is None:
        problems.append(
            Problem(
                mask_name,
                "mask_unreadable",
                "cannot decode the mask; the file is truncated or not an image",
                "a single-channel PNG",
                fix,
            )
        )
        return PairCheck(problems, image, None)
    problems.extend(check_mask_values(mask_name, raw_mask, rule))
    mask = raw_mask if raw_mask.ndim == 2 else raw_mask[..., 0]
    if image is not None and mask.shape[:2] != image.shape[:2]:
        problems.append(
            Problem(
                mask_name,
                "mask_size_mismatch",
                f"the mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_name} "
                f"is {image.shape[1]}x{image.shape[0]}",
                "mask and image of the same size",
                fix if record is None else "re-run `vesselctl prepare`; do not resize by hand",
            )
        )
    problems.extend(check_mask_pixels(mask_name, int(np.count_nonzero(mask)), tiny_mask_pixels))
    return PairCheck(problems, image, mask)


def _checksum(name: str, record: ManifestRecord, which: str, data: bytes) -> list[Problem]:
    recorded = _recorded_sha256(record.extra, which)
    if recorded is None:
        return []
    actual = sha256_bytes(data)
    if actual == recorded.lower():
        return []
    return [
        Problem(
            name,
            "checksum_mismatch",
            f"sha256 {actual[:12]}... differs from manifest.jsonl's {recorded[:12]}... "
            f"(record '{record.id}')",
            "the file exactly as `vesselctl prepare` wrote it",
            "the file was changed after prepare: re-run `vesselctl prepare` into a fresh folder",
        )
    ]


@dataclass
class LabelmeCheck:
    """What checking one LabelMe file found; the arrays stay in the worker process."""

    problems: list[Problem]
    image: np.ndarray | None
    mask: np.ndarray | None
    shapes_by_type: dict[str, int]
    shapes_by_label: dict[str, int]
    # The image file used, relative to the checked folder (None: embedded or not found).
    image_file: str | None = None


def check_labelme_file(
    root: Path,
    relative: str,
    roles: LabelRoles,
    options: RasterOptions,
    tiny_mask_pixels: int = 0,
    bounds_tolerance: float = 0.0,
    report_twists: bool = False,
    min_pocket_pixels: int = 1,
) -> LabelmeCheck:
    """Every per-file check of one LabelMe annotation, using the same parser and rasteriser as
    prepare: JSON and schema, the image (found, inside the folder, readable, declared size),
    labels against the label map, shape geometry, and the rasterised mask (empty or tiny)."""
    from vesselctl.data.images import decode_image_bytes
    from vesselctl.data.labelme import decode_mask_shape, parse_labelme, resolve_image_source
    from vesselctl.data.masks import rasterize_shapes

    document, parser_problems = parse_labelme(Path(root) / relative, relative)
    problems = [from_parser_problem(p) for p in parser_problems]
    if document is None:
        return LabelmeCheck(problems, None, None, {}, {})
    by_type = dict(Counter(s.shape_type for s in document.shapes))
    by_label = dict(Counter(s.label for s in document.shapes))

    # The image: found without leaving the folder, decodable, and of the declared size.
    source, source_problems = resolve_image_source(document, [Path(root)], relative)
    problems += [from_parser_problem(p) for p in source_problems]
    image: np.ndarray | None = None
    if source is not None:
        where = source.path.name if source.path is not None else "imageData"
        try:
            image = decode_image_bytes(source.read_bytes(), where)
        except DatasetError as exc:
            problems.append(
                Problem(
                    relative,
                    "image_unreadable",
                    f"the image cannot be read: {exc}",
                    "a complete PNG, JPEG, TIFF or BMP image",
                    "re-export the image, or re-save the annotation with its image in LabelMe",
                )
            )
    declared: tuple[int, int] | None = None
    if document.image_height is not None and document.image_width is not None:
        declared = (document.image_height, document.image_width)
    if image is not None and declared is not None and declared != image.shape[:2]:
        problems.append(
            Problem(
                relative,
                "size_mismatch",
                f"imageHeight/imageWidth say {declared[1]}x{declared[0]} (WxH) but the image is "
                f"{image.shape[1]}x{image.shape[0]}",
                "the size the shapes were drawn on",
                "if the image was resized after annotating, restore the original (prepare "
                "resizes image and shapes together); else correct imageHeight/imageWidth",
            )
        )
    size = (int(image.shape[0]), int(image.shape[1])) if image is not None else declared

    # Shapes: geometry, then labels against the label map. Bounds are those of the image the
    # shapes were drawn on: the declared size when there is one (a mismatch with the real image
    # is reported once above, not again for every shape that now sticks out).
    drawn_on = declared or size
    problems += check_shapes_geometry(
        relative, document.shapes, drawn_on, bounds_tolerance, report_twists, min_pocket_pixels
    )
    drawable = []
    for shape in document.shapes:
        if roles.role(shape.label) is None:
            known = sorted(roles.vessel | roles.hole | roles.ignore)
            problems.append(
                Problem(
                    relative,
                    "unknown_label",
                    f"{_shape_name(shape.index, shape.shape_type, shape.label)} has a label the "
                    "label map does not know",
                    f"one of {', '.join(known)}",
                    "rename the label in LabelMe, or add it to labels.vessel, labels.hole or "
                    "labels.ignore",
                    shape.index,
                )
            )
            continue
        if shape.shape_type == "mask":
            try:
                decode_mask_shape(shape, relative)
            except DatasetError as exc:
                problems.append(
                    Problem(
                        relative,
                        "json_schema",
                        f"shapes[{shape.index}].mask cannot be decoded: {exc}",
                        "the mask as base64 PNG",
                        "redraw the mask in LabelMe",
                        shape.index,
                    )
                )
                continue
        drawable.append(shape)

    # The mask as prepare would draw it (at the image's own size, no resizing).
    mask: np.ndarray | None = None
    if size is not None:
        mask = rasterize_shapes(drawable, roles, size[0], size[1], options=options, name=relative)
        problems += check_mask_pixels(relative, int(np.count_nonzero(mask)), tiny_mask_pixels)
    image_file = None
    if source is not None and source.path is not None:
        image_file = source.path.relative_to(Path(root).resolve()).as_posix()
    return LabelmeCheck(problems, image, mask, by_type, by_label, image_file)
