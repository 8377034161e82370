"""LabelMe annotation files: typed parsing, safe image resolution and dataset discovery.

Two modes share one parser:

* ``load_labelme(path)`` raises one ``DatasetError`` listing every problem in the file (prepare).
* ``parse_labelme(path)`` never raises for bad content: it returns the document it could build
  (or None) and a list of ``LabelmeProblem`` (validate reports them all at once).

Coordinates stay as LabelMe wrote them: ``x`` to the right, ``y`` down, in pixels of the image
as LabelMe showed it (EXIF orientation applied), where pixel ``(col, row)`` covers the square
``[col, col + 1) x [row, row + 1)``; see ``vesselctl.data.masks`` for how shapes become pixels.

``imagePath`` is read relative to the JSON file, with Windows ``\\`` separators accepted. A path
that resolves outside the allowed roots (by default the annotation folder given to prepare) is
refused, never read; a missing file falls back to the same file name next to the JSON, then to
the embedded ``imageData``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import orjson

from vesselctl.errors import DatasetError

#: Every LabelMe shape type vesselctl rasterises.
SHAPE_TYPES = (
    "polygon",
    "rectangle",
    "circle",
    "line",
    "linestrip",
    "point",
    "points",
    "mask",
    "oriented_rectangle",
)

#: Points a shape type needs: (minimum, maximum or None for no maximum).
POINT_COUNTS: dict[str, tuple[int, int | None]] = {
    "polygon": (3, None),
    "rectangle": (2, 2),
    "circle": (2, 2),
    "line": (2, 2),
    "linestrip": (2, None),
    "point": (1, 1),
    "points": (1, None),
    "mask": (2, 2),
    "oriented_rectangle": (4, 4),
}

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class LabelmeProblem:
    """One thing wrong with an annotation file, phrased so a user can fix it.

    ``shape_index`` is the 0-based position in ``shapes`` (None for file-level problems);
    ``field`` is the JSON key concerned (``imagePath``, ``points``...).
    """

    file: str
    field: str
    found: str
    expected: str
    fix: str
    shape_index: int | None = None
    severity: Severity = "error"
    code: str = "invalid"

    def message(self) -> str:
        """``file: shape 3 (field): found ...; expected ...; fix: ...`` on one line."""
        where = f"shape {self.shape_index} " if self.shape_index is not None else ""
        return (
            f"{self.file}: {where}{self.field}: {self.found}; expected {self.expected}; {self.fix}"
        )


@dataclass(frozen=True)
class LabelmeShape:
    """One entry of ``shapes``; ``points`` are the ``[x, y]`` pairs as written in the file.

    ``points`` is kept as the parsed JSON lists (no per-point conversion: vessel outlines carry
    thousands of points); ``array()`` gives them as an (N, 2) float array.
    """

    index: int
    label: str
    shape_type: str
    points: Sequence[Sequence[float]]
    group_id: int | None = None
    description: str = ""
    flags: dict[str, Any] = field(default_factory=dict, compare=False)
    mask_png_base64: str | None = field(default=None, repr=False, compare=False)
    xy: np.ndarray | None = field(default=None, repr=False, compare=False)

    def array(self) -> np.ndarray:
        """``points`` as an (N, 2) float64 array (x, y)."""
        if self.xy is not None:
            return self.xy
        return np.asarray(self.points, dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class LabelmeDocument:
    """A parsed LabelMe file. ``path`` is where it was read from."""

    path: Path
    version: str | None
    shapes: tuple[LabelmeShape, ...]
    image_path: str | None
    image_data_base64: str | None = field(repr=False, compare=False)
    image_height: int | None
    image_width: int | None
    flags: dict[str, Any] = field(default_factory=dict, compare=False)

    def labels(self) -> list[str]:
        """Labels in order of first appearance."""
        return list(dict.fromkeys(s.label for s in self.shapes))


@dataclass(frozen=True)
class ImageSource:
    """Where an annotation's pixels come from: a file on disk or the embedded ``imageData``."""

    kind: Literal["file", "embedded"]
    path: Path | None
    data: bytes | None = field(default=None, repr=False, compare=False)

    def read_bytes(self) -> bytes:
        """The encoded image bytes (PNG, JPEG, TIFF...)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise DatasetError("an image source needs a path or embedded data")
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise DatasetError(
                f"{self.path}: cannot read the image ({exc.strerror}); check permissions"
            ) from exc


def _points_array(raw: Any) -> np.ndarray | None:
    """``points`` as an (N, 2) float array, or None unless it is a list of finite [x, y] pairs.

    numpy converts the whole list at once: vessel outlines carry thousands of points per file
    and a Python check per point would dominate prepare's run time.
    """
    if not isinstance(raw, list):
        return None
    if not raw:
        return np.zeros((0, 2), dtype=np.float64)
    try:
        array = np.asarray(raw)
    except (TypeError, ValueError):  # ragged lists
        return None
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != 2:
        return None  # strings, nulls, booleans-only or nested deeper
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        return None
    return array


def _parse_shape(
    raw: Any, index: int, name: str, problems: list[LabelmeProblem]
) -> LabelmeShape | None:
    """Check one shape dict; append problems; return the shape when it can be used."""
    if not isinstance(raw, dict):
        problems.append(
            LabelmeProblem(
                name,
                "shapes",
                f"an entry of type {type(raw).__name__}",
                "a JSON object",
                "fix or delete this entry in LabelMe",
                index,
                code="shape_not_object",
            )
        )
        return None
    ok = True
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        problems.append(
            LabelmeProblem(
                name,
                "label",
                f"label {label!r}",
                "a non-empty text label",
                "give the shape a label in LabelMe",
                index,
                code="bad_label",
            )
        )
        ok = False
    shape_type = raw.get("shape_type") or "polygon"  # LabelMe < 3 omitted it for polygons
    if shape_type not in SHAPE_TYPES:
        problems.append(
            LabelmeProblem(
                name,
                "shape_type",
                f"shape_type {shape_type!r}",
                f"one of {', '.join(SHAPE_TYPES)}",
                "redraw the shape with a supported tool",
                index,
                code="unknown_shape_type",
            )
        )
        ok = False
    raw_points = raw.get("points")
    xy = _points_array(raw_points)
    if xy is None:
        problems.append(
            LabelmeProblem(
                name,
                "points",
                f"points {str(raw_points)[:60]}",
                "a list of [x, y] pairs of finite numbers",
                "redraw the shape in LabelMe",
                index,
                code="bad_points",
            )
        )
        ok = False
        points: Sequence[Sequence[float]] = ()
    else:
        points = raw_points
    if ok:
        low, high = POINT_COUNTS[shape_type]
        if len(points) < low or (high is not None and len(points) > high):
            need = f"{low}" if high == low else (f"at least {low}" if high is None else "")
            problems.append(
                LabelmeProblem(
                    name,
                    "points",
                    f"a {shape_type} with {len(points)} points",
                    f"{need} points for a {shape_type}",
                    "redraw it in LabelMe or delete it",
                    index,
                    code="point_count",
                )
            )
            ok = False
    mask_b64 = raw.get("mask")
    if ok and shape_type == "mask" and not (isinstance(mask_b64, str) and mask_b64):
        problems.append(
            LabelmeProblem(
                name,
                "mask",
                "a mask shape without base64 PNG data in 'mask'",
                "the mask PNG as base64 text",
                "redraw the mask in LabelMe",
                index,
                code="mask_missing",
            )
        )
        ok = False
    group_id = raw.get("group_id")
    if group_id is not None and not (isinstance(group_id, int) and not isinstance(group_id, bool)):
        problems.append(
            LabelmeProblem(
                name,
                "group_id",
                f"group_id {group_id!r}",
                "an integer or null",
                "set the group id in LabelMe",
                index,
                severity="warning",
                code="bad_group_id",
            )
        )
        group_id = None
    description = raw.get("description") or ""
    flags = raw.get("flags") if isinstance(raw.get("flags"), dict) else {}
    if not ok:
        return None
    return LabelmeShape(
        index=index,
        label=label.strip(),
        shape_type=shape_type,
        points=points,
        group_id=group_id,
        description=str(description),
        flags=flags,
        mask_png_base64=mask_b64 if shape_type == "mask" else None,
        xy=xy,
    )


def parse_labelme_data(
    data: Any, path: Path, display_name: str | None = None
) -> tuple[LabelmeDocument | None, list[LabelmeProblem]]:
    """Build a document from already-decoded JSON; every problem found goes into the list."""
    name = display_name or str(path)
    problems: list[LabelmeProblem] = []
    if not isinstance(data, dict):
        problems.append(
            LabelmeProblem(
                name,
                "(top level)",
                f"a JSON {type(data).__name__}",
                "a JSON object with 'shapes' and 'imagePath'",
                "this is not a LabelMe file; remove it from the folder",
                code="not_labelme",
            )
        )
        return None, problems
    raw_shapes = data.get("shapes")
    if not isinstance(raw_shapes, list):
        problems.append(
            LabelmeProblem(
                name,
                "shapes",
                f"shapes of type {type(raw_shapes).__name__}",
                "a list of shapes",
                "this is not a LabelMe file; remove it or re-save it in LabelMe",
                code="not_labelme",
            )
        )
        return None, problems
    shapes = []
    for index, raw in enumerate(raw_shapes):
        shape = _parse_shape(raw, index, name, problems)
        if shape is not None:
            shapes.append(shape)
    image_path = data.get("imagePath")
    if image_path is not None and not isinstance(image_path, str):
        problems.append(
            LabelmeProblem(
                name,
                "imagePath",
                f"imagePath {image_path!r}",
                "a relative path as text",
                "re-save the file in LabelMe",
                code="bad_image_path",
            )
        )
        image_path = None
    image_data = data.get("imageData")
    if image_data is not None and not isinstance(image_data, str):
        problems.append(
            LabelmeProblem(
                name,
                "imageData",
                f"imageData of type {type(image_data).__name__}",
                "base64 text or null",
                "re-save the file in LabelMe",
                code="bad_image_data",
            )
        )
        image_data = None
    if not image_path and not image_data:
        problems.append(
            LabelmeProblem(
                name,
                "imagePath",
                "neither imagePath nor imageData",
                "the image file name in imagePath or the image in imageData",
                "set imagePath to the image's file name",
                code="no_image",
            )
        )
    sizes: dict[str, int | None] = {}
    for key in ("imageHeight", "imageWidth"):
        value = data.get(key)
        if value is None:
            sizes[key] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sizes[key] = value
        else:
            problems.append(
                LabelmeProblem(
                    name,
                    key,
                    f"{key} {value!r}",
                    "a positive integer",
                    "re-save the file in LabelMe",
                    code="bad_size",
                )
            )
            sizes[key] = None
    version = data.get("version")
    document = LabelmeDocument(
        path=Path(path),
        version=str(version) if version is not None else None,
        shapes=tuple(shapes),
        image_path=image_path or None,
        image_data_base64=image_data or None,
        image_height=sizes["imageHeight"],
        image_width=sizes["imageWidth"],
        flags=data.get("flags") if isinstance(data.get("flags"), dict) else {},
    )
    return document, problems


def parse_labelme(
    path: Path, display_name: str | None = None
) -> tuple[LabelmeDocument | None, list[LabelmeProblem]]:
    """Lenient parse of one LabelMe file: never raises for bad content, returns all problems.

    ``display_name`` (e.g. the path relative to the dataset root) is used in messages.
    """
    path = Path(path)
    name = display_name or str(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        return None, [
            LabelmeProblem(
                name,
                "(file)",
                f"unreadable ({exc.strerror})",
                "a readable JSON file",
                "check the file's permissions",
                code="unreadable",
            )
        ]
    try:
        # orjson: faster than json on coordinate-heavy files, same results for the
        # JSON LabelMe writes (it also rejects NaN/Infinity, which are not JSON).
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, [
            LabelmeProblem(
                name,
                "(file)",
                f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})",
                "a complete JSON document",
                "the file is truncated or corrupt: re-save it from LabelMe",
                code="bad_json",
            )
        ]
    return parse_labelme_data(data, path, name)


def load_labelme(path: Path, display_name: str | None = None) -> LabelmeDocument:
    """Strict parse: the document, or one DatasetError listing every error in the file."""
    document, problems = parse_labelme(path, display_name)
    errors = [p for p in problems if p.severity == "error"]
    if document is None or errors:
        raise DatasetError("; ".join(p.message() for p in errors))
    return document


def _split_stored_path(text: str) -> list[str]:
    """Split an ``imagePath`` written on any OS into its parts (``\\`` and ``/`` both separate)."""
    if "\\" in text or (len(text) > 1 and text[1] == ":"):
        return list(PureWindowsPath(text).parts)
    return list(PurePosixPath(text).parts)


def _is_absolute_stored(text: str) -> bool:
    return (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or (len(text) > 1 and text[1] == ":")
    )


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_image_source(
    document: LabelmeDocument,
    allowed_roots: Iterable[Path] | None = None,
    display_name: str | None = None,
) -> tuple[ImageSource | None, list[LabelmeProblem]]:
    """Find the image of ``document`` without ever leaving ``allowed_roots``.

    Order: ``imagePath`` relative to the JSON (``\\`` accepted); if that file is absent, the
    same file name next to the JSON (annotations moved with their images); then the embedded
    ``imageData``. A path that resolves (symlinks included) outside every allowed root is
    refused and reported; it is never opened. ``allowed_roots`` defaults to the JSON's folder.
    """
    name = display_name or str(document.path)
    json_dir = document.path.resolve().parent
    roots = [Path(r).resolve() for r in (allowed_roots or [json_dir])]
    problems: list[LabelmeProblem] = []
    candidates: list[Path] = []
    stored = document.image_path
    if stored:
        parts = _split_stored_path(stored)
        if _is_absolute_stored(stored):
            problems.append(
                LabelmeProblem(
                    name,
                    "imagePath",
                    f"an absolute path {stored!r}",
                    "a path relative to the JSON file",
                    "store the image beside the JSON and set imagePath to its file name",
                    severity="warning",
                    code="absolute_image_path",
                )
            )
        else:
            candidates.append(json_dir.joinpath(*parts))
        if parts:
            candidates.append(json_dir / parts[-1])
    for candidate in dict.fromkeys(candidates):
        resolved = Path(os.path.realpath(candidate))
        if not _inside(resolved, roots):
            problems.append(
                LabelmeProblem(
                    name,
                    "imagePath",
                    f"{stored!r} resolves outside the dataset folder",
                    "a path inside " + ", ".join(str(r) for r in roots),
                    "copy the image into the dataset folder and fix imagePath",
                    code="image_path_escapes",
                )
            )
            continue
        if resolved.is_file():
            return ImageSource("file", resolved), problems
    if document.image_data_base64:
        try:
            data = base64.b64decode(document.image_data_base64, validate=True)
        except (binascii.Error, ValueError):
            problems.append(
                LabelmeProblem(
                    name,
                    "imageData",
                    "imageData that is not valid base64",
                    "base64 image bytes",
                    "re-save the file in LabelMe",
                    code="bad_image_data",
                )
            )
        else:
            return ImageSource("embedded", None, data), problems
    problems.append(
        LabelmeProblem(
            name,
            "imagePath",
            f"no image at {stored!r} and no imageData",
            "the image file next to the JSON, or embedded imageData",
            "copy the image next to the JSON file or re-save with 'Save image data' on",
            code="missing_image",
        )
    )
    return None, problems


def decode_mask_shape(shape: LabelmeShape, name: str = "") -> Any:
    """The boolean array of a ``mask`` shape (rows x cols of its bounding box). Needs numpy/cv2."""
    import numpy as np

    from vesselctl.data.images import decode_image_bytes

    if shape.mask_png_base64 is None:
        raise DatasetError(f"{name}: shape {shape.index} is a mask shape without mask data")
    try:
        png = base64.b64decode(shape.mask_png_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DatasetError(
            f"{name}: shape {shape.index} mask: not valid base64; redraw the mask in LabelMe"
        ) from exc
    array = decode_image_bytes(png, f"{name}: shape {shape.index} mask", apply_exif=False)
    if array.ndim == 3:
        array = array[..., 0]
    return np.asarray(array) > 0


def find_labelme_files(root: Path) -> list[Path]:
    """Every ``*.json`` under ``root`` (recursive, sorted, hidden folders skipped)."""
    return [path for _, path in labelme_files_with_relatives(root)]


def labelme_files_with_relatives(root: Path) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every ``*.json`` under ``root``, sorted by the former.

    The relative paths are built as text during the walk (``Path.relative_to`` on thousands of
    files took longer than the walk itself).
    """
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        prefix = folder.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        for filename in filenames:
            if filename.lower().endswith(".json") and not filename.startswith("."):
                found.append((prefix + filename, folder / filename))
    found.sort(key=lambda pair: pair[0])
    return found
