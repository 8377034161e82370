"""Benchmark of the evaluate metrics engine against a straightforward per-metric reference.

Draws N pairs of vessel-like masks (random polylines of random width, cv2) with a probability
map per prediction, then times, in one run:

1. confusion-based metrics only (counts, Dice, IoU, accuracy, ... MCC), one process;
2. every metric (confusion, clDice/Tprec/Tsens, Betti errors, HD95/ASSD, AUC-ROC/AUC-PR) with
   ``vesselctl.metrics.evaluate_arrays`` over ``--workers`` processes;
3. (``--from-files``) every metric from PNG files through ``evaluate_files``, the stage path;
4. the reference (``benchmarks/reference_metrics.py``: scikit-learn, scikit-image and scipy, one
   separate pass per metric) over the same number of processes, on the first ``--reference-n``
   pairs;

and checks that 2 and 4 agree to 1e-9 on every metric of every image. Timings include starting
the process pool. CPU time (this process plus its pool workers) is reported next to wall time
because it depends far less on other load on the machine. Prints a table and writes JSON
(``--out``); exits 1 if results differ.

    python benchmarks/evaluate.py --n 1000 --size 512 --workers 2 --out bench_evaluate.json
    python benchmarks/evaluate.py --n 20 --size 128 --workers 2        # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_metrics import reference_image_metrics

from vesselctl.metrics import compute_image_metrics, evaluate_arrays
from vesselctl.metrics.evaluation import parallel_map
from vesselctl.metrics.image import (
    CONFUSION_METRICS,
    METRIC_NAMES,
    threshold_probability,
)

TOLERANCE = 1e-9


def draw_vessels(rng: np.random.Generator, size: int, branches: int) -> np.ndarray:
    """A vessel-like uint8 mask: random-walk polylines with random widths."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    step = max(4, size // 6)
    for _ in range(branches):
        points = [rng.integers(0, size, 2)]
        for _ in range(int(rng.integers(3, 10))):
            points.append(np.clip(points[-1] + rng.integers(-step, step + 1, 2), 0, size - 1))
        width = int(rng.integers(1, max(2, size // 64) + 1))
        cv2.polylines(mask, [np.array(points, np.int32)], False, 1, width)
    return mask


def make_pair(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt, pred, prob): the prediction is a blurred, noisy, partly wrong copy of the truth."""
    import cv2

    rng = np.random.default_rng(seed)
    gt = draw_vessels(rng, size, int(rng.integers(3, 8)))
    wrong = draw_vessels(rng, size, int(rng.integers(0, 3)))
    kept = gt.copy()
    if rng.random() < 0.5:  # miss a rectangle of vessels
        y, x = rng.integers(0, size // 2, 2)
        kept[y : y + size // 4, x : x + size // 4] = 0
    score = cv2.GaussianBlur((kept | wrong).astype(np.float32), (0, 0), 1.0 + rng.random())
    score = np.clip(score * 1.4 + rng.normal(0.0, 0.08, score.shape), 0.0, 1.0)
    prob = np.rint(score * 255).astype(np.uint8)
    return gt.astype(bool), threshold_probability(prob, 0.5), prob


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the pool workers), user + system."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _time_from_files(pairs: list, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds to score the pairs from PNG files (8-bit probability maps) like the
    stage does; writing the files is not timed."""
    import tempfile

    from PIL import Image

    from vesselctl.metrics import evaluate_files
    from vesselctl.metrics.evaluation import CaseFiles

    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for i, (gt, _, prob) in enumerate(pairs):
            gt_path = Path(tmp) / f"gt{i:05d}.png"
            pred_path = Path(tmp) / f"pred{i:05d}.png"
            Image.fromarray(gt.astype(np.uint8) * 255).save(gt_path, compress_level=1)
            Image.fromarray(prob).save(pred_path, compress_level=1)
            cases.append(CaseFiles(id=f"case{i:05d}", gt=gt_path, pred=pred_path))
        start, cpu = time.perf_counter(), _cpu_seconds()
        evaluate_files(cases, threshold=0.5, metrics=METRIC_NAMES, workers=workers)
        return time.perf_counter() - start, _cpu_seconds() - cpu


def _reference_task(item: tuple) -> dict:
    case_id, pred, gt, prob, fov = item
    return {"id": case_id, **reference_image_metrics(pred, gt, prob, fov)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of mask pairs")
    parser.add_argument("--size", type=int, default=512, help="mask side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="processes for the full metrics")
    parser.add_argument("--reference-n", type=int, default=None, help="pairs for the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--from-files",
        action="store_true",
        help="also time the stage path: PNG files read and scored by evaluate_files",
    )
    args = parser.parse_args()
    ref_n = args.n if args.reference_n is None else min(args.reference_n, args.n)

    start = time.perf_counter()
    pairs = [make_pair(args.seed * 1_000_003 + i, args.size) for i in range(args.n)]
    generate_s = time.perf_counter() - start
    items = [(f"case{i:05d}", pred, gt, prob, None) for i, (gt, pred, prob) in enumerate(pairs)]

    start, cpu = time.perf_counter(), _cpu_seconds()
    for _, pred, gt, _, _ in items:
        compute_image_metrics(pred, gt, metrics=CONFUSION_METRICS)
    confusion_s, confusion_cpu = time.perf_counter() - start, _cpu_seconds() - cpu

    start, cpu = time.perf_counter(), _cpu_seconds()
    ours = evaluate_arrays(items, metrics=METRIC_NAMES, workers=args.workers)
    full_s, full_cpu = time.perf_counter() - start, _cpu_seconds() - cpu

    files_s = files_cpu = None
    if args.from_files:
        files_s, files_cpu = _time_from_files(pairs, args.workers)

    start, cpu = time.perf_counter(), _cpu_seconds()
    reference = parallel_map(_reference_task, items[:ref_n], args.workers)
    reference_s, reference_cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    ours_per_image_s = full_s / args.n
    reference_per_image_s = reference_s / ref_n

    worst: dict[str, float] = {}
    for mine, theirs in zip(ours[:ref_n], reference, strict=True):
        for key, value in theirs.items():
            if key == "id":
                continue
            a, b = float(mine[key]), float(value)
            diff = 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b)
            worst[key] = max(worst.get(key, 0.0), diff if not math.isnan(diff) else math.inf)
    identical = all(v <= TOLERANCE for v in worst.values())

    rows = [
        ("confusion metrics only, 1 process", args.n, confusion_s, confusion_cpu),
        (f"all metrics, {args.workers} processes", args.n, full_s, full_cpu),
        (f"reference, {args.workers} processes", ref_n, reference_s, reference_cpu),
    ]
    if files_s is not None:
        name = f"all metrics from PNG files, {args.workers} proc."
        rows.insert(2, (name, args.n, files_s, files_cpu))
    load = os.getloadavg()
    print(
        f"{args.n} pairs of {args.size}x{args.size} vessel masks (generated in {generate_s:.1f}s)"
    )
    print(f"{'what':<38} {'images':>7} {'seconds':>9} {'images/s':>10} {'CPU ms/image':>13}")
    for name, count, seconds, cpu_s in rows:
        per = cpu_s / count * 1000
        print(f"{name:<38} {count:>7} {seconds:>9.2f} {count / seconds:>10.1f} {per:>13.2f}")
    speedup = reference_per_image_s / ours_per_image_s
    cpu_speedup = (reference_cpu / ref_n) / (full_cpu / args.n)
    print(f"speed-up over the reference (per image): {speedup:.1f}x wall, {cpu_speedup:.1f}x CPU")
    print(f"load average after the run (1, 5, 15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(
        f"largest |difference| over {ref_n} images: {max(worst.values()):.3g} "
        f"({'identical to 1e-9' if identical else 'DIFFERENT'})"
    )

    if args.out is not None:
        result = {
            "n": args.n,
            "size": args.size,
            "workers": args.workers,
            "reference_n": ref_n,
            "seed": args.seed,
            "cpu_count": os.cpu_count(),
            "load_average_after": load,
            "from_files_images_per_s": None if files_s is None else args.n / files_s,
            "machine": platform.platform(),
            "python": platform.python_version(),
            "confusion_images_per_s": args.n / confusion_s,
            "all_metrics_images_per_s": args.n / full_s,
            "reference_images_per_s": ref_n / reference_s,
            "speedup": speedup,
            "cpu_ms_per_image": {
                "confusion": confusion_cpu / args.n * 1000,
                "all_metrics": full_cpu / args.n * 1000,
                "all_metrics_from_files": None if files_cpu is None else files_cpu / args.n * 1000,
                "reference": reference_cpu / ref_n * 1000,
            },
            "cpu_speedup": cpu_speedup,
            "max_abs_difference": worst,
            "identical": identical,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
