"""CPU cost of Sa2VAProcessor per image at the released models' sizes.

Training feeds the GPU from DataLoader workers that run the processor; this measures how many
milliseconds one sample costs on one CPU core (InternVL 448 tiles up to 12 + thumbnail, or the
Qwen2.5-VL 512..2048-token pixel budget; SAM2 1024 input; one phrase), so the number of workers
needed per GPU can be read off: workers >= GPU images/s x ms per sample / 1000. Each size runs
twice: pixels normalised to float32 on the CPU, and uint8 pixels left for the GPU to normalise
(`normalise_on_device`, what `vesselctl train` uses on a GPU); "keys ms" is the encoder cache's
content hash of the sample's pixels (`attach_encoder_keys`).

    python benchmarks/processor.py --out processor.json
    python benchmarks/processor.py --small      # quick check with tiny sizes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _run(family: str, size: tuple[int, int], repeats: int, small: bool, on_device: bool) -> dict:
    import torch

    from vesselctl.model.acceleration import attach_encoder_keys
    from vesselctl.model.batch import SegSample
    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.tokenizer import build_tiny_tokenizer

    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    if family == "internvl":
        options = dict(family="internvl", template="qwen_chat")
        if small:
            options.update(tile_size=56, sam2_size=128)
    else:
        options = dict(family="qwen2_5_vl", template="qwen2_5_vl")
        if small:
            options.update(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28, sam2_size=128)
    processor = Sa2VAProcessor(tokenizer, **options, normalise_on_device=on_device)
    rng = np.random.default_rng(0)
    height, width = size
    sample = SegSample(
        "bench",
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        ["blood vessels"],
        [rng.random((height, width)) > 0.5],
    )
    batch = processor([sample], train=True)  # warm-up
    times, key_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        batch = processor([sample], train=True)
        times.append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        attach_encoder_keys(batch)
        key_times.append((time.perf_counter() - start) * 1000.0)
    return {
        "family": family,
        "image": f"{width}x{height}",
        "pixels": "uint8" if on_device else "float32",
        "keys_ms_median": round(statistics.median(key_times), 1),
        "tokens": int(batch.input_ids.shape[1]),
        "mllm_pixels_shape": list(batch.pixel_values.shape),
        "ms_per_sample_median": round(statistics.median(times), 1),
        "ms_per_sample_min": round(min(times), 1),
        "samples_per_s_per_core": round(1000.0 / statistics.median(times), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--small", action="store_true", help="tiny sizes (a quick check)")
    args = parser.parse_args(argv)
    sizes = [(512, 512), (1024, 1024), (1536, 2048)]
    rows = [
        _run(family, size, args.repeats, args.small, on_device)
        for family in ("internvl", "qwen2_5_vl")
        for size in sizes
        for on_device in (False, True)
    ]
    header = (
        "family",
        "image",
        "pixels",
        "tokens",
        "mllm_pixels_shape",
        "ms_per_sample_median",
        "samples_per_s_per_core",
        "keys_ms_median",
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for row in rows:
        print(" | ".join(str(row[key]) for key in header))
    if args.out:
        from vesselctl.files import atomic_write_json, run_provenance

        atomic_write_json(args.out, {"results": rows, "small": args.small, "run": run_provenance()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
