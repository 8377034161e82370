"""Dataset checks: each looks at one thing and returns ``Problem`` records; bad data never raises.

Every check has an id and a fixed severity (``CHECKS``): an *error* is something that makes
training or evaluation wrong or impossible (unreadable files, wrong sizes, unknown labels,
leakage between splits, masks that are not 0/255); a *warning* is something that is legal but
usually a mistake (self-intersecting or zero-area shapes, points outside the image that will be
clipped, empty or tiny masks, the same image twice within one split).

A problem names the file (relative to the checked folder), the shape (``shapes[i]``, the index in
the JSON's ``shapes`` list, counting from 0), what was found, what was expected and the fix.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vesselctl.data.labelme import LabelmeProblem, LabelmeShape
from vesselctl.data.manifest import ManifestRecord
from vesselctl.data.masks import LabelRoles, RasterOptions
from vesselctl.errors import DatasetError
from vesselctl.files import sha256_bytes

Severity = Literal["error", "warning"]


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
        CheckInfo("image_outside", "error", "imagePath points outside the dataset folder"),
        CheckInfo("image_unreadable", "error", "image file is truncated or not an image"),
        CheckInfo("size_mismatch", "error", "declared image size differs from the real image"),
        CheckInfo("unknown_label", "error", "shape label is not in the label map"),
        CheckInfo("unknown_shape_type", "error", "shape_type is not one LabelMe writes"),
        CheckInfo("point_count", "error", "shape has too few points for its type (e.g. < 3)"),
        CheckInfo("zero_area", "warning", "shape covers no area (collinear or repeated points)"),
        CheckInfo("self_intersection", "warning", "polygon crosses itself (shapely)"),
        CheckInfo("out_of_bounds", "warning", "shape points lie outside the image (clipped)"),
        CheckInfo("empty_mask", "warning", "image has no vessel pixels"),
        CheckInfo("tiny_mask", "warning", "image has fewer vessel pixels than the threshold"),
        CheckInfo("duplicate_image", "warning", "same image content twice within one split"),
        CheckInfo("split_leakage", "error", "same image content in two different splits"),
        CheckInfo("mask_missing", "error", "mask file of a prepared image is absent"),
        CheckInfo("mask_unreadable", "error", "mask file is truncated or not an image"),
        CheckInfo("mask_not_binary", "error", "mask is not single-channel with values 0/255"),
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
) -> list[Problem]:
    """Geometry checks of a file's parsed shapes: zero area, crossing edges, points outside.

    Point counts and shape types are checked by the parser (``vesselctl.data.labelme``); this
    sees shapes that passed it. ``image_size`` is (height, width) of the real image (or the
    declared one when the image cannot be read; None skips the bounds check). A point is inside
    when 0 <= x <= width and 0 <= y <= height, widened by ``bounds_tolerance`` pixels.

    All shapes of a file are checked in one vectorised pass (annotations converted from masks
    carry ~10,000 points per file; a Python loop per point or per shape would dominate).
    """
    shapes = [s for s in shapes if s.points]
    if not shapes:
        return []
    counts = np.fromiter((len(s.points) for s in shapes), dtype=np.int64, count=len(shapes))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(s.points for s in shapes))
    points = np.fromiter(flat, dtype=np.float64, count=2 * int(counts.sum())).reshape(-1, 2)
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

    # Crossing edges (shapely/GEOS, all polygons at once). A ring that only touches itself
    # ("Ring Self-intersection", e.g. outlines traced from pixel masks) fills the same under the
    # even-odd rule and is not reported; edges that cross leave unfilled pockets.
    if crossing_candidates:
        import shapely

        chosen = np.asarray(crossing_candidates)
        ring_ids = np.repeat(np.arange(len(chosen)), counts[chosen])
        select = np.concatenate([np.arange(starts[k], starts[k] + counts[k]) for k in chosen])
        polygons = shapely.polygons(shapely.linearrings(points[select], indices=ring_ids))
        reasons = shapely.is_valid_reason(polygons)
        for k, reason in zip(chosen.tolist(), reasons.tolist(), strict=True):
            if not str(reason).startswith("Self-intersection"):
                continue
            shape = shapes[k]
            findings[k].append(
                Problem(
                    file,
                    "self_intersection",
                    f"{_shape_name(shape.index, shape.shape_type, shape.label)} has edges that "
                    f"cross ({reason})",
                    "a polygon whose edges do not cross",
                    "move the crossing points in LabelMe; crossings leave unfilled pockets "
                    "(for loops, draw the gap as its own 'hole' shape)",
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


def check_mask_values(file: str, mask: np.ndarray) -> list[Problem]:
    """A prepared mask must be one channel holding only 0 and 255."""
    if mask.ndim != 2:
        channels = mask.shape[2] if mask.ndim == 3 else "?"
        return [
            Problem(
                file,
                "mask_not_binary",
                f"the mask has {channels} channels (shape {tuple(mask.shape)})",
                "a single-channel mask",
                "re-run `vesselctl prepare`, which writes single-channel 0/255 PNG masks",
            )
        ]
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        return []
    shown = ", ".join(str(v) for v in values[:8].tolist()) + (", ..." if len(values) > 8 else "")
    fix = "re-run `vesselctl prepare`, which writes 0/255 masks"
    if set(values.tolist()) <= {0, 1}:
        fix = "the mask is 0/1: multiply by 255 or re-run `vesselctl prepare` (0/1 masks train "
        "silently as almost-empty targets)"
    return [
        Problem(
            file,
            "mask_not_binary",
            f"the mask holds values {{{shown}}} ({len(values)} distinct)",
            "only 0 and 255",
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


def pixel_digest(image: np.ndarray) -> str:
    """Hash of decoded pixels (shape and dtype included): a PNG and a TIFF of one image match."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(f"{image.shape}|{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def count_by_check(problems: Sequence[Problem]) -> dict[str, int]:
    """Number of problems per check id, in the order of ``CHECKS``."""
    counts = {check: 0 for check in CHECKS}
    for problem in problems:
        counts[problem.check] += 1
    return {check: n for check, n in counts.items() if n}


def _recorded_sha256(extra: dict[str, Any], which: str) -> str | None:
    """The sha256 a manifest record gives for its ``image`` or ``mask`` file, if any.

    Accepted layouts: ``"sha256": {"image": ..., "mask": ...}``, ``"<which>_sha256": ...`` and,
    for the image only, ``"sha256": "<hex>"``.
    """
    value = extra.get("sha256")
    if isinstance(value, dict) and isinstance(value.get(which), str):
        return value[which]
    if isinstance(extra.get(f"{which}_sha256"), str):
        return extra[f"{which}_sha256"]
    if which == "image" and isinstance(value, str):
        return value
    return None


def _read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__


@dataclass
class PreparedCheck:
    """What checking one manifest record found; the arrays stay in the worker process."""

    problems: list[Problem]
    image: np.ndarray | None
    mask: np.ndarray | None


def check_prepared_record(
    root: Path, record: ManifestRecord, tiny_mask_pixels: int
) -> PreparedCheck:
    """Every per-image check of a prepared dataset record: files, checksums, sizes, mask values.

    Masks are decoded with OpenCV unchanged (not through ``read_image``, which would fold a
    3-channel or alpha mask into one channel and hide the defect this check is for).
    """
    import cv2

    from vesselctl.data.images import decode_image_bytes

    problems: list[Problem] = []
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    image_name = record.image
    data, error = _read_bytes(record.image_path(root))
    if data is None:
        problems.append(
            Problem(
                image_name,
                "image_missing" if error == "missing" else "image_unreadable",
                f"manifest record '{record.id}' names this image but it is "
                + ("absent" if error == "missing" else f"unreadable ({error})"),
                "the image written by `vesselctl prepare`",
                "re-run `vesselctl prepare` into a fresh folder",
            )
        )
    else:
        problems.extend(_checksum(image_name, record, "image", data))
        try:
            image = decode_image_bytes(data, image_name, apply_exif=False)
        except DatasetError as exc:
            problems.append(
                Problem(
                    image_name,
                    "image_unreadable",
                    f"cannot decode the image ({exc})",
                    "a readable PNG",
                    "re-run `vesselctl prepare` into a fresh folder",
                )
            )
    if image is not None and image.shape[:2] != (record.height, record.width):
        problems.append(
            Problem(
                image_name,
                "size_mismatch",
                f"the image is {image.shape[1]}x{image.shape[0]} but manifest.jsonl says "
                f"{record.width}x{record.height} (record '{record.id}')",
                "the size recorded in the manifest",
                "re-run `vesselctl prepare`; do not edit prepared images by hand",
            )
        )

    mask_path = record.mask_path(root)
    mask_name = record.mask or f"(mask of record '{record.id}')"
    mask_data, mask_error = _read_bytes(mask_path) if mask_path else (None, "missing")
    if mask_data is None:
        problems.append(
            Problem(
                mask_name,
                "mask_missing" if mask_error == "missing" else "mask_unreadable",
                (
                    f"manifest record '{record.id}' gives no mask"
                    if mask_path is None
                    else "the mask file is "
                    + ("absent" if mask_error == "missing" else f"unreadable ({mask_error})")
                ),
                "a mask for every prepared image",
                "re-run `vesselctl prepare` into a fresh folder",
            )
        )
        return PreparedCheck(problems, image, None)
    problems.extend(_checksum(mask_name, record, "mask", mask_data))
    raw_mask = cv2.imdecode(np.frombuffer(mask_data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw_mask is None:
        problems.append(
            Problem(
                mask_name,
                "mask_unreadable",
                "cannot decode the mask; the file is truncated or not an image",
                "a single-channel PNG",
                "re-run `vesselctl prepare` into a fresh folder",
            )
        )
        return PreparedCheck(problems, image, None)
    value_problems = check_mask_values(mask_name, raw_mask)
    problems.extend(value_problems)
    mask = raw_mask if raw_mask.ndim == 2 else raw_mask[..., 0]
    if image is not None and mask.shape[:2] != image.shape[:2]:
        problems.append(
            Problem(
                mask_name,
                "mask_size_mismatch",
                f"the mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_name} is "
                f"{image.shape[1]}x{image.shape[0]}",
                "mask and image of the same size",
                "re-run `vesselctl prepare`; do not resize masks or images by hand",
            )
        )
    problems.extend(check_mask_pixels(mask_name, int(np.count_nonzero(mask)), tiny_mask_pixels))
    return PreparedCheck(problems, image, mask)


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


def check_labelme_file(
    root: Path,
    relative: str,
    roles: LabelRoles,
    options: RasterOptions,
    tiny_mask_pixels: int = 0,
    bounds_tolerance: float = 0.0,
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
    declared = (document.image_height, document.image_width)
    if image is not None and None not in declared and declared != image.shape[:2]:
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
    if image is not None:
        size: tuple[int, int] | None = (int(image.shape[0]), int(image.shape[1]))
    elif None not in declared:
        size = (int(declared[0]), int(declared[1]))  # type: ignore[arg-type]
    else:
        size = None

    # Shapes: labels against the label map, then geometry.
    problems += check_shapes_geometry(relative, document.shapes, size, bounds_tolerance)
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
    return LabelmeCheck(problems, image, mask, by_type, by_label)
