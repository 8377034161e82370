"""Benchmark `vesselctl prepare` against an I/O floor on synthetic LabelMe data.

Generates COUNT synthetic SIZExSIZE LabelMe files (polygons + holes, image files beside them)
into a temporary folder, then times, with the same number of worker processes:

* the I/O floor: read each image file, decode it, re-encode it as PNG with the same encoder
  settings prepare uses, write it (temp file + rename) and sync once at the end;
* prepare: the whole stage with default settings (parse, rasterise, write image + mask, Sa2VA
  annotations, manifest, splits, report). The synthetic images are plain 8-bit PNGs already at
  the output size, so prepare copies their bytes (CRC-checked) where the floor re-encodes them;
  the per-part table lists the floor's decode and encode too, for what other images cost.

Each is run ``--repeat`` times alternately, each into an empty output folder (clean-up is not
timed), and the fastest run is kept. Prints a table and writes JSON (``--out``). Targets
(issue 2): prepare >= 100 images/s on 2 cores and <= 1.5x the floor.

    python benchmarks/prepare.py --count 1220 --workers 2 --out prepare_bench.json
    python benchmarks/prepare.py --count 40 --workers 2      # quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import orjson

from vesselctl.data.images import decode_image_bytes, encode_png, plain_png
from vesselctl.data.labelme import parse_labelme_data, resolve_image_source
from vesselctl.data.masks import mask_to_coco_rle, rasterize_shapes
from vesselctl.data.samples import (
    flush_to_disk,
    init_worker,
    sa2va_entry_text,
    worker_context,
    write_file_unsynced,
)
from vesselctl.data.synthetic import write_labelme_dataset
from vesselctl.files import sha256_bytes
from vesselctl.settings.prepare import LabelSettings, PrepareSettings
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
    # Same process start-up as prepare's pool, so the comparison is of the per-image work.
    with ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=init_worker) as pool:
        list(pool.map(_floor_one, jobs, chunksize=chunksize))
    flush_to_disk([Path(t) for _, t in jobs])


def run_prepare(labelme_dir: Path, out_dir: Path, workers: int) -> None:
    settings = PrepareSettings(
        input=labelme_dir, output=out_dir, workers=workers, progress=False, overwrite=True
    )
    prepare_stage.run(settings)


def timed(func, *args) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    func(*args)
    return time.perf_counter() - started


def cpu_per_image(
    labelme_dir: Path, images: list[Path], root: Path, count: int, repeat: int
) -> dict:
    """CPU milliseconds per image of the floor and of prepare, each in this one process.

    Reported beside the wall clock because other load on a shared machine slows both parallel
    runs unequally; CPU time per image, measured without worker processes, does not depend on
    it as much. The three measurements run alternately ``repeat`` times, the lowest of each kept.
    """
    subset = images[:count]
    copied_dir, reencoded_dir = root / "cpu-labelme", root / "cpu-labelme-text"
    copied_dir.mkdir()
    reencoded_dir.mkdir()
    for path in subset:
        for suffix in (".json", ".png"):
            shutil.copyfile(path.with_suffix(suffix), copied_dir / path.with_suffix(suffix).name)
            shutil.copyfile(path.with_suffix(suffix), reencoded_dir / path.with_suffix(suffix).name)
        # With a text chunk in every PNG, prepare decodes and re-encodes each image with the
        # floor's encoder settings instead of copying it (JPEGs, other sizes, 16-bit or
        # metadata-carrying PNGs take this path).
        png = reencoded_dir / path.with_suffix(".png").name
        png.write_bytes(_with_text_chunk(png.read_bytes()))
    floor_cpu = prepare_cpu = reencode_cpu = float("inf")
    for _ in range(repeat):
        floor_dir = root / "cpu-floor"
        shutil.rmtree(floor_dir, ignore_errors=True)
        flush_to_disk([])  # each run pays for writing back its own files only
        started = time.process_time()
        for path in subset:
            _floor_one((str(path), str(floor_dir / "images" / path.name)))
        floor_cpu = min(floor_cpu, time.process_time() - started)
        for source, target in ((copied_dir, "cpu-prepared"), (reencoded_dir, "cpu-reencoded")):
            shutil.rmtree(root / target, ignore_errors=True)
            flush_to_disk([])
            started = time.process_time()
            run_prepare(source, root / target, 1)
            spent = time.process_time() - started
            if source == copied_dir:
                prepare_cpu = min(prepare_cpu, spent)
            else:
                reencode_cpu = min(reencode_cpu, spent)
    return {
        "images": len(subset),
        "repeats": repeat,
        "floor_cpu_ms_per_image": round(1000 * floor_cpu / len(subset), 2),
        "prepare_cpu_ms_per_image": round(1000 * prepare_cpu / len(subset), 2),
        "prepare_over_floor_cpu": round(prepare_cpu / floor_cpu, 3),
        "prepare_reencoding_cpu_ms_per_image": round(1000 * reencode_cpu / len(subset), 2),
        "prepare_reencoding_over_floor_cpu": round(reencode_cpu / floor_cpu, 3),
    }


def _with_text_chunk(png: bytes) -> bytes:
    """The PNG with a tEXt chunk after IHDR: same pixels, but no longer a plain PNG."""
    body = b"tEXt" + b"Comment\x00benchmark"
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]  # signature (8) + IHDR (25)


def breakdown(labelme_dir: Path, root: Path, count: int) -> dict[str, float]:
    """CPU milliseconds per file of each part of prepare's per-file work, in this process.

    The parts follow ``vesselctl.data.samples`` with the default settings (cyclic GC off
    during a sample, plain PNGs at the output size copied, Sa2VA masks as RLE); the floor's
    own decode and encode of the same image are timed too, for comparison.
    """
    roles = LabelSettings().roles()  # the default label map
    out = root / "breakdown"
    out.mkdir()
    parts: dict[str, float] = {}

    def tick(name: str, since: float) -> float:
        now = time.process_time()
        parts[name] = parts.get(name, 0.0) + now - since
        return now

    files = sorted(labelme_dir.glob("*.json"))[:count]
    collecting = gc.isenabled()
    gc.disable()
    try:
        for index, path in enumerate(files):
            t = time.process_time()
            data = orjson.loads(path.read_bytes())
            t = tick("read + parse JSON (orjson)", t)
            document, _ = parse_labelme_data(data, path)
            t = tick("shapes to typed objects", t)
            source, _ = resolve_image_source(document, [labelme_dir])
            t = tick("find the image (imagePath)", t)
            image_bytes = source.read_bytes()
            plain = plain_png(image_bytes)
            t = tick("read image + plain-PNG check", t)
            mask = rasterize_shapes(document.shapes, roles, 512, 512)
            t = tick("rasterise shapes", t)
            if plain is None:  # not the case for the synthetic files
                image_bytes = encode_png(decode_image_bytes(image_bytes, path.name))
            write_file_unsynced(out / f"image{index}.png", image_bytes)
            t = tick("write image (copied bytes)", t)
            mask_png = encode_png(mask.view(np.uint8) * np.uint8(255), "fast", "mask")
            t = tick("encode mask PNG", t)
            write_file_unsynced(out / f"mask{index}.png", mask_png)
            t = tick("write mask", t)
            sha256_bytes(image_bytes), sha256_bytes(mask_png), np.count_nonzero(mask)
            t = tick("sha256 x2, vessel fraction", t)
            rle = mask_to_coco_rle(mask)
            t = tick("Sa2VA mask (COCO RLE)", t)
            sa2va_entry_text("x.png", [rle], "blood vessels")
            t = tick("Sa2VA entry text", t)
            del data, document
            t = tick("free the parsed JSON", t)
            pixels = decode_image_bytes(image_bytes, path.name)
            t = tick("(floor) decode image", t)
            encode_png(pixels, "fast", "image")
            tick("(floor) encode image PNG", t)
    finally:
        if collecting:
            gc.enable()
    return {name: round(1000 * seconds / len(files), 2) for name, seconds in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1220, help="number of LabelMe files")
    parser.add_argument("--size", type=int, default=512, help="image height and width")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpu-images", type=int, default=200, help="images for the single-process CPU figures"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the temp data")
    args = parser.parse_args()

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="vesselctl-bench-", dir=args.workdir))
    try:
        labelme_dir = root / "labelme"
        gen_s = generate(labelme_dir, args.count, args.size, args.seed, args.workers)
        images = sorted(labelme_dir.glob("*.png"))
        floor_runs, prepare_runs = [], []
        for _ in range(args.repeat):
            floor_dir = root / "floor"
            shutil.rmtree(floor_dir, ignore_errors=True)
            # Both start from an empty output folder with nothing left to write back: the
            # clean-up of the previous run and its flush to disk are timed for neither.
            flush_to_disk([])
            floor_runs.append(timed(io_floor, images, floor_dir, args.workers))
            shutil.rmtree(root / "prepared", ignore_errors=True)
            flush_to_disk([])
            prepare_runs.append(timed(run_prepare, labelme_dir, root / "prepared", args.workers))
        floor_s, prepare_s = min(floor_runs), min(prepare_runs)
        cpu = cpu_per_image(
            labelme_dir, images, root, min(args.count, args.cpu_images), args.repeat
        )
        parts = (
            breakdown(labelme_dir, root, min(args.count, args.cpu_images))
            if args.size == 512
            else {}
        )
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
            "floor_wall_s": [round(t, 3) for t in floor_runs],
            "prepare_wall_s": [round(t, 3) for t in prepare_runs],
            "floor_images_per_s": round(args.count / floor_s, 1),
            "prepare_images_per_s": round(args.count / prepare_s, 1),
            "prepare_over_floor": round(prepare_s / floor_s, 3),
            "single_process_cpu": cpu,
            "cpu_ms_per_file_by_part": parts,
            "targets": {"prepare_images_per_s": 100, "prepare_over_floor_max": 1.5},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.count} synthetic {args.size}x{args.size} LabelMe files, {args.workers} workers")
    print(f"{'what':<42} {'wall s':>8} {'images/s':>9} {'CPU ms/image':>13}")
    for name, seconds, key in (
        ("I/O floor (decode + PNG encode + write)", floor_s, "floor_cpu_ms_per_image"),
        ("vesselctl prepare", prepare_s, "prepare_cpu_ms_per_image"),
    ):
        print(f"{name:<42} {seconds:>8.2f} {args.count / seconds:>9.1f} {cpu[key]:>13.1f}")
    reencoding = cpu["prepare_reencoding_cpu_ms_per_image"]
    print(f"{'prepare, images re-encoded (not copied)':<42} {'':>8} {'':>9} {reencoding:>13.1f}")
    print(
        f"prepare / floor: {result['prepare_over_floor']:.2f}x wall, "
        f"{cpu['prepare_over_floor_cpu']:.2f}x CPU (target <= 1.5x; re-encoding every image: "
        f"{cpu['prepare_reencoding_over_floor_cpu']:.2f}x CPU); "
        f"prepare {result['prepare_images_per_s']:.0f} images/s (target >= 100); "
        f"load average {load}"
    )
    if parts:
        print("CPU ms per file, part by part (one process):")
        for name, ms in parts.items():
            print(f"  {name:<34} {ms:>6.2f}")
        own = sum(ms for name, ms in parts.items() if not name.startswith("(floor)"))
        print(f"  {'sum of prepare parts':<34} {own:>6.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
