"""`vesselctl evaluate`: score a folder of predictions against ground truth.

Reads top to bottom: resolve and check the folders, fix the threshold (from the setting or from
a sweep on a validation split, never on the evaluated split), pair files, compute per-image
metrics in parallel, aggregate, optionally compare with a second prediction set, then write
per_image.csv, summary.json, overlays, settings.yaml, run_info.json and finally result.json (its
presence marks a complete run).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselctl.errors import ConfigError, EvaluationError
from vesselctl.files import (
    atomic_write_json,
    atomic_write_text,
    package_versions,
    run_provenance,
    to_jsonable,
)
from vesselctl.metrics.aggregate import aggregate, paired_difference
from vesselctl.metrics.evaluation import (
    CaseFiles,
    MatchedCases,
    evaluate_files,
    match_cases,
    sweep_thresholds,
)
from vesselctl.metrics.image import (
    BACKGROUND_CONNECTIVITY,
    COUNT_KEYS,
    EMPTY_POLICY,
    FOREGROUND_CONNECTIVITY,
    HD_PERCENTILE,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    PROBABILITY_METRICS,
    SURFACE_CONNECTIVITY,
)
from vesselctl.metrics.overlays import LEGEND
from vesselctl.settings.base import write_resolved_settings
from vesselctl.settings.evaluate import EvaluateSettings

PER_IMAGE_NAME = "per_image.csv"
SUMMARY_NAME = "summary.json"
RESULT_NAME = "result.json"
RUN_INFO_NAME = "run_info.json"
OVERLAY_DIR = "overlays"

# Libraries whose versions decide metric values (skeletons, labels, distances, image decoding).
METRIC_PACKAGES = ("scipy", "scikit-image", "numpy", "pillow")

CONVENTIONS = {
    "foreground_connectivity": FOREGROUND_CONNECTIVITY,
    "background_connectivity": BACKGROUND_CONNECTIVITY,
    "betti0": "number of 8-connected vessel components",
    "betti1": "number of holes: 4-connected background components not touching the border",
    "surface": "foreground pixels with a 4-neighbour in the background (outside = background)",
    "surface_connectivity": SURFACE_CONNECTIVITY,
    "hd95": f"{HD_PERCENTILE:g}th percentile of pooled surface-to-surface distances (pixels)",
    "assd": "mean of pooled surface-to-surface distances, both directions (pixels)",
    "skeleton": "scikit-image skeletonize (Zhang)",
    "threshold_rule": "a pixel is vessel when prob >= threshold",
    "macro": "mean over images of the per-image values",
    "micro": "confusion metrics of the counts pooled over all images (micro IoU = cIoU)",
    "fov": "pixels outside the field of view are ignored by every metric",
}


@dataclass
class EvaluateResult:
    """What an evaluation produced; ``result.json`` holds the same."""

    out_dir: Path
    n_images: int
    metrics: list[str]
    threshold: float
    threshold_source: str
    macro: dict[str, dict[str, Any]]
    micro: dict[str, dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    compare: dict[str, Any] | None = None
    overlays: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "n_images": self.n_images,
            "metrics": self.metrics,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "macro_mean": {m: s["mean"] for m, s in self.macro.items()},
            "micro": {m: s["value"] for m, s in self.micro.items()},
            "missing_predictions": self.missing,
            "compared": self.compare is not None,
            "overlays": self.overlays,
        }


def _same_folder(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def check_out_outside_inputs(out: Path, inputs: dict[str, Path | None]) -> None:
    """Inputs are never written to: ``out`` must not be (or sit inside) any input folder."""
    resolved = Path(out).resolve()
    for flag, folder in inputs.items():
        if folder is None:
            continue
        folder = Path(folder).resolve()
        if resolved == folder or folder in resolved.parents:
            raise ConfigError(
                f"--out {out} is inside the {flag} folder {folder}; inputs are never written to, "
                "choose another output folder"
            )


def _output_folder(settings: EvaluateSettings) -> Path:
    """The output folder; it must not be (or sit inside) an input folder."""
    pred = Path(settings.pred).resolve()  # type: ignore[arg-type]
    out = Path(settings.out) if settings.out is not None else pred.parent / f"{pred.name}-eval"
    check_out_outside_inputs(
        out,
        {
            "--pred": settings.pred,
            "--gt": settings.gt,
            "--fov": settings.fov,
            "--compare": settings.compare,
        },
    )
    return out


def _choose_threshold(settings: EvaluateSettings) -> tuple[float, str, dict[str, Any] | None]:
    """The threshold to apply and where it came from; a sweep never uses the evaluated split."""
    from vesselctl.data.manifest import is_prepared_dataset

    thr = settings.threshold
    if not thr.sweep:
        return thr.value, "setting threshold.value", None
    gt = Path(settings.gt)  # type: ignore[arg-type]
    sweep_pred = Path(thr.sweep_pred) if thr.sweep_pred is not None else Path(settings.pred)  # type: ignore[arg-type]
    if is_prepared_dataset(gt):
        if thr.sweep_split == settings.split:
            raise ConfigError(
                f"threshold.sweep_split is '{thr.sweep_split}', the split being evaluated; "
                "choosing the threshold on it would tune on the data being scored. Use "
                "--set threshold.sweep_split=val"
            )
        sweep_gt, split = gt, thr.sweep_split
        where = f"split '{split}' of prepared dataset {gt}"
    else:
        if thr.sweep_gt is None or thr.sweep_pred is None:
            raise ConfigError(
                "threshold.sweep with a mask folder as --gt needs threshold.sweep_gt (validation "
                "masks) and threshold.sweep_pred (their probability maps)"
            )
        if _same_folder(thr.sweep_gt, gt) or _same_folder(thr.sweep_pred, settings.pred):
            raise ConfigError(
                "threshold.sweep_gt/sweep_pred point at the evaluated folders; the threshold must "
                "be chosen on separate validation images, not on the ones being scored"
            )
        sweep_gt, split = Path(thr.sweep_gt), settings.split  # split is unused for folders
        where = f"validation masks {sweep_gt}"
    matched = match_cases(sweep_pred, sweep_gt, split, settings.fov, allow_missing=False)
    sweep = sweep_thresholds(matched.cases, thr.sweep_values, thr.sweep_metric, settings.workers)
    source = (
        f"sweep on {where} ({sweep.n_images} images, predictions {sweep_pred}), maximising mean "
        f"{sweep.metric}"
    )
    details = {
        "source": source,
        "metric": sweep.metric,
        "n_images": sweep.n_images,
        "scores": {f"{t:g}": s for t, s in sweep.scores.items()},
    }
    return sweep.threshold, source, details


def _metric_columns(rows: list[dict[str, Any]], requested: list[str] | None) -> list[str]:
    """Metrics present in the rows, in canonical order; requested AUCs need probability maps."""
    present = {k for r in rows for k in r}
    columns = [m for m in METRIC_NAMES if m in present]
    if requested is not None:
        lacking = [m for m in requested if m in PROBABILITY_METRICS and m not in present]
        if lacking:
            raise EvaluationError(
                f"{', '.join(lacking)} need probability maps, but every prediction is a binary "
                "mask; save probabilities (8/16-bit PNG, .npy, .npz) or drop these metrics"
            )
    for row in rows:
        for m in columns:
            row.setdefault(m, float("nan"))
    return columns


def _per_image_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["id", "prediction", "kind", *COUNT_KEYS, *columns]
    writer.writerow(header)
    for row in rows:
        cells = []
        for key in header:
            value = row.get(key, "")
            cells.append(repr(float(value)) if isinstance(value, float) else value)
        writer.writerow(cells)
    return buffer.getvalue()


def _ranked(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows from worst to best by ``metric`` (NaN last)."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    defined = [r for r in rows if not math.isnan(float(r[metric]))]
    return sorted(defined, key=lambda r: (sign * float(r[metric]), r["id"]))


def _source_image(path: Path | None) -> np.ndarray | None:
    if path is None or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _write_overlays(
    out_dir: Path,
    rows: list[dict[str, Any]],
    cases: list[CaseFiles],
    threshold: float,
    k: int,
    metric: str,
) -> dict[str, list[dict[str, Any]]]:
    """Overlays of the k worst and k best images; returns what was written, for summary.json."""
    from vesselctl.metrics.evaluation import load_case
    from vesselctl.metrics.overlays import overlay, write_png

    by_id = {c.id: c for c in cases}
    ranked = _ranked(rows, metric)
    chosen = {"worst": ranked[:k], "best": list(reversed(ranked[-k:]))}
    written: dict[str, list[dict[str, Any]]] = {"worst": [], "best": []}
    for group, picked in chosen.items():
        for rank, row in enumerate(picked, start=1):
            case = by_id[row["id"]]
            loaded = load_case(case, threshold)
            picture = overlay(loaded.pred, loaded.gt, _source_image(case.image), loaded.fov)
            name = f"{OVERLAY_DIR}/{group}_{rank:02d}_{row['id']}.png"
            write_png(out_dir / name, picture)
            written[group].append({"file": name, "id": row["id"], metric: float(row[metric])})
    return written


def _compare(
    settings: EvaluateSettings, rows: list[dict[str, Any]], columns: list[str], threshold: float
) -> dict[str, Any]:
    """Evaluate --compare on the same images and report paired differences (this - other)."""
    other_matched = match_cases(
        Path(settings.compare),  # type: ignore[arg-type]
        Path(settings.gt),  # type: ignore[arg-type]
        settings.split,
        settings.fov,
        settings.allow_missing,
    )
    other_rows = evaluate_files(other_matched.cases, threshold, settings.metrics, settings.workers)
    shared = [m for m in columns if any(m in r for r in other_rows)]
    for row in other_rows:
        for m in shared:
            row.setdefault(m, float("nan"))
    agg = settings.aggregation
    differences = paired_difference(
        rows, other_rows, shared, agg.bootstrap_resamples, agg.seed, agg.confidence
    )
    other_summary = aggregate(
        other_rows, shared, agg.percentiles, agg.bootstrap_resamples, agg.seed, agg.confidence
    )
    return {
        "other_pred": str(settings.compare),
        "difference": "this run minus --compare, per image, then averaged",
        "paired": differences,
        "other_macro_mean": {m: s["mean"] for m, s in other_summary["macro"].items()},
        "other_missing": other_matched.missing,
    }


def run(
    settings: EvaluateSettings, progress: Callable[[int], Callable[[], None]] | None = None
) -> EvaluateResult:
    """Evaluate ``settings.pred`` against ``settings.gt`` and write the run folder.

    ``progress(total)`` may return a callback invoked after each scored image (the CLI draws a
    progress bar with it on a terminal).
    """
    # 1. Folders: outputs never go into an input folder.
    out_dir = _output_folder(settings)

    # 2. Threshold before anything is scored, so the evaluated split cannot influence it.
    threshold, threshold_source, sweep_details = _choose_threshold(settings)

    # 3. Pair files (lists and stops on missing/extra files), then score every image.
    matched: MatchedCases = match_cases(
        Path(settings.pred),  # type: ignore[arg-type]
        Path(settings.gt),  # type: ignore[arg-type]
        settings.split,
        settings.fov,
        settings.allow_missing,
    )
    on_done = progress(len(matched.cases)) if progress is not None else None
    rows = evaluate_files(matched.cases, threshold, settings.metrics, settings.workers, on_done)
    columns = _metric_columns(rows, settings.metrics)

    # 4. Aggregate: macro with spread and bootstrap CIs, micro from pooled counts.
    agg = settings.aggregation
    summary_stats = aggregate(
        rows, columns, agg.percentiles, agg.bootstrap_resamples, agg.seed, agg.confidence
    )

    # 5. Optional paired comparison with a second prediction set on the same images.
    comparison = _compare(settings, rows, columns, threshold) if settings.compare else None

    # 6. Write: settings and provenance first, result.json last (it marks a complete run). A
    # previous run's result.json and overlays go first, so a re-run that stops half-way does not
    # look complete and old pictures are not mistaken for new ones.
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_NAME).unlink(missing_ok=True)
    for old_overlay in (out_dir / OVERLAY_DIR).glob("*.png"):
        if old_overlay.name.startswith(("worst_", "best_")):
            old_overlay.unlink()
    write_resolved_settings(settings, out_dir)
    atomic_write_json(out_dir / RUN_INFO_NAME, run_provenance())
    atomic_write_text(out_dir / PER_IMAGE_NAME, _per_image_csv(rows, columns))
    overlays: dict[str, list[dict[str, Any]]] = {"worst": [], "best": []}
    if settings.overlays.k > 0 and settings.overlays.rank_by in columns:
        overlays = _write_overlays(
            out_dir, rows, matched.cases, threshold, settings.overlays.k, settings.overlays.rank_by
        )
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    summary = {
        "n_images": len(rows),
        "pred": str(settings.pred),
        "gt": str(settings.gt),
        "gt_source": matched.gt_source,
        "fov": str(settings.fov) if settings.fov else None,
        "threshold": {"value": threshold, "source": threshold_source, "sweep": sweep_details},
        "metrics": columns,
        "prediction_kinds": kinds,
        "missing_predictions": matched.missing,
        "ignored_other_split_predictions": matched.ignored_other_splits,
        "macro": summary_stats["macro"],
        "micro": summary_stats["micro"],
        "pooled_counts": summary_stats["pooled_counts"],
        "bootstrap": summary_stats["bootstrap"],
        "compare": comparison,
        "overlays": {
            "legend": LEGEND,
            "rank_by": settings.overlays.rank_by,
            **overlays,
        },
        "conventions": CONVENTIONS,
        "empty_policy": EMPTY_POLICY,
        "per_case": rows,
        "settings": settings.model_dump(mode="json"),
        "versions": {**package_versions(), **package_versions(METRIC_PACKAGES)},
    }
    atomic_write_json(out_dir / SUMMARY_NAME, to_jsonable(summary))
    result = EvaluateResult(
        out_dir=out_dir,
        n_images=len(rows),
        metrics=columns,
        threshold=threshold,
        threshold_source=threshold_source,
        macro=summary_stats["macro"],
        micro=summary_stats["micro"],
        missing=matched.missing,
        compare=comparison,
        overlays=[o["file"] for group in overlays.values() for o in group],
    )
    atomic_write_json(out_dir / RESULT_NAME, to_jsonable(result.to_json()))
    return result
