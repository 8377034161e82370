"""Throughput of `vesselctl predict`'s inference path, single pass vs the official generate path.

Real-size architecture (default Sa2VA-1B) with random weights in bf16, 512x512 images, one phrase.
Times cover the predict stage's loop (``stages.predict.predict_items``: loader workers read and
process images, one teacher-forced forward per batch, a thread pool writes mask, probability and
overlay PNGs), at several batch sizes, and the
official-style path (one image at a time, greedy generation forced to the shortest real answer
"Sure, [SEG].<|im_end|>", which favours it). With ``--gpus 2`` it also runs the same single-pass
work split over two processes (torchrun, one GPU each) and reports the scaling.

Token ids: the released tokenizer is not available offline, so the processor uses the tiny
tokenizer (same template, tiling, image-token counts) and the [SEG]/image-token ids are remapped
to the real model's ids. Images are smooth random images made with numpy (OpenCV is not on the GPU
machine).

    python benchmarks/predict.py --device cuda --gpus 2 --out predict_bench.json
    python benchmarks/predict.py --device cpu --preset tiny --batch-sizes 1 4 --images 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


class RemappedProcessor:
    """The real processor, with token ids moved to the real model's ids (see module docstring)."""

    def __init__(self, processor: Any, id_map: dict[int, int]) -> None:
        self.processor, self.id_map = processor, id_map

    def replace_options(self, **changes: Any) -> RemappedProcessor:
        return RemappedProcessor(self.processor.replace_options(**changes), self.id_map)

    @property
    def options(self) -> Any:
        return self.processor.options

    def encode(self, sample: Any, train: bool = False) -> Any:
        return self.processor.encode(sample, train)

    def encode_pixels(self, sample_id: str, pixels: Any, phrases: Any) -> Any:
        return self.processor.encode_pixels(sample_id, pixels, phrases)

    def collate(self, encoded: Any, train: bool) -> Any:
        return self._remap(self.processor.collate(encoded, train))

    def __call__(self, samples: Any, train: bool = False, **kwargs: Any) -> Any:
        return self._remap(self.processor(samples, train=train, **kwargs))

    def _remap(self, batch: Any) -> Any:
        from model import remap_token_ids  # benchmarks/model.py

        return remap_token_ids(batch, self.id_map)


def build(preset: str, device: str, dtype_name: str) -> tuple[Any, Any, Any]:
    """Model (eval, on device), remapping processor, config."""
    import torch

    from vesselctl.model.load import build_model, resolve_dtype
    from vesselctl.model.presets import TINY_PROCESSOR_OVERRIDES, preset_config
    from vesselctl.model.processor import ProcessorOptions, Sa2VAProcessor
    from vesselctl.model.tokenizer import build_tiny_tokenizer, token_ids

    tokenizer = build_tiny_tokenizer()
    config = preset_config(preset, tokenizer)
    options = ProcessorOptions.from_config(config, **TINY_PROCESSOR_OVERRIDES.get(preset, {}))
    processor = Sa2VAProcessor(tokenizer, options)
    image_token = "<IMG_CONTEXT>" if config.family == "internvl" else "<|image_pad|>"
    tiny = token_ids(tokenizer, ["[SEG]", image_token])
    id_map = {tiny["[SEG]"]: config.seg_token_id, tiny[image_token]: config.image_token_id}
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(config, resolve_dtype(dtype_name), "sdpa").eval()
    return model, RemappedProcessor(processor, id_map), config


def noise_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (16x16-pixel blocks plus mild noise): PNG-compressible like real
    angiograms, unlike white noise, so output writing costs what it would on real data."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(40, 200, (size // 16 + 1, size // 16 + 1, 1), dtype=np.uint8)
        smooth = np.kron(coarse, np.ones((16, 16, 3), np.uint8))[:size, :size]
        noise = rng.integers(0, 8, (size, size, 3), dtype=np.uint8)
        images.append(smooth + noise)
    return images


def sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def stage_settings(batch_size: int, workers: int, out: Path, gpu_preprocessing: bool) -> Any:
    """Predict settings as the stage would resolve them for this benchmark."""
    from vesselctl.settings.base import load_settings
    from vesselctl.settings.predict import PredictSettings

    return load_settings(
        PredictSettings,
        None,
        [
            f"inference.batch_size={batch_size}",
            f"inference.workers={workers}",
            f"inference.gpu_preprocessing={str(gpu_preprocessing).lower()}",
            "progress=false",
        ],
        {"model": out, "input": out, "out": out},
    )


def single_pass_rate(
    model: Any,
    processor: Any,
    images: list,
    batch_size: int,
    device: Any,
    dtype: Any,
    repeats: int,
    workers: int,
    gpu_preprocessing: bool,
) -> tuple[float, float | None, float, float]:
    """Images/s of the predict stage's loop (loader workers, one pass, PNGs written), peak GPU
    memory (GiB), and the shares of the loop's time spent waiting for input and in the model."""
    import tempfile

    import torch

    from vesselctl.stages.predict import PredictItem, PredictResult, predict_items

    items = [PredictItem(f"b{i}", None, im) for i, im in enumerate(images)]
    rates: list[float] = []
    shares: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = stage_settings(batch_size, workers, Path(tmp), gpu_preprocessing)
        predict_items(
            model,
            processor,
            items[:batch_size],
            settings,
            Path(tmp),
            device,
            dtype,
            0,
            PredictResult(Path(tmp)),
        )
        if str(device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            result = PredictResult(Path(tmp))
            predict_items(
                model, processor, items, settings, Path(tmp), device, dtype, workers, result
            )
            sync(device)
            seconds = time.perf_counter() - start
            rates.append(len(images) / seconds)
            shares.append((result.input_wait_s / seconds, result.model_s / seconds))
    peak = torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None
    wait, model_share = shares[rates.index(statistics.median_high(rates))]
    return statistics.median(rates), peak, wait, model_share


def model_only_rate(
    model: Any, processor: Any, images: list, batch_size: int, device: Any, dtype: Any
) -> float:
    """Images/s of the model alone on one batch already collated and on the device (the ceiling
    the stage's loop can reach at this batch size)."""
    import torch

    from vesselctl.model.batch import SegSample
    from vesselctl.model.inference import predict_with_seg_scores

    samples = [
        SegSample(f"m{i}", im, ["blood vessels"]) for i, im in enumerate(images[:batch_size])
    ]
    batch = processor(samples, train=False).to(device, dtype)
    with torch.inference_mode():
        predict_with_seg_scores(model, batch)
        sync(device)
        rounds = max(2, 64 // batch_size)
        start = time.perf_counter()
        for _ in range(rounds):
            maps, _ = predict_with_seg_scores(model, batch)
            [m.float().cpu() for m in maps]
        sync(device)
    return rounds * batch_size / (time.perf_counter() - start)


def profile_loop(
    model: Any,
    processor: Any,
    images: list,
    batch_size: int,
    device: Any,
    dtype: Any,
    workers: int,
    gpu_preprocessing: bool,
) -> str:
    """cProfile of the main process over one run of the stage's loop: where its time goes."""
    import cProfile
    import io
    import pstats
    import tempfile

    from vesselctl.stages.predict import PredictItem, PredictResult, predict_items

    items = [PredictItem(f"p{i}", None, im) for i, im in enumerate(images)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = stage_settings(batch_size, workers, Path(tmp), gpu_preprocessing)
        profiler = cProfile.Profile()
        profiler.enable()
        predict_items(
            model,
            processor,
            items,
            settings,
            Path(tmp),
            device,
            dtype,
            workers,
            PredictResult(Path(tmp)),
        )
        sync(device)
        profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    return text.getvalue()


def generate_rate(model: Any, processor: Any, images: list, device: Any, dtype: Any) -> float:
    """Images/s of the official-style path: one image at a time, greedy generation, then SAM2."""
    import torch
    from model import ForceTokens  # benchmarks/model.py
    from transformers import LogitsProcessorList

    from vesselctl.model.batch import SegSample

    samples = [SegSample(f"g{i}", im, ["blood vessels"]) for i, im in enumerate(images)]
    full = processor(samples[:1], train=False)
    prompts = [processor([s], train=False, prompt_only=True).to(device, dtype) for s in samples]
    n_prompt = int(prompts[0].attention_mask[0].sum())
    answer = full.input_ids[0, n_prompt : int(full.attention_mask[0].sum())].tolist()

    def run_all(batches: list) -> None:
        for prompt in batches:
            forced = LogitsProcessorList([ForceTokens(answer, n_prompt)])
            with torch.inference_mode():
                out = model.generate_masks(
                    prompt, max_new_tokens=len(answer), logits_processor=forced
                )
            out[0].probabilities.float().cpu()

    run_all(prompts[:1])
    sync(device)
    start = time.perf_counter()
    run_all(prompts)
    sync(device)
    return len(prompts) / (time.perf_counter() - start)


def worker(args: argparse.Namespace) -> None:
    """One torchrun process: predict its share of the images; rank 0 prints the aggregate rate."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    model, processor, _ = build(args.preset, str(device), args.dtype)
    dtype = next(model.parameters()).dtype
    images = noise_images(args.images, args.image_size)[rank::world]
    import tempfile

    from vesselctl.stages.predict import PredictItem, PredictResult, predict_items

    bs = max(args.batch_sizes)
    items = [PredictItem(f"r{rank}_{i}", None, im) for i, im in enumerate(images)]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        settings = stage_settings(bs, args.workers, out, args.preprocessing[0] == "gpu")
        predict_items(
            model, processor, items[:bs], settings, out, device, dtype, 0, PredictResult(out)
        )
        for _ in range(args.repeats):
            dist.barrier()
            torch.cuda.synchronize()
            start = time.perf_counter()
            predict_items(
                model,
                processor,
                items,
                settings,
                out,
                device,
                dtype,
                args.workers,
                PredictResult(out),
            )
            torch.cuda.synchronize()
            dist.barrier()
            times.append(time.perf_counter() - start)
    if rank == 0:
        print(
            json.dumps(
                {
                    "world": world,
                    "batch_size": bs,
                    "images_per_s": args.images / statistics.median(times),
                }
            )
        )
    dist.destroy_process_group()


def _share(row: dict[str, Any], key: str) -> str:
    return f"{100 * row[key]:.0f}%" if row.get(key) is not None else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sa2va-1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", type=int, default=128, help="images per timed run")
    parser.add_argument("--generate-images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=1, help="also measure scaling to N GPUs")
    parser.add_argument("--workers", type=int, default=6, help="loader workers per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the main process over one loop run"
    )
    parser.add_argument(
        "--preprocessing",
        nargs="+",
        default=["gpu", "cpu"],
        choices=["gpu", "cpu"],
        help="where images are resized (inference.gpu_preprocessing); the first is used for "
        "the multi-GPU run",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import torch

    from vesselctl.files import atomic_write_json, run_provenance

    device = torch.device(args.device)
    model, processor, _ = build(args.preset, args.device, args.dtype)
    dtype = next(model.parameters()).dtype
    images = noise_images(args.images, args.image_size)
    rows = []
    for preprocessing in args.preprocessing:
        for bs in args.batch_sizes:
            rate, peak, wait, model_share = single_pass_rate(
                model,
                processor,
                images,
                bs,
                device,
                dtype,
                args.repeats,
                args.workers,
                preprocessing == "gpu",
            )
            rows.append(
                {
                    "mode": "single_pass" if preprocessing == "gpu" else "single_pass_pil",
                    "gpus": 1,
                    "batch_size": bs,
                    "images_per_s": rate,
                    "peak_memory_gib": peak,
                    "input_wait_share": wait,
                    "model_share": model_share,
                }
            )
    first_mode = "single_pass" if args.preprocessing[0] == "gpu" else "single_pass_pil"
    for bs in args.batch_sizes:
        rows.append(
            {
                "mode": "model_only",
                "gpus": 1,
                "batch_size": bs,
                "images_per_s": model_only_rate(model, processor, images, bs, device, dtype),
                "peak_memory_gib": None,
            }
        )
    profile = None
    if args.profile:
        profile = profile_loop(
            model,
            processor,
            images,
            max(args.batch_sizes),
            device,
            dtype,
            args.workers,
            args.preprocessing[0] == "gpu",
        )
        print(profile)
    gen = generate_rate(model, processor, images[: args.generate_images], device, dtype)
    rows.append(
        {
            "mode": "generate",
            "gpus": 1,
            "batch_size": 1,
            "images_per_s": gen,
            "peak_memory_gib": None,
        }
    )
    del model
    if args.gpus > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={args.gpus}",
            __file__,
            "--worker",
            "--preset",
            args.preset,
            "--dtype",
            args.dtype,
            "--images",
            str(args.images),
            "--image-size",
            str(args.image_size),
            "--repeats",
            str(args.repeats),
            "--batch-sizes",
            str(max(args.batch_sizes)),
            "--workers",
            str(args.workers),
            "--preprocessing",
            args.preprocessing[0],
        ]
        torch.cuda.empty_cache()
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"multi-GPU worker failed with exit code {out.returncode}")
        multi = json.loads(lines[-1])
        rows.append(
            {
                "mode": first_mode,
                "gpus": args.gpus,
                "batch_size": multi["batch_size"],
                "images_per_s": multi["images_per_s"],
                "peak_memory_gib": None,
            }
        )
    one_gpu_best = {
        r["batch_size"]: r["images_per_s"]
        for r in rows
        if r["mode"] == first_mode and r["gpus"] == 1
    }
    for row in rows:
        row["speedup_vs_generate"] = row["images_per_s"] / gen
        if row["gpus"] > 1:
            row["scaling_vs_1_gpu"] = row["images_per_s"] / one_gpu_best[row["batch_size"]]

    print(
        f"{'mode':<17}{'gpus':>5}{'batch':>6}{'images/s':>10}{'peak GiB':>10}{'vs gen':>8}"
        f"{'scaling':>9}{'input wait':>11}{'in model':>9}"
    )
    for r in rows:
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        scaling = f"{r['scaling_vs_1_gpu']:.2f}x" if "scaling_vs_1_gpu" in r else "-"
        print(
            f"{r['mode']:<17}{r['gpus']:>5}{r['batch_size']:>6}{r['images_per_s']:>10.2f}"
            f"{peak:>10}{r['speedup_vs_generate']:>7.1f}x{scaling:>9}"
            f"{_share(r, 'input_wait_share'):>11}{_share(r, 'model_share'):>9}"
        )
    if args.out is not None:
        atomic_write_json(
            args.out,
            {
                "benchmark": "predict",
                "settings": {k: str(v) for k, v in vars(args).items()},
                "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "provenance": run_provenance(include_gpus=device.type == "cuda"),
                "results": rows,
                "main_process_profile": profile,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
