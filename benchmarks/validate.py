"""Benchmark `vesselctl validate` on synthetic LabelMe files (target: >= 200 files/s on 2 cores).

Generates N synthetic 512x512 LabelMe files with the project's generator (vesselctl.data.synthetic)
unless --data points at an existing folder, times the validate stage end to end (worker processes,
all checks and statistics, no report written), and breaks one core's time per file down into its
parts so a miss can be traced. Prints a table and writes JSON with --out.

    python benchmarks/validate.py --files 1220 --out validate_bench.json
    python benchmarks/validate.py --files 1220 --cpus 0,1 --out validate_bench.json  # 2 cores
    python benchmarks/validate.py --files 40 --out /tmp/small.json      # quick CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_FILES_PER_S = 200.0


def generate(folder: Path, files: int, size: int, seed: int) -> float:
    """Write the synthetic LabelMe folder (images as PNG files beside the JSON); seconds taken."""
    from vesselctl.data.synthetic import write_labelme_dataset

    start = time.perf_counter()
    write_labelme_dataset(folder, files, seed=seed, sizes=(size,), embed_every=0)
    return time.perf_counter() - start


def time_stage(folder: Path, workers: int, widths: bool, width_images: int | None) -> dict:
    """One validate run; ``width_images`` None keeps the default (stats.width_images)."""
    from vesselctl.settings.validate import ValidateSettings
    from vesselctl.stages import validate as stage

    settings = ValidateSettings(
        path=folder,
        workers=workers,
        stats={"widths": widths}
        if width_images is None
        else {"widths": widths, "width_images": width_images},
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    result = stage.run(settings)
    seconds = time.perf_counter() - start
    # CPU time of this process only: meaningful for the in-process (workers=1) run, where it
    # shows the per-file cost independent of other load on the machine.
    cpu_ms = (time.process_time() - cpu_start) / result.files * 1000.0
    return {
        "workers": workers or len(os.sched_getaffinity(0)),
        "widths": widths,
        "width_images": settings.stats.width_images,
        "files": result.files,
        "seconds": round(seconds, 3),
        "files_per_s": round(result.files / seconds, 1),
        "cpu_ms_per_file_in_process": round(cpu_ms, 2),
        "errors": result.errors,
        "warnings": result.warnings,
    }


def breakdown(folder: Path, sample: int) -> dict[str, float]:
    """CPU milliseconds per file (process time, so other load on the machine matters little)
    for each part of the per-file work, measured one part at a time on one core."""
    from vesselctl.data.checks import check_shapes_geometry, pixel_digest
    from vesselctl.data.images import read_image
    from vesselctl.data.labelme import find_labelme_files, parse_labelme
    from vesselctl.data.masks import rasterize_shapes
    from vesselctl.data.stats import image_stats
    from vesselctl.settings.prepare import LabelSettings

    files = find_labelme_files(folder)[:sample]
    roles = LabelSettings().roles()  # the default label map
    parts: dict[str, float] = {}

    def timed(name: str, func):
        start = time.process_time()
        out = [func(i, path) for i, path in enumerate(files)]
        parts[name] = (time.process_time() - start) / len(files) * 1000.0
        return out

    docs = timed("parse_labelme (incl. json)", lambda i, p: parse_labelme(p)[0])
    images = timed("decode image", lambda i, p: read_image(p.with_suffix(".png")))
    timed("pixel hash", lambda i, p: pixel_digest(images[i]))
    masks = timed(
        "rasterise",
        lambda i, p: rasterize_shapes(docs[i].shapes, roles, *images[i].shape[:2]),
    )
    timed("geometry checks", lambda i, p: check_shapes_geometry(p.name, docs[i].shapes, (512, 512)))
    timed(
        "stats without widths", lambda i, p: image_stats(512, 512, masks[i], measure_widths=False)
    )
    timed("stats with widths", lambda i, p: image_stats(512, 512, masks[i], measure_widths=True))
    parts["points per file"] = float(np.mean([sum(len(s.points) for s in d.shapes) for d in docs]))
    return {k: round(v, 2) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1220, help="synthetic LabelMe files")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="existing or to-be-made folder (kept)")
    parser.add_argument("--workers", type=int, default=0, help="0 = every core")
    parser.add_argument("--breakdown", type=int, default=50, help="files for the breakdown")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--cpus", help="pin to these CPUs, e.g. 0,1 for the 2-core target on a bigger machine"
    )
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vesselctl-bench-") as tmp:
        folder = args.data or Path(tmp) / "labelme"
        generated = None
        if not folder.is_dir() or not any(folder.glob("*.json")):
            generated = generate(folder, args.files, args.size, args.seed)
        runs = [
            time_stage(folder, args.workers, widths=True, width_images=None),
            time_stage(folder, args.workers, widths=True, width_images=0),
            time_stage(folder, 1, widths=True, width_images=None),
        ]
        parts = breakdown(folder, args.breakdown)

    load_after = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    serial = runs[-1]
    projected = cores * 1000.0 / serial["cpu_ms_per_file_in_process"]
    print(
        f"validate on {runs[0]['files']} synthetic {args.size}x{args.size} LabelMe files, "
        f"{cores} cores, {platform.processor() or platform.machine()}"
    )
    print(f"load average before/after (1 min): {load_before[0]:.1f} / {load_after[0]:.1f}")
    print(f"{'workers':>7} {'widths on':>14} {'seconds':>8} {'files/s':>8} {'target':>7}")
    for run in runs:
        widths = "all images" if run["width_images"] == 0 else f"<= {run['width_images']} imgs"
        ok = "ok" if run["files_per_s"] >= TARGET_FILES_PER_S else "MISS"
        print(
            f"{run['workers']:>7} {widths:>14} {run['seconds']:>8.2f} {run['files_per_s']:>8.1f} "
            f"{ok:>7}"
        )
    print(
        f"in-process CPU per file {serial['cpu_ms_per_file_in_process']:.1f} ms -> at most "
        f"{projected:.0f} files/s on {cores} idle cores"
    )
    print("one core, CPU ms per file:")
    for name, value in parts.items():
        print(f"  {name:<28} {value:>9.2f}")
    report = {
        "benchmark": "validate",
        "files": runs[0]["files"],
        "size": args.size,
        "cores": cores,
        "machine": platform.platform(),
        "generated_seconds": generated,
        "target_files_per_s": TARGET_FILES_PER_S,
        "load_average_before_after": [load_before[0], load_after[0]],
        "projected_files_per_s_idle": round(projected, 1),
        "runs": runs,
        "breakdown_ms_per_file": parts,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
