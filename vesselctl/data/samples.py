"""Turning one source (a LabelMe JSON, or an image + mask pair) into an output image and mask.

This is the per-file work of prepare, run in worker processes: read, check, rasterise at the
output size, resize the image (or copy a plain PNG already at that size), write both PNGs
(atomically) and return what the manifest and Sa2VA's annotations.json need. Problems are
returned as messages, not raised, so the stage can report every bad file at once.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.context
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from vesselctl.data.images import (
    decode_image_bytes,
    encode_png,
    plain_png,
    resize_image,
    to_uint8,
)
from vesselctl.data.labelme import parse_labelme, resolve_image_source
from vesselctl.data.masks import (
    LabelRoles,
    RasterOptions,
    mask_to_coco_rle,
    mask_to_keyhole_polygons,
    rasterize_shapes,
    resample_mask,
)
from vesselctl.data.sources import SourceItem
from vesselctl.errors import DatasetError
from vesselctl.files import sha256_bytes


@dataclass(frozen=True)
class SampleConfig:
    """What every worker needs to process a source; small and picklable."""

    out_dir: Path
    height: int | None
    width: int | None
    roles: LabelRoles
    raster: RasterOptions
    png_mode: str
    allowed_roots: tuple[Path, ...]
    phrase: str = "blood vessels"
    sa2va_masks: str = "rle"  # how annotations.json stores masks: "rle" or "polygons"


@dataclass
class SampleResult:
    """The outcome for one source: ``errors`` empty means both PNGs were written."""

    id: str
    relative: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    height: int = 0
    width: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    sa2va_entry: str = ""  # this image's entry of Sa2VA's annotations.json, as JSON text

    @property
    def ok(self) -> bool:
        return not self.errors


def write_file_unsynced(path: Path, data: bytes) -> None:
    """Write through a temp file + rename (never a half-written file under the final name).

    No fsync per file: thousands of small fsyncs dominate prepare's run time on slow disks.
    The stage flushes everything once (``flush_to_disk``) before writing the manifest, so a
    manifest on disk implies its images and masks are on disk too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flush_to_disk(paths: Iterable[Path]) -> None:
    """Make written files durable: one sync() where the OS has it, else fsync per file.

    ``paths`` is only iterated without sync() (a generator costs nothing where it is there).
    """
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:  # pragma: no cover - Windows
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())


def worker_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """Process start method for the worker pools of prepare and validate.

    forkserver: workers fork from a server process that imported numpy/OpenCV/this module (and
    the modules in ``preload``) once, a fraction of spawn's start-up per worker, and it is safe
    where plain fork is not (the parent runs a progress-bar thread and OpenCV's thread pool).
    Windows has only spawn.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "cv2", "shapely", *preload])
    return context


def init_worker() -> None:
    """One OpenCV thread per worker process: the pool already uses every core."""
    import cv2

    cv2.setNumThreads(1)


def image_relpath(item_id: str) -> str:
    return f"images/{item_id}.png"


def mask_relpath(item_id: str) -> str:
    return f"masks/{item_id}.png"


def _output_size(config: SampleConfig, in_h: int, in_w: int) -> tuple[int, int]:
    if config.height is None or config.width is None:
        return in_h, in_w
    return config.height, config.width


def sa2va_entry_text(image_name: str, segments: list[Any], phrase: str) -> str:
    """One entry of Sa2VA's annotations.json: all segments form one object (the vessels).

    A segment is a flat polygon (numpy array) or a COCO RLE dict (see masks.mask_to_coco_rle);
    the official loader decodes each with pycocotools ``frPyObjects([segment], h, w)`` and adds
    them up. orjson writes the numpy arrays directly, faster than ``json`` with the numbers
    converted one by one (thousands per image).
    """
    entry = {"image": image_name, "mask": [segments], "text": [phrase]}
    return orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _write_outputs(
    result: SampleResult, config: SampleConfig, image_png: bytes, mask: np.ndarray
) -> None:
    mask = np.asarray(mask, dtype=bool)
    mask_png = encode_png(mask.view(np.uint8) * np.uint8(255), config.png_mode, "mask")
    write_file_unsynced(config.out_dir / image_relpath(result.id), image_png)
    write_file_unsynced(config.out_dir / mask_relpath(result.id), mask_png)
    result.height, result.width = int(mask.shape[0]), int(mask.shape[1])
    result.info["sha256_image"] = sha256_bytes(image_png)
    result.info["sha256_mask"] = sha256_bytes(mask_png)
    vessel_pixels = int(np.count_nonzero(mask))
    result.info["vessel_fraction"] = round(vessel_pixels / mask.size, 6)
    segments: list[Any]
    if config.sa2va_masks == "polygons":
        segments = mask_to_keyhole_polygons(mask)
        result.info["polygon_points"] = sum(len(p) // 2 for p in segments)
    else:
        rle = mask_to_coco_rle(mask)
        result.info["rle_runs"] = len(rle["counts"])
        segments = [rle]
    if vessel_pixels:
        # Encoded here, in the worker: serialising thousands of numbers is real work and the
        # main process would otherwise do it for every image, one after another.
        result.sa2va_entry = sa2va_entry_text(f"{result.id}.png", segments, config.phrase)
    else:
        result.warnings.append(f"{result.relative}: the vessel mask is empty")


@dataclass(frozen=True)
class _SourceImage:
    """A source image as read: its size, and either its decoded pixels or plain PNG bytes."""

    height: int
    width: int
    dtype: str
    channels: int
    pixels: np.ndarray | None  # None: ``data`` is a plain PNG (see images.plain_png)
    data: bytes


def _read_source_image(data: bytes, name: str) -> _SourceImage:
    """Decode ``data``, unless it is a plain 8-bit PNG whose bytes can be copied as they are."""
    plain = plain_png(data)
    if plain is not None:
        return _SourceImage(plain.height, plain.width, "uint8", plain.channels, None, data)
    pixels = decode_image_bytes(data, name)
    channels = 1 if pixels.ndim == 2 else 3
    return _SourceImage(*pixels.shape[:2], str(pixels.dtype), channels, pixels, data)


def _output_image_png(
    source: _SourceImage, config: SampleConfig, out_h: int, out_w: int, name: str
) -> bytes:
    """The output image's PNG bytes.

    A plain PNG already at the output size is copied (in ``fast`` mode): it is lossless and
    the same pixels as a decode + re-encode, for 0.11 ms of reading and CRC checks instead of
    the I/O floor's 3.6-3.8 ms of CPU per 512x512 image (BENCHMARKS.md). Otherwise the pixels
    are decoded, made 8-bit, resized and encoded.
    """
    same_size = (source.height, source.width) == (out_h, out_w)
    if source.pixels is None and same_size and config.png_mode == "fast":
        return source.data
    pixels = source.pixels
    if pixels is None:
        pixels = decode_image_bytes(source.data, name)
    image = resize_image(to_uint8(pixels), out_h, out_w)
    return encode_png(image, config.png_mode, "image")


def _size_info(image: _SourceImage, out_h: int, out_w: int) -> dict[str, Any]:
    """The manifest's record of the source image and its scale to the output (both inputs)."""
    return {
        "orig_height": image.height,
        "orig_width": image.width,
        "orig_dtype": image.dtype,
        "channels": image.channels,
        "scale_y": out_h / image.height,
        "scale_x": out_w / image.width,
    }


def _prepare_labelme(item: SourceItem, config: SampleConfig, result: SampleResult) -> None:
    name = item.relative
    document, problems = parse_labelme(item.annotation, name)
    result.errors.extend(p.message() for p in problems if p.severity == "error")
    result.warnings.extend(p.message() for p in problems if p.severity == "warning")
    if document is None:
        return
    unknown = config.roles.unknown(s.label for s in document.shapes)
    if unknown:
        result.errors.append(
            f"{name}: label(s) {', '.join(repr(u) for u in unknown)} are not in the label map; "
            "add them to labels.vessel, labels.hole or labels.ignore"
        )
    source, source_problems = resolve_image_source(document, config.allowed_roots, name)
    result.errors.extend(p.message() for p in source_problems if p.severity == "error")
    result.warnings.extend(p.message() for p in source_problems if p.severity == "warning")
    if source is None or result.errors:
        return
    image = _read_source_image(source.read_bytes(), name)
    in_h, in_w = image.height, image.width
    declared = (document.image_height, document.image_width)
    if None not in declared and declared != (in_h, in_w):
        result.errors.append(
            f"{name}: imageHeight x imageWidth say {declared[0]}x{declared[1]} but the image is "
            f"{in_h}x{in_w} (after EXIF orientation); the annotation was made on another image: "
            "re-open and re-save it in LabelMe"
        )
        return
    out_h, out_w = _output_size(config, in_h, in_w)
    scale_y, scale_x = out_h / in_h, out_w / in_w
    mask = rasterize_shapes(
        document.shapes, config.roles, out_h, out_w, scale_y, scale_x, config.raster, name
    )
    image_png = _output_image_png(image, config, out_h, out_w, name)
    result.info.update(
        {
            "image_source": "embedded" if source.kind == "embedded" else "file",
            **_size_info(image, out_h, out_w),
            "shape_counts": dict(sorted(Counter(s.shape_type for s in document.shapes).items())),
            "label_counts": dict(sorted(Counter(s.label for s in document.shapes).items())),
        }
    )
    _write_outputs(result, config, image_png, mask)


def _prepare_mask_pair(item: SourceItem, config: SampleConfig, result: SampleResult) -> None:
    name = item.relative
    if item.image is None:  # pragma: no cover - sources always pair an image
        raise DatasetError(f"{name}: image/mask source without an image")
    image = _read_source_image(item.image.read_bytes(), name)
    mask_name = item.annotation.name
    raw_mask = decode_image_bytes(item.annotation.read_bytes(), mask_name, apply_exif=False)
    if raw_mask.ndim == 3:
        if not (raw_mask == raw_mask[..., :1]).all():
            result.errors.append(
                f"{name}: mask {mask_name} is a colour image; expected a single-channel binary "
                "PNG (0/255 or 0/1)"
            )
            return
        raw_mask = raw_mask[..., 0]
    values = np.unique(raw_mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6])
        result.errors.append(
            f"{name}: mask {mask_name} holds values {shown}{'...' if len(values) > 6 else ''}; "
            "expected a binary mask (0 and one other value, e.g. 0/255); re-export it as PNG "
            "without anti-aliasing"
        )
        return
    in_h, in_w = image.height, image.width
    if raw_mask.shape != (in_h, in_w):
        result.errors.append(
            f"{name}: mask {mask_name} is {raw_mask.shape[0]}x{raw_mask.shape[1]} but the image "
            f"is {in_h}x{in_w}; expected the same size"
        )
        return
    out_h, out_w = _output_size(config, in_h, in_w)
    mask = resample_mask(raw_mask > 0, out_h, out_w)
    image_png = _output_image_png(image, config, out_h, out_w, name)
    result.info.update(
        {
            "image_source": "file",
            "mask_source": item.annotation.name,
            **_size_info(image, out_h, out_w),
            "shape_counts": {},
            "label_counts": {},
        }
    )
    _write_outputs(result, config, image_png, mask)


def prepare_sample(item: SourceItem, config: SampleConfig) -> SampleResult:
    """Process one source; a DatasetError from a bad file becomes an entry in ``errors``."""
    result = SampleResult(id=item.id, relative=item.relative)
    result.info["source"] = item.relative
    # A LabelMe file becomes thousands of small lists that only reference counting frees;
    # the cyclic garbage collector would scan them again and again (BENCHMARKS.md: read +
    # parse JSON 1.28 -> 0.32 ms per file with it off).
    collecting = gc.isenabled()
    gc.disable()
    try:
        if item.kind == "labelme":
            _prepare_labelme(item, config, result)
        else:
            _prepare_mask_pair(item, config, result)
    except DatasetError as exc:
        result.errors.append(str(exc))
    except OSError as exc:
        result.errors.append(f"{item.relative}: cannot read ({exc.strerror or exc})")
    finally:
        if collecting:
            gc.enable()
    return result
