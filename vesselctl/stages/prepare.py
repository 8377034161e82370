"""`vesselctl prepare`: a LabelMe (or image + mask) folder -> a training-ready dataset folder.

Reads top to bottom: check the paths, find the sources, read the previous split (before the
output folder is cleared), clear the output folder, process every source in worker processes,
stop or skip on bad files, split, then write the manifest, splits.json, Sa2VA's
annotations.json per split, the report and the run record. ``manifest.jsonl`` and
``result.json`` are written last (and removed first on --overwrite), so an interrupted run never
leaves a folder that looks complete.

Every file except ``run_info.json`` (time, host) depends only on the input and the settings,
so a re-run on the same input gives byte-identical output.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from vesselctl.data.manifest import MANIFEST_NAME, SPLITS, ManifestRecord
from vesselctl.data.samples import (
    SampleConfig,
    SampleResult,
    flush_to_disk,
    image_relpath,
    init_worker,
    mask_relpath,
    prepare_sample,
    worker_context,
)
from vesselctl.data.sources import (
    SourceItem,
    find_labelme_sources,
    find_mask_folder_sources,
    require_images,
)
from vesselctl.data.splits import (
    SPLITS_NAME,
    SplitPlan,
    StoredSplit,
    group_key,
    plan_split,
    read_splits,
    splits_document,
)
from vesselctl.errors import ConfigError, DatasetError
from vesselctl.files import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    run_provenance,
)
from vesselctl.settings.base import RESOLVED_SETTINGS_NAME, write_resolved_settings
from vesselctl.settings.prepare import PrepareSettings

REPORT_NAME = "prepare_report.json"
RESULT_NAME = "result.json"
RUN_INFO_NAME = "run_info.json"
SA2VA_DIR = "sa2va"
# What a prepare run writes; --overwrite deletes only these, and refuses folders holding more.
OWNED_NAMES = frozenset(
    {
        "images",
        "masks",
        SA2VA_DIR,
        MANIFEST_NAME,
        SPLITS_NAME,
        REPORT_NAME,
        RESULT_NAME,
        RUN_INFO_NAME,
        RESOLVED_SETTINGS_NAME,
    }
)
PIXEL_CONVENTION = (
    "pixel (row, col) covers [col, col+1) x [row, row+1); a pixel is inside a shape when its "
    "centre is; geometry is scaled to the output size before rasterising"
)
SA2VA_MASK_NOTES = {
    "rle": (
        "mask[0] holds one COCO uncompressed RLE ({size: [height, width], counts}: run lengths "
        "in column-major order, background first) of the whole vessel mask; pycocotools' "
        "frPyObjects([segment], height, width), as the official loader calls it, decodes it to "
        "the exact mask; images with an empty mask are left out"
    ),
    "polygons": (
        "mask[0] lists one flat polygon per connected vessel region in output pixel "
        "coordinates; holes are joined to their outline by zero-width bridges; pycocotools "
        "decodes them to the exact mask; images with an empty mask are left out"
    ),
}


@dataclass(frozen=True)
class PrepareResult:
    """What prepare produced, for the CLI summary."""

    output: Path
    input_format: str
    found: int
    prepared: int
    counts: dict[str, int]
    skipped: list[str]
    warnings: int
    split_source: str
    split_history: dict[str, Any]
    elapsed_s: float
    images_per_s: float


# ---------------------------------------------------------------------------------------------
# Paths and the output folder
# ---------------------------------------------------------------------------------------------


def _check_paths(settings: PrepareSettings) -> tuple[Path, Path]:
    if settings.input is None or settings.output is None:
        raise ConfigError(
            "prepare needs an input folder and an output folder (LABELME_DIR OUT_DIR)"
        )
    input_dir = settings.input.expanduser()
    out_dir = settings.output.expanduser()
    if not input_dir.is_dir():
        raise DatasetError(f"{input_dir}: input folder does not exist or is not a folder")
    real_in, real_out = input_dir.resolve(), out_dir.resolve()
    if real_out == real_in or real_out.is_relative_to(real_in) or real_in.is_relative_to(real_out):
        raise ConfigError(
            f"output folder {out_dir} and input folder {input_dir} overlap; choose an output "
            "folder outside the input (inputs are never modified)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: the output path exists and is not a folder")
    return input_dir, out_dir


def _is_leftover_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _clear_output(out_dir: Path, overwrite: bool) -> None:
    """Make ``out_dir`` an empty folder; with overwrite, remove an earlier prepare's files only."""
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ConfigError(
            f"{out_dir}: the output folder is not empty ({len(entries)} entries); pass "
            "--overwrite to replace the prepared dataset there, or choose an empty folder"
        )
    foreign = [n for n in entries if n not in OWNED_NAMES and not _is_leftover_temp(n)]
    if foreign:
        raise ConfigError(
            f"{out_dir}: holds files prepare did not write ({', '.join(foreign[:5])}); refusing "
            "to delete them even with --overwrite; choose another output folder"
        )
    # Completion markers go first: if anything below is interrupted the folder is visibly
    # incomplete (no manifest), never a stale dataset that looks fine.
    for name in (RESULT_NAME, MANIFEST_NAME):
        (out_dir / name).unlink(missing_ok=True)
    # splits.json stays until the new one replaces it: a failed re-run must not lose the split.
    for name in entries:
        if name == SPLITS_NAME:
            continue
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Sources and the split
# ---------------------------------------------------------------------------------------------


def _find_sources(settings: PrepareSettings, input_dir: Path) -> tuple[str, list[SourceItem]]:
    folders = settings.mask_folder
    input_format = settings.input_format
    if input_format in ("auto", "labelme"):
        items = find_labelme_sources(input_dir)  # auto: any JSON makes it a LabelMe folder
        if items:
            return "labelme", items
        if input_format == "labelme":
            raise DatasetError(f"{input_dir}: no LabelMe .json files found (searched recursively)")
        # auto without any JSON: an image + mask folder, or an error saying what is missing.
        require_images(input_dir, folders.images_dir, folders.masks_dir)
    items = find_mask_folder_sources(
        input_dir, folders.images_dir, folders.masks_dir, folders.mask_suffix
    )
    return "mask_folder", items


def _previous_split(settings: PrepareSettings, out_dir: Path) -> tuple[StoredSplit | None, str]:
    """The split to keep: split.file if given, else OUT_DIR/splits.json when settings match."""
    split = settings.split
    if split.file is not None:
        return read_splits(split.file), str(split.file)
    existing = out_dir / SPLITS_NAME
    if not (split.reuse and existing.is_file()):
        return None, "new"
    stored = read_splits(existing)
    wanted = {
        "seed": split.seed,
        "val": split.val,
        "test": split.test,
        "group_pattern": split.group_pattern,
    }
    if stored.settings != wanted:
        return None, "new (the earlier splits.json used other split settings)"
    return stored, str(existing)


def _groups(items: Sequence[SourceItem], pattern: str | None) -> dict[str, str]:
    """Group key per id; without a pattern each image is its own group.

    Every file name the pattern does not match is listed in one error.
    """
    if pattern is None:
        return {item.id: item.id for item in items}
    groups: dict[str, str] = {}
    unmatched: list[str] = []
    for item in items:
        key = group_key(Path(item.relative).name, pattern)
        if key is None:
            unmatched.append(item.relative)
        else:
            groups[item.id] = key
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        raise DatasetError(
            f"{len(unmatched)} file name(s) do not match split.group_pattern {pattern!r}: "
            f"{shown}; fix the pattern or rename the files"
        )
    return groups


# ---------------------------------------------------------------------------------------------
# Parallel per-file work
# ---------------------------------------------------------------------------------------------


def _process(
    items: Sequence[SourceItem],
    config: SampleConfig,
    workers: int,
    on_result: Callable[[SampleResult], None],
) -> list[SampleResult]:
    """Run ``prepare_sample`` on every item, in input order, in ``workers`` processes."""
    work = partial(prepare_sample, config=config)
    if workers <= 1 or len(items) <= 2:
        results = []
        for item in items:
            results.append(work(item))
            on_result(results[-1])
        return results
    chunksize = max(1, min(16, len(items) // (workers * 8)))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=worker_context(), initializer=init_worker
    ) as pool:
        results = []
        for result in pool.map(work, items, chunksize=chunksize):
            results.append(result)
            on_result(result)
    return results


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[SampleResult], None]]:
    """A callback advancing a rich progress bar while the block runs (a no-op when disabled)."""
    if not enabled:
        yield lambda _result: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("prepare"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("prepare", total=total)
        yield lambda _result: bar.advance(task)


# ---------------------------------------------------------------------------------------------
# Writing the dataset description
# ---------------------------------------------------------------------------------------------


def _sa2va_annotations(results: Sequence[SampleResult], plan: SplitPlan) -> dict[str, str]:
    """annotations.json text per split, joined from the entries the workers encoded."""
    per_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    for result in sorted(results, key=lambda r: r.id):
        if result.sa2va_entry:
            per_split[plan.assignment[result.id]].append(result.sa2va_entry)
    return {split: "[" + ",\n".join(entries) + "]\n" for split, entries in per_split.items()}


def _sum_counts(dicts: Sequence[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(sorted(total.items()))


def run(settings: PrepareSettings) -> PrepareResult:
    """Prepare the dataset described by ``settings``; raises DatasetError/ConfigError."""
    started = time.perf_counter()
    input_dir, out_dir = _check_paths(settings)

    # Sources are found before the output folder is touched: a wrong input changes nothing.
    input_format, items = _find_sources(settings, input_dir)
    groups = _groups(items, settings.split.group_pattern)

    # The previous split lives in the output folder that is about to be cleared: read it first.
    previous, split_source = _previous_split(settings, out_dir)
    _clear_output(out_dir, settings.overwrite)
    timings = {"discover_s": time.perf_counter() - started}

    config = SampleConfig(
        out_dir=out_dir,
        height=settings.resize.height,
        width=settings.resize.width,
        roles=settings.labels.roles(),
        raster=settings.raster.options(),
        png_mode=settings.resize.png,
        phrase=settings.prompt.phrase,
        allowed_roots=(input_dir.resolve(),),
        sa2va_masks=settings.sa2va.masks,
    )
    workers = settings.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(items)))
    with _progress(settings.progress, len(items)) as on_result:
        results = _process(items, config, workers, on_result)
    timings["process_s"] = time.perf_counter() - started - sum(timings.values())

    bad = [r for r in results if not r.ok]
    if bad and settings.on_bad_file == "fail":
        # Nothing of this run is kept: a failed prepare leaves an empty output folder.
        for name in ("images", "masks"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        lines = [message for r in bad for message in r.errors]
        shown = "\n  ".join(lines[:50])
        more = f"\n  ... and {len(lines) - 50} more" if len(lines) > 50 else ""
        raise DatasetError(
            f"{len(bad)} of {len(results)} file(s) cannot be prepared:\n  {shown}{more}\n"
            "Fix them, or pass --set on_bad_file=skip to leave them out (they are then listed "
            f"in {REPORT_NAME})"
        )
    good = sorted((r for r in results if r.ok), key=lambda r: r.id)
    if not good:
        raise DatasetError(f"{input_dir}: none of the {len(results)} file(s) could be prepared")

    split = settings.split
    plan = plan_split(
        {r.id: groups[r.id] for r in good},
        split.val,
        split.test,
        split.seed,
        previous.assignment if previous else None,
        previous.groups if previous else None,
        source=split_source,
    )

    split_history = {
        "source": plan.source,
        "reused": plan.reused,
        "added": plan.added,
        "removed_since_previous": plan.removed,
    }

    # Records: required manifest keys plus everything a later stage or a person may need.
    prompt = settings.prompt
    question = prompt.question.replace("{phrase}", prompt.phrase)
    answer = prompt.answer.replace("{phrase}", prompt.phrase)
    records = [
        ManifestRecord(
            id=r.id,
            split=plan.assignment[r.id],
            image=image_relpath(r.id),
            mask=mask_relpath(r.id),
            phrase=prompt.phrase,
            height=r.height,
            width=r.width,
            extra={**r.info, "group": groups[r.id], "question": question, "answer": answer},
        )
        for r in good
    ]
    warnings = [w for r in results for w in r.warnings]
    report: dict[str, Any] = {
        "input": str(settings.input),
        "input_format": input_format,
        "found": len(results),
        "prepared": len(good),
        "counts": plan.counts(),
        "skipped": [{"source": r.relative, "errors": r.errors} for r in bad],
        "warnings": warnings,
        "empty_masks": [r.id for r in good if not r.sa2va_entry],
        "raster": {
            "line_width_px": settings.raster.line_width,
            "point_radius_px": settings.raster.point_radius,
            "widths_are_in": "source image pixels",
            "pixel_convention": PIXEL_CONVENTION,
        },
        "labels": {
            "vessel": settings.labels.vessel,
            "hole": settings.labels.hole,
            "ignore": settings.labels.ignore,
            "hole_rule": "shapes are painted in file order; hole shapes clear vessel pixels "
            "drawn before them",
        },
        "output_size": (
            [settings.resize.height, settings.resize.width]
            if settings.resize.height is not None
            else "original"
        ),
        "original_sizes": dict(
            sorted(Counter(f"{r.info['orig_height']}x{r.info['orig_width']}" for r in good).items())
        ),
        "image_sources": dict(sorted(Counter(r.info["image_source"] for r in good).items())),
        "shape_counts": _sum_counts([r.info["shape_counts"] for r in good]),
        "label_counts": _sum_counts([r.info["label_counts"] for r in good]),
        "split": {
            "seed": split.seed,
            "val": split.val,
            "test": split.test,
            "group_pattern": split.group_pattern,
            "groups": len(set(plan.groups.values())),
        },
        "sa2va": {
            "data_root": ".",
            "ann_files": {s: f"{SA2VA_DIR}/{s}/annotations.json" for s in SPLITS},
            "img_prefix": "images/",
            "masks": settings.sa2va.masks,
            "mask_note": SA2VA_MASK_NOTES[settings.sa2va.masks],
        },
    }

    for split_name, text in _sa2va_annotations(good, plan).items():
        atomic_write_text(out_dir / SA2VA_DIR / split_name / "annotations.json", text)
    atomic_write_json(
        out_dir / SPLITS_NAME,
        splits_document(plan, split.seed, split.val, split.test, split.group_pattern),
    )
    atomic_write_json(out_dir / REPORT_NAME, report)
    write_resolved_settings(settings, out_dir)
    timings["describe_s"] = time.perf_counter() - started - sum(timings.values())
    # Completion markers last, after every image and mask is on disk.
    flush_to_disk(out_dir / p for r in good for p in (image_relpath(r.id), mask_relpath(r.id)))
    timings["sync_s"] = time.perf_counter() - started - sum(timings.values())
    elapsed = time.perf_counter() - started
    atomic_write_json(
        out_dir / RUN_INFO_NAME,
        {
            **run_provenance(),
            "elapsed_s": round(elapsed, 3),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "workers": workers,
            # Run history, not data: kept out of the other files so re-runs are byte-identical.
            "split_history": split_history,
        },
    )
    atomic_write_jsonl(out_dir / MANIFEST_NAME, [rec.to_json() for rec in records])
    result_doc = {
        "stage": "prepare",
        "manifest": MANIFEST_NAME,
        "found": len(results),
        "prepared": len(good),
        "skipped": len(bad),
        "counts": plan.counts(),
        "warnings": len(warnings),
    }
    atomic_write_json(out_dir / RESULT_NAME, result_doc)
    return PrepareResult(
        output=out_dir,
        input_format=input_format,
        found=len(results),
        prepared=len(good),
        counts=plan.counts(),
        skipped=[r.relative for r in bad],
        warnings=len(warnings),
        split_source=plan.source,
        split_history=split_history,
        elapsed_s=elapsed,
        images_per_s=len(results) / elapsed if elapsed > 0 else 0.0,
    )
