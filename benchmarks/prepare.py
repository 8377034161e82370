"""Benchmark `vesselctl prepare` against an I/O floor on synthetic LabelMe data.

Generates COUNT synthetic SIZExSIZE LabelMe files (polygons + holes, image files beside them)
into a temporary folder, then times, with the same number of worker processes:

* the I/O floor: read each image file, decode it, re-encode it as PNG with the same encoder
  settings prepare uses, write it (temp file + rename) and sync once at the end;
* prepare: the whole stage (parse, rasterise, resize, write image + mask, Sa2VA polygons,
  manifest, splits, report).

Each is run ``--repeat`` times alternately and the fastest run is kept. Prints a table and writes
JSON (``--out``). Targets (issue 2): prepare >= 100 images/s on 2 cores and <= 1.5x the floor.

    python benchmarks/prepare.py --count 1220 --workers 2 --out prepare_bench.json
    python benchmarks/prepare.py --count 40 --workers 2      # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from vesselctl.data.images import decode_image_bytes, encode_png
from vesselctl.data.samples import flush_to_disk, write_file_unsynced
from vesselctl.data.synthetic import write_labelme_dataset
from vesselctl.settings.prepare import PrepareSettings
from vesselctl.stages import prepare as prepare_stage


def _generate_chunk(args: tuple[str, int, int, int, int]) -> int:
    folder, start, count, size, seed = args
    write_labelme_dataset(
        Path(folder), count, seed=seed, sizes=(size,), embed_every=0, start_index=start
    )
    return count


def generate(folder: Path, count: int, size: int, seed: int, workers: int) -> float:
    """Write the synthetic LabelMe files in parallel; returns seconds taken."""
    started = time.perf_counter()
    chunk = max(1, -(-count // (workers * 4)))
    jobs = [
        (str(folder), start, min(chunk, count - start), size, seed)
        for start in range(0, count, chunk)
    ]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_generate_chunk, jobs))
    return time.perf_counter() - started


def _floor_one(args: tuple[str, str]) -> None:
    source, target = args
    image = decode_image_bytes(Path(source).read_bytes(), source)
    write_file_unsynced(Path(target), encode_png(image, "fast", "image"))


def io_floor(images: list[Path], out_dir: Path, workers: int) -> None:
    """Decode + re-encode + write every image with ``workers`` processes."""
    jobs = [(str(p), str(out_dir / "images" / p.name)) for p in images]
    chunksize = max(1, min(16, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_floor_one, jobs, chunksize=chunksize))
    flush_to_disk([Path(t) for _, t in jobs])


def run_prepare(labelme_dir: Path, out_dir: Path, workers: int) -> None:
    settings = PrepareSettings(
        input=labelme_dir, output=out_dir, workers=workers, progress=False, overwrite=True
    )
    prepare_stage.run(settings)


def timed(func, *args) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process + its finished worker processes).

    CPU time is reported beside wall time because a shared machine's other load slows the wall
    clock of both runs unequally; CPU seconds per image do not depend on it.
    """
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    kids_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    func(*args)
    wall = time.perf_counter() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(
        getattr(after, f) - getattr(before, f)
        for before, after in ((self_before, self_after), (kids_before, kids_after))
        for f in ("ru_utime", "ru_stime")
    )
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1220, help="number of LabelMe files")
    parser.add_argument("--size", type=int, default=512, help="image height and width")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the temp data")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="vesselctl-bench-", dir=args.workdir))
    try:
        labelme_dir = root / "labelme"
        gen_s = generate(labelme_dir, args.count, args.size, args.seed, args.workers)
        images = sorted(labelme_dir.glob("*.png"))
        floor_runs, prepare_runs = [], []
        for _ in range(args.repeat):
            floor_dir = root / "floor"
            shutil.rmtree(floor_dir, ignore_errors=True)
            floor_runs.append(timed(io_floor, images, floor_dir, args.workers))
            prepare_runs.append(timed(run_prepare, labelme_dir, root / "prepared", args.workers))
        floor_s, floor_cpu = min(floor_runs)
        prepare_s, prepare_cpu = min(prepare_runs)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        result = {
            "benchmark": "prepare",
            "count": args.count,
            "size": args.size,
            "workers": args.workers,
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "generate_s": round(gen_s, 2),
            "load_average_1min_at_end": load,
            "floor_wall_cpu_s": [[round(w, 3), round(c, 3)] for w, c in floor_runs],
            "prepare_wall_cpu_s": [[round(w, 3), round(c, 3)] for w, c in prepare_runs],
            "floor_images_per_s": round(args.count / floor_s, 1),
            "prepare_images_per_s": round(args.count / prepare_s, 1),
            "prepare_over_floor": round(prepare_s / floor_s, 3),
            "floor_cpu_ms_per_image": round(1000 * floor_cpu / args.count, 2),
            "prepare_cpu_ms_per_image": round(1000 * prepare_cpu / args.count, 2),
            "prepare_over_floor_cpu": round(prepare_cpu / floor_cpu, 3),
            "targets": {"prepare_images_per_s": 100, "prepare_over_floor_max": 1.5},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = [
        ("I/O floor (decode + PNG encode + write)", floor_s, floor_cpu),
        ("vesselctl prepare", prepare_s, prepare_cpu),
    ]
    print(f"{args.count} synthetic {args.size}x{args.size} LabelMe files, {args.workers} workers")
    print(f"{'what':<42} {'wall s':>8} {'images/s':>9} {'CPU ms/image':>13}")
    for name, seconds, cpu in rows:
        rate = args.count / seconds
        print(f"{name:<42} {seconds:>8.2f} {rate:>9.1f} {1000 * cpu / args.count:>13.1f}")
    print(
        f"prepare / floor: {result['prepare_over_floor']:.2f}x wall, "
        f"{result['prepare_over_floor_cpu']:.2f}x CPU (target <= 1.5x); "
        f"prepare {result['prepare_images_per_s']:.0f} images/s (target >= 100); "
        f"load average {load}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
