"""`vesselctl validate`: check annotations or a prepared dataset and report every problem at once.

PATH may be a LabelMe folder, a folder of images with mask PNGs, or a prepared dataset.

Reads top to bottom: find what PATH is and list its files; check every file in worker processes
(each returns its problems, a pixel hash and statistics); compare files with each other
(duplicates and leakage between splits); summarise; write the report when asked. Nothing is ever
written inside PATH.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vesselctl.data import checks
from vesselctl.data.checks import CHECKS, HashedImage, Problem
from vesselctl.data.manifest import SPLITS, ManifestRecord, is_prepared_dataset, read_manifest
from vesselctl.data.stats import ImageStats, image_stats, summarise
from vesselctl.errors import DatasetError
from vesselctl.files import atomic_write_bytes, atomic_write_json, run_provenance
from vesselctl.settings.base import write_resolved_settings
from vesselctl.settings.validate import ValidateSettings

VALIDATION_NAME = "validation.json"
Kind = Literal["labelme", "prepared", "mask_folder"]
Progress = Callable[[int, int], None]


@dataclass
class FileOutcome:
    """What checking one file produced; small and picklable (the pixels stay in the worker)."""

    file: str
    split: str | None
    problems: list[Problem]
    digest: str | None
    stats: ImageStats | None
    overlay_written: bool = False
    image_file: str | None = None  # LabelMe: the image file the annotation uses
    thumbnail: np.ndarray | None = None  # only when near duplicates are looked for


@dataclass
class ValidateResult:
    """The outcome of a validation run; ``failed`` decides the exit code."""

    path: Path
    kind: Kind
    files: int
    problems: list[Problem]
    stats: dict[str, Any]
    strict: bool
    seconds: float
    out_dir: Path | None = None
    overlays: int = 0
    by_check: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == "warning")

    @property
    def failed(self) -> bool:
        return self.errors > 0 or (self.strict and self.warnings > 0)

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "files": self.files,
            "errors": self.errors,
            "warnings": self.warnings,
            "strict": self.strict,
            "passed": not self.failed,
            "by_check": self.by_check,
            "overlays": self.overlays,
            "seconds": round(self.seconds, 3),
        }


def run(settings: ValidateSettings, progress: Progress | None = None) -> ValidateResult:
    """Check every file under ``settings.path``; write validation.json when ``settings.out``."""
    start = time.perf_counter()
    root = Path(settings.path)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: not a folder; expected a LabelMe folder or a prepared dataset folder"
        )

    # 1. What is PATH? A prepared dataset has manifest.jsonl; a folder with LabelMe JSON is
    #    annotations; otherwise images with mask PNGs (prepare's other input format).
    kind, tasks = _find_files(settings, root)

    # 2. Per-file checks, spread over processes; results come back in input order.
    outcomes = list(_map_files(settings, kind, tasks, progress))

    # 3. Checks across files: identical pixels in two files (leakage when splits differ), one
    #    group (patient) in two splits, images in a LabelMe folder that no annotation uses.
    problems = [p for outcome in outcomes for p in outcome.problems]
    problems += checks.find_duplicates(
        HashedImage(o.file, o.split, o.digest) for o in outcomes if o.digest is not None
    )
    if settings.checks.near_duplicates:
        problems += checks.find_near_duplicates(
            [
                checks.Thumbnail(o.file, o.split, o.digest, o.thumbnail)
                for o in outcomes
                if o.digest is not None and o.thumbnail is not None
            ],
            settings.checks.near_duplicate_similarity,
        )
    if kind == "prepared":
        problems += checks.find_group_leakage(
            (r.image, r.split, str(r.extra["group"])) for r in tasks if "group" in r.extra
        )
    if kind == "labelme":
        problems += checks.find_unannotated_images(
            root, (o.image_file for o in outcomes if o.image_file)
        )
    problems.sort(key=_problem_order)

    # 4. Statistics over every file whose image could be read.
    stats = summarise(o.stats for o in outcomes if o.stats is not None)
    stats["files_checked"] = len(outcomes)
    result = ValidateResult(
        path=root,
        kind=kind,
        files=len(outcomes),
        problems=problems,
        stats=stats,
        strict=settings.strict,
        seconds=time.perf_counter() - start,
        overlays=sum(o.overlay_written for o in outcomes),
        by_check=checks.count_by_check(problems),
    )

    # 5. The report, written atomically and only where asked (never inside PATH).
    if settings.out is not None:
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        write_resolved_settings(settings, out)
        atomic_write_json(out / "run_info.json", run_provenance())
        atomic_write_json(out / VALIDATION_NAME, _validation_json(result, settings))
        atomic_write_json(out / "result.json", result.summary())
        result.out_dir = out
    return result


def _find_files(settings: ValidateSettings, root: Path) -> tuple[Kind, list[Any]]:
    """The kind of dataset at ``root`` and one task per file to check, in a stable order."""
    from vesselctl.data.labelme import labelme_files_with_relatives
    from vesselctl.data.sources import IMAGE_SUFFIXES, find_mask_folder_sources

    if is_prepared_dataset(root):
        return "prepared", list(read_manifest(root))
    labelme = [relative for relative, _ in labelme_files_with_relatives(root)]
    if labelme:
        return "labelme", labelme
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*") if p.is_file()):
        raise DatasetError(
            f"{root}: no LabelMe *.json, no manifest.jsonl and no images found; point validate "
            "at the annotation folder or at a folder written by `vesselctl prepare`"
        )
    pairing = settings.mask_folder
    items = find_mask_folder_sources(
        root, pairing.images_dir, pairing.masks_dir, pairing.mask_suffix
    )
    return "mask_folder", [
        (item.image.relative_to(root).as_posix(), item.annotation.relative_to(root).as_posix())
        for item in items
        if item.image is not None
    ]


_CHECK_ORDER = {check: position for position, check in enumerate(CHECKS)}


def _problem_order(problem: Problem) -> tuple[str, int, int]:
    shape = -1 if problem.shape is None else problem.shape
    return problem.file, shape, _CHECK_ORDER[problem.check]


def _validation_json(result: ValidateResult, settings: ValidateSettings) -> dict[str, Any]:
    return {
        "summary": result.summary(),
        "checks": {c.id: {"severity": c.severity, "title": c.title} for c in CHECKS.values()},
        "problems": [p.to_json() for p in result.problems],
        "stats": result.stats,
        "settings": settings.model_dump(mode="json"),
    }


# ----------------------------------------------------------------------------------------------
# Per-file work. Module-level functions so worker processes can import them.


def _worker_count(settings: ValidateSettings, n_tasks: int) -> int:
    if settings.workers:
        wanted = settings.workers
    elif hasattr(os, "sched_getaffinity"):
        wanted = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS / Windows
        wanted = os.cpu_count() or 1
    return max(1, min(wanted, n_tasks))


def _map_files(
    settings: ValidateSettings, kind: Kind, tasks: Sequence[Any], progress: Progress | None
) -> Iterator[FileOutcome]:
    """Check every task, in worker processes when there is enough work to pay for them."""
    workers = _worker_count(settings, len(tasks))
    # Widths (skeleton + distance transform) are the costliest statistic: measure them on an
    # evenly spaced subset of at most stats.width_images images.
    limit = settings.stats.width_images
    stride = -(-len(tasks) // limit) if limit else 1
    items = [
        (settings, kind, task, settings.stats.widths and index % stride == 0)
        for index, task in enumerate(tasks)
    ]
    total = len(items)
    if workers == 1 or total < 4 * workers:
        for done, item in enumerate(items, start=1):
            yield _check_one(item)
            if progress:
                progress(done, total)
        return
    from concurrent.futures import ProcessPoolExecutor

    from vesselctl.data.samples import init_worker, worker_context

    chunksize = max(1, min(32, total // (workers * 8)))
    context = worker_context([__name__, "skimage.morphology"])
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=init_worker
    ) as pool:
        for done, outcome in enumerate(pool.map(_check_one, items, chunksize=chunksize), 1):
            yield outcome
            if progress:
                progress(done, total)


def _check_one(item: tuple[ValidateSettings, Kind, Any, bool]) -> FileOutcome:
    """Check one file, measure its statistics and draw its overlay when asked."""
    settings, kind, task, measure_widths = item
    image_file: str | None = None
    root = Path(settings.path)
    if kind == "prepared":
        record: ManifestRecord = task
        found = checks.check_prepared_record(root, record, settings.checks.tiny_mask_pixels)
        file, split = record.image, record.split
        problems, image, mask = found.problems, found.image, found.mask
        # Shape counts of the source annotation, as prepare recorded them.
        by_type = _counts(record.extra.get("shape_counts"))
        by_label = _counts(record.extra.get("label_counts"))
        overlay_name = f"{record.id}.png"
    elif kind == "mask_folder":
        image_relative, mask_relative = task
        pair = checks.check_mask_pair(
            root, image_relative, mask_relative, settings.checks.tiny_mask_pixels
        )
        file, split = image_relative, None
        problems, image, mask = pair.problems, pair.image, pair.mask
        by_type, by_label = {}, {}
        overlay_name = str(Path(image_relative).with_suffix(".png"))
    else:
        file = task
        top = file.split("/", 1)[0] if "/" in file else ""
        split = top if top in SPLITS else None
        labelme = checks.check_labelme_file(
            root,
            file,
            settings.labels.roles(),
            settings.raster.options(),
            settings.checks.tiny_mask_pixels,
            settings.checks.bounds_tolerance,
            settings.checks.report_twists,
            settings.checks.min_pocket_pixels,
        )
        problems, image, mask = labelme.problems, labelme.image, labelme.mask
        by_type, by_label = labelme.shapes_by_type, labelme.shapes_by_label
        image_file = labelme.image_file
        overlay_name = str(Path(file).with_suffix(".png"))

    digest = checks.pixel_digest(image) if image is not None else None
    small = None
    if image is not None and settings.checks.near_duplicates:
        small = checks.thumbnail(image)
    stats, overlay_written = None, False
    if image is not None:
        usable_mask = mask if mask is not None and mask.shape[:2] == image.shape[:2] else None
        stats = image_stats(
            image.shape[0],
            image.shape[1],
            usable_mask,
            by_type,
            by_label,
            measure_widths=measure_widths,
        )
        if settings.overlays is not None and usable_mask is not None:
            from vesselctl.data.images import encode_png

            overlay = draw_overlay(image, usable_mask)
            atomic_write_bytes(Path(settings.overlays) / overlay_name, encode_png(overlay))
            overlay_written = True
    return FileOutcome(file, split, problems, digest, stats, overlay_written, image_file, small)


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}


# Overlay colours (RGB): vessel fill and the mask outline.
FILL_RGB = (0, 200, 0)
OUTLINE_RGB = (255, 230, 0)
FILL_ALPHA = 0.35


def draw_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image in RGB with the vessel mask tinted green and its outlines (holes too) yellow."""
    import cv2

    from vesselctl.data.images import to_uint8

    base = to_uint8(image)
    rgb = cv2.cvtColor(base, cv2.COLOR_GRAY2RGB) if base.ndim == 2 else base.copy()
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    tint = np.array(FILL_RGB, dtype=np.float32)
    inside = binary.astype(bool)
    rgb[inside] = (rgb[inside] * (1 - FILL_ALPHA) + tint * FILL_ALPHA).astype(np.uint8)
    # RETR_CCOMP keeps hole outlines, so loops in the vessel tree show as closed rings.
    contours, _ = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, OUTLINE_RGB, 1)
    return rgb
