"""The evaluation engine: pair predictions with ground truth, compute per-image metrics in
parallel, choose a threshold on a validation split.

Library entries (the ``evaluate`` stage and ``evaluate --ckpt`` call these):

- ``match_cases(pred_dir, gt, split, fov_dir, allow_missing)`` -> ``CaseFiles`` per image;
- ``evaluate_files(cases, threshold, metrics, workers)`` -> one row (dict) per image;
- ``evaluate_arrays(items, metrics, workers)`` -> the same rows for in-memory predictions;
- ``evaluate_folders(pred_dir, gt, ...)`` -> match + evaluate in one call;
- ``sweep_thresholds(cases, thresholds, metric, workers)`` -> the threshold that maximises the
  mean per-image ``metric`` on the given (validation) cases.

Rows hold ``id``, ``prediction`` (file name, empty when missing), ``kind`` (binary, probability
or missing), the counts tp/fp/fn/tn and the metrics. A missing prediction (only with
``allow_missing``) is scored as an empty mask: a failure, never dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselctl.errors import EvaluationError
from vesselctl.metrics.image import (
    CONFUSION_METRICS,
    PROBABILITY_METRICS,
    compute_image_metrics,
    confusion_counts,
    confusion_metrics,
    threshold_counts,
)
from vesselctl.metrics.io import (
    MASK_SUFFIXES,
    PREDICTION_SUFFIXES,
    index_folder,
    read_binary_mask,
    read_prediction,
)

LISTED = 10  # how many offending names an error message shows before "and N more"
SERIAL_BELOW = 8  # fewer images than this are evaluated in-process (pool start-up costs more)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one image: ground truth, prediction (None when missing), FOV, source image."""

    id: str
    gt: Path
    pred: Path | None
    fov: Path | None = None
    image: Path | None = None


@dataclass
class MatchedCases:
    """Result of pairing a prediction folder with ground truth."""

    cases: list[CaseFiles]
    missing: list[str] = field(default_factory=list)
    ignored_other_splits: list[str] = field(default_factory=list)
    gt_source: str = "folder"


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def _ground_truth(gt: Path, split: str) -> tuple[dict[str, Path], dict[str, Path], set[str], str]:
    """GT masks by id, source images by id, ids of other splits, and the kind of GT source."""
    from vesselctl.data.manifest import is_prepared_dataset, read_manifest

    gt = Path(gt)
    if is_prepared_dataset(gt):
        records = read_manifest(gt, split)
        if not records:
            raise EvaluationError(f"{gt}: the prepared dataset has no images in split '{split}'")
        masks: dict[str, Path] = {}
        images: dict[str, Path] = {}
        for record in records:
            mask = record.mask_path(gt)
            if mask is None:
                raise EvaluationError(
                    f"{gt}: image '{record.id}' of split '{split}' has no mask; "
                    "evaluation needs ground truth for every image"
                )
            masks[record.id] = mask
            images[record.id] = record.image_path(gt)
        others = {r.id for r in read_manifest(gt)} - set(masks)
        return masks, images, others, f"prepared dataset, split {split}"
    return index_folder(gt, MASK_SUFFIXES, "ground-truth mask"), {}, set(), "mask folder"


def match_cases(
    pred_dir: Path,
    gt: Path,
    split: str = "test",
    fov_dir: Path | None = None,
    allow_missing: bool = False,
) -> MatchedCases:
    """Pair predictions with ground truth by file stem; list and refuse any mismatch.

    ``gt`` is a mask folder or a prepared dataset (then the masks of ``split``). Predictions of
    images in other splits of the same prepared dataset are ignored (and reported); any other
    prediction without ground truth is an error. A prediction missing for a ground-truth image is
    an error unless ``allow_missing``, which scores it as an empty mask.
    """
    masks, images, other_split_ids, source = _ground_truth(gt, split)
    predictions = index_folder(pred_dir, PREDICTION_SUFFIXES, "prediction")
    missing = sorted(set(masks) - set(predictions))
    ignored = sorted(set(predictions) & other_split_ids)
    extra = sorted(set(predictions) - set(masks) - other_split_ids)
    problems = []
    if extra:
        problems.append(
            f"{len(extra)} prediction(s) in {pred_dir} have no ground truth in {gt}: "
            f"{_listing(extra)} (remove them or point --gt at the matching masks)"
        )
    if missing and not allow_missing:
        problems.append(
            f"{len(missing)} ground-truth image(s) have no prediction in {pred_dir}: "
            f"{_listing(missing)} (predict them, or pass --allow-missing to score them as empty)"
        )
    if problems:
        raise EvaluationError("; ".join(problems))
    fovs: dict[str, Path] = {}
    if fov_dir is not None:
        fovs = index_folder(fov_dir, MASK_SUFFIXES, "field-of-view mask")
        no_fov = sorted(set(masks) - set(fovs))
        if no_fov:
            raise EvaluationError(
                f"{len(no_fov)} image(s) have no field-of-view mask in {fov_dir}: "
                f"{_listing(no_fov)}"
            )
    cases = [
        CaseFiles(
            id=case_id,
            gt=masks[case_id],
            pred=predictions.get(case_id),
            fov=fovs.get(case_id),
            image=images.get(case_id),
        )
        for case_id in sorted(masks)
    ]
    return MatchedCases(
        cases=cases, missing=missing, ignored_other_splits=ignored, gt_source=source
    )


@dataclass(frozen=True)
class LoadedCase:
    """One case read into memory: masks (bool), probability map (or None), FOV, kind."""

    gt: np.ndarray
    pred: np.ndarray
    prob: np.ndarray | None
    fov: np.ndarray | None
    kind: str


def load_case(case: CaseFiles, threshold: float) -> LoadedCase:
    """Read one case's files and check that their sizes agree (the error names both files)."""
    gt = read_binary_mask(case.gt, "ground-truth mask")
    fov = read_binary_mask(case.fov, "field-of-view mask") if case.fov is not None else None
    if fov is not None and fov.shape != gt.shape:
        raise EvaluationError(
            f"{case.fov}: field-of-view size {fov.shape[1]}x{fov.shape[0]} differs from the "
            f"ground truth {case.gt} ({gt.shape[1]}x{gt.shape[0]})"
        )
    if fov is not None and not fov.any():
        raise EvaluationError(f"{case.fov}: the field-of-view mask is empty")
    if case.pred is None:
        return LoadedCase(gt, np.zeros_like(gt), None, fov, "missing")
    prediction = read_prediction(case.pred, threshold)
    if prediction.mask.shape != gt.shape:
        raise EvaluationError(
            f"{case.pred}: prediction size {prediction.mask.shape[1]}x{prediction.mask.shape[0]} "
            f"differs from the ground truth {case.gt} ({gt.shape[1]}x{gt.shape[0]}); predict at "
            "the ground truth's size"
        )
    return LoadedCase(gt, prediction.mask, prediction.prob, fov, prediction.kind)


def _evaluate_case(args: tuple[CaseFiles, float, tuple[str, ...] | None]) -> dict[str, Any]:
    """Worker: one image's row; a size mismatch comes back as ``{"error": message}``."""
    case, threshold, metrics = args
    try:
        loaded = load_case(case, threshold)
    except EvaluationError as exc:
        return {"id": case.id, "error": str(exc)}
    wanted = metrics
    if wanted is not None and loaded.prob is None:
        wanted = tuple(m for m in wanted if m not in PROBABILITY_METRICS)
    values = compute_image_metrics(loaded.pred, loaded.gt, loaded.prob, loaded.fov, wanted)
    row: dict[str, Any] = {
        "id": case.id,
        "prediction": case.pred.name if case.pred is not None else "",
        "kind": loaded.kind,
    }
    row.update(values)
    return row


@dataclass(frozen=True)
class _PackedMask:
    """A bool mask packed 8 pixels to a byte, so sending it to a worker copies 8x less."""

    bits: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def pack(cls, mask: np.ndarray | None) -> _PackedMask | np.ndarray | None:
        if mask is None or mask.dtype != bool or mask.ndim != 2:
            return mask
        return cls(np.packbits(mask, axis=None), mask.shape)

    def unpack(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.bits, count=count).view(bool).reshape(self.shape)


def _unpacked(mask: Any) -> Any:
    return mask.unpack() if isinstance(mask, _PackedMask) else mask


def _evaluate_item(
    args: tuple[str, Any, Any, np.ndarray | None, Any, Any],
) -> dict[str, Any]:
    case_id, pred, gt, prob, fov, metrics = args
    row: dict[str, Any] = {"id": case_id, "prediction": "", "kind": "array"}
    try:
        values = compute_image_metrics(
            _unpacked(pred), _unpacked(gt), prob, _unpacked(fov), metrics
        )
    except ValueError as exc:
        raise EvaluationError(f"image '{case_id}': {exc}") from exc
    row.update(values)
    return row


def resolve_workers(workers: int, n_items: int) -> int:
    """0 means every CPU core; small jobs run in-process."""
    if workers > 0:
        count = workers
    elif hasattr(os, "sched_getaffinity"):  # the cores this process may use, not the machine's
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    return 1 if n_items < SERIAL_BELOW else max(1, min(count, n_items))


def _start_method() -> str:
    """``fork`` when it is safe (Linux, one thread, no CUDA context), else forkserver or spawn.

    fork starts workers with every module already imported and does not re-run
    the caller's main script; it is unsafe once other threads or a CUDA context exist (e.g.
    ``evaluate --ckpt`` after running a model), where a clean forkserver/spawn child is used.
    Worker code uses numpy, scipy, scikit-image and PIL only: OpenCV's thread pool does not
    survive a fork (calling it in a forked child can hang), so the workers never call OpenCV.
    """
    import multiprocessing
    import sys
    import threading

    methods = multiprocessing.get_all_start_methods()
    torch = sys.modules.get("torch")
    cuda_live = bool(torch is not None and torch.cuda.is_initialized())
    if sys.platform == "linux" and threading.active_count() == 1 and not cuda_live:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


_WORKER_MODULES = (
    "vesselctl.metrics.evaluation",
    "scipy.ndimage",
    "scipy.spatial",
    "skimage.morphology",
    "PIL.Image",
)


def _preload_worker_modules() -> None:
    """Import what workers use before forking, so each child does not import it again."""
    import scipy.ndimage
    import scipy.spatial
    import skimage.morphology
    from PIL import Image

    del scipy, skimage, Image


def _pool(workers: int) -> ProcessPoolExecutor:
    """A process pool started with ``_start_method()``."""
    import multiprocessing

    method = _start_method()
    context = multiprocessing.get_context(method)
    if method == "fork":
        _preload_worker_modules()
    elif method == "forkserver":
        # Takes effect when this process starts its fork server (once); children then start
        # with these modules imported instead of importing them each.
        context.set_forkserver_preload(list(_WORKER_MODULES))
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def parallel_map(
    func: Any, tasks: Sequence[Any], workers: int, on_done: Callable[[], None] | None = None
) -> list[Any]:
    """``[func(t) for t in tasks]`` over ``workers`` processes, in order.

    ``on_done`` is called once per finished task (e.g. to advance a progress bar).
    """
    n = resolve_workers(workers, len(tasks))
    results: list[Any] = []
    if n == 1:
        for task in tasks:
            results.append(func(task))
            if on_done is not None:
                on_done()
        return results
    chunk = max(1, min(32, len(tasks) // (n * 4)))
    with _pool(n) as pool:
        for result in pool.map(func, tasks, chunksize=chunk):
            results.append(result)
            if on_done is not None:
                on_done()
    return results


def _fill_missing_auc(rows: list[dict[str, Any]]) -> None:
    """Give missing predictions the AUCs of an all-zero probability map when the run has AUCs.

    A constant map ranks every pixel equally: AUC-ROC 0.5 and AUC-PR the prevalence (what
    scikit-learn returns), NaN when the ground truth has one class. So a miss stays counted.
    """
    if not any("auc_roc" in r for r in rows):
        return
    for row in rows:
        if row.get("kind") != "missing":
            continue
        positives = row["tp"] + row["fn"]
        total = row["tp"] + row["fp"] + row["fn"] + row["tn"]
        one_class = positives == 0 or positives == total
        row["auc_roc"] = float("nan") if one_class else 0.5
        row["auc_pr"] = float("nan") if one_class else positives / total


def _raise_row_errors(rows: list[dict[str, Any]]) -> None:
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        shown = "; ".join(errors[:LISTED])
        more = f"; and {len(errors) - LISTED} more" if len(errors) > LISTED else ""
        raise EvaluationError(f"{len(errors)} image(s) cannot be compared: {shown}{more}")


def evaluate_files(
    cases: Sequence[CaseFiles],
    threshold: float = 0.5,
    metrics: Collection[str] | None = None,
    workers: int = 0,
    on_done: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-image rows for matched files, computed over ``workers`` processes (0: all cores).

    Every size mismatch is collected and reported together before anything is aggregated.
    ``on_done`` is called after each image (progress reporting).
    """
    wanted = tuple(metrics) if metrics is not None else None
    tasks = [(c, threshold, wanted) for c in cases]
    rows = parallel_map(_evaluate_case, tasks, workers, on_done)
    _raise_row_errors(rows)
    _fill_missing_auc(rows)
    return rows


def evaluate_arrays(
    items: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]],
    metrics: Collection[str] | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Per-image rows for in-memory ``(id, pred, gt, prob, fov)`` tuples (e.g. fresh model output).

    ``prob`` and ``fov`` may be None. Defaults to in-process: arrays would be pickled to workers.
    """
    wanted = tuple(metrics) if metrics is not None else None
    items = list(items)
    if resolve_workers(workers, len(items)) > 1:
        pack = _PackedMask.pack
        tasks = [(i, pack(p), pack(g), prob, pack(f), wanted) for i, p, g, prob, f in items]
    else:
        tasks = [(*item, wanted) for item in items]
    return parallel_map(_evaluate_item, tasks, workers)


def evaluate_folders(
    pred_dir: Path,
    gt: Path,
    split: str = "test",
    fov_dir: Path | None = None,
    threshold: float = 0.5,
    metrics: Collection[str] | None = None,
    allow_missing: bool = False,
    workers: int = 0,
) -> tuple[MatchedCases, list[dict[str, Any]]]:
    """Match a prediction folder with ground truth and compute every image's metrics."""
    matched = match_cases(pred_dir, gt, split, fov_dir, allow_missing)
    return matched, evaluate_files(matched.cases, threshold, metrics, workers)


def _sweep_case(args: tuple[CaseFiles, tuple[float, ...]]) -> dict[str, Any]:
    """Worker: confusion counts of one image at every candidate threshold."""
    case, thresholds = args
    try:
        loaded = load_case(case, thresholds[0])
    except EvaluationError as exc:
        return {"id": case.id, "error": str(exc)}
    if loaded.prob is None:  # a binary mask scores the same at every threshold
        counts = [confusion_counts(loaded.pred, loaded.gt, loaded.fov)] * len(thresholds)
    else:
        counts = threshold_counts(loaded.prob, loaded.gt, thresholds, loaded.fov)
    return {"id": case.id, "kind": loaded.kind, "counts": counts}


@dataclass
class SweepResult:
    """The chosen threshold and the mean per-image score of every candidate."""

    threshold: float
    metric: str
    scores: dict[float, float]
    n_images: int


def sweep_thresholds(
    cases: Sequence[CaseFiles],
    thresholds: Sequence[float],
    metric: str = "dice",
    workers: int = 0,
) -> SweepResult:
    """Choose the threshold maximising the mean per-image ``metric`` over ``cases``.

    Call it with validation cases only; the caller applies the result to the test split. Ties go
    to the threshold closest to 0.5, then the lower one, so the choice is reproducible.
    """
    if metric not in CONFUSION_METRICS:
        raise ValueError(f"sweep metric must be one of {', '.join(CONFUSION_METRICS)}")
    ordered = tuple(sorted(set(float(t) for t in thresholds)))
    rows = parallel_map(_sweep_case, [(c, ordered) for c in cases], workers)
    _raise_row_errors(rows)
    if not any(r["kind"] == "probability" for r in rows):
        raise EvaluationError(
            "the threshold sweep needs probability maps, but every validation prediction is a "
            "binary mask; save probabilities (8/16-bit PNG or .npy) or drop the sweep"
        )
    counts = np.array([r["counts"] for r in rows], dtype=np.float64)  # (images, thresholds, 4)
    values = confusion_metrics(*(counts[..., j] for j in range(4)))[metric]
    means = np.asarray(values).mean(axis=0)
    scores = {t: float(s) for t, s in zip(ordered, means, strict=True)}
    best = max(ordered, key=lambda t: (round(scores[t], 12), -abs(t - 0.5), -t))
    return SweepResult(threshold=best, metric=metric, scores=scores, n_images=len(rows))
