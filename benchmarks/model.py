"""Inference speed of Sa2VAModel: single-pass ``predict_probabilities`` vs generate-based.

Real-size architectures (Sa2VA-1B, Sa2VA-4B) with random weights in bf16 on one GPU, 512x512
images, one phrase each. For each model and batch size it reports per-image latency, images/s
and peak GPU memory of the single teacher-forced pass, and the same for the generate path run
the official way (one image at a time, greedy decoding, then SAM2 on the generated [SEG]).

Random weights never say "Sure, [SEG].", so generation is forced (a logits processor) to emit
exactly the official answer "Sure, [SEG].<|im_end|>": the shortest real answer, which favours
the generate baseline. Times cover the model only (inputs are processed before timing).

Token ids: the released tokenizers are not available offline, so inputs are built by the real
processor with the tiny tokenizer (same chat template, tiling, SAM2 input and image-token counts)
and its [SEG] / image-token ids are remapped to the real model's ids; text token counts differ
by a few tokens from the real tokenizer's, which is negligible next to 256+ image tokens.

    python benchmarks/model.py --device cuda --out model_bench.json            # GPU, real sizes
    python benchmarks/model.py --device cpu --preset tiny --out /tmp/m.json    # quick check
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _segment_distance(yy: np.ndarray, xx: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre (yy, xx) to the segment a-b (points as (x, y))."""
    direction = b - a
    length2 = float(direction @ direction) or 1.0
    t = np.clip(((xx - a[0]) * direction[0] + (yy - a[1]) * direction[1]) / length2, 0.0, 1.0)
    return np.hypot(xx - (a[0] + t * direction[0]), yy - (a[1] + t * direction[1]))


def _synthetic_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Fundus-like images: dark background, a bright disc and random dark vessel strokes.

    Drawn with numpy only: the GPU machine has no OpenCV, and the pixels' content does not
    change the model's cost.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    disc = np.hypot(yy - size // 2, xx - size // 2) <= int(size * 0.45)
    images = []
    for _ in range(count):
        image = np.zeros((size, size, 3), np.uint8)
        image[disc] = (170, 80, 40)
        for _ in range(12):
            points = rng.integers(0, size, (4, 2)).astype(np.float32)
            half_width = int(rng.integers(1, 5)) / 2.0
            stroke = np.zeros((size, size), bool)
            for a, b in itertools.pairwise(points):
                stroke |= _segment_distance(yy, xx, a, b) <= half_width
            image[stroke] = (90, 30, 20)
        images.append(image)
    return images


class ForceTokens:
    """A transformers LogitsProcessor that makes greedy decoding emit ``tokens`` in order."""

    def __init__(self, tokens: list[int], prompt_length: int) -> None:
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = min(input_ids.shape[1] - self.prompt_length, len(self.tokens) - 1)
        forced = torch.full_like(scores, torch.finfo(scores.dtype).min)
        forced[:, self.tokens[step]] = 0.0
        return forced


def remap_token_ids(batch: Any, id_map: dict[int, int]) -> Any:
    """Swap the tiny tokenizer's special ids for the real model's in input_ids and labels (see
    the module docstring); every benchmark with real-size random weights uses it."""
    ids = batch.input_ids.clone()
    labels = batch.labels.clone() if batch.labels is not None else None
    for old, new in id_map.items():
        ids[batch.input_ids == old] = new
        if labels is not None:
            labels[batch.labels == old] = new
    batch.input_ids, batch.labels = ids, labels
    return batch


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _peak_memory_gib(device: str) -> float | None:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_preset(args: argparse.Namespace, preset: str) -> list[dict[str, Any]]:
    import torch
    from transformers import LogitsProcessorList

    from vesselctl.model.batch import SegSample
    from vesselctl.model.load import build_model, resolve_dtype
    from vesselctl.model.presets import TINY_PROCESSOR_OVERRIDES, preset_config
    from vesselctl.model.processor import ProcessorOptions, Sa2VAProcessor
    from vesselctl.model.tokenizer import build_tiny_tokenizer, token_ids

    device = args.device
    dtype = resolve_dtype(args.dtype)
    tokenizer = build_tiny_tokenizer()
    config = preset_config(preset, tokenizer)
    if preset.startswith("tiny"):
        options = ProcessorOptions.from_config(config, **TINY_PROCESSOR_OVERRIDES.get(preset, {}))
    else:
        options = ProcessorOptions.from_config(config)
    processor = Sa2VAProcessor(tokenizer, options)
    image_token = "<IMG_CONTEXT>" if config.family == "internvl" else "<|image_pad|>"
    tiny_ids = token_ids(tokenizer, ["[SEG]", image_token])
    id_map = {tiny_ids["[SEG]"]: config.seg_token_id, tiny_ids[image_token]: config.image_token_id}
    if config.family == "qwen2_5_vl":
        vision = token_ids(tokenizer, ["<|vision_start|>", "<|vision_end|>"])
        id_map[vision["<|vision_start|>"]] = config.mllm_config.vision_start_token_id
        id_map[vision["<|vision_end|>"]] = config.mllm_config.vision_end_token_id

    torch.manual_seed(0)
    _reset_peak(device)
    with torch.device(device):
        model = build_model(config, dtype, args.attn).eval()
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    n_params = sum(p.numel() for p in model.parameters())

    largest = max(args.batch_sizes)
    images = _synthetic_images(max(largest, args.generate_images), args.image_size)
    samples = [SegSample(f"img{i}", im, [args.phrase]) for i, im in enumerate(images)]
    rows: list[dict[str, Any]] = []

    # --- single pass: one teacher-forced forward per batch ------------------------------------
    for batch_size in args.batch_sizes:
        batch = remap_token_ids(processor(samples[:batch_size], train=False), id_map)
        batch = batch.to(device, dtype)
        _reset_peak(device)
        with torch.inference_mode():
            times = _timed(
                lambda b=batch: model.predict_probabilities(b), device, args.warmup, args.repeats
            )
        median = statistics.median(times)
        rows.append(
            dict(
                preset=preset,
                mode="single_pass",
                batch_size=batch_size,
                tokens_per_sample=int(batch.attention_mask[0].sum()),
                latency_per_batch_ms=median * 1000,
                latency_per_image_ms=median * 1000 / batch_size,
                images_per_s=batch_size / median,
                peak_memory_gib=_peak_memory_gib(device),
            )
        )

    # --- generate: the official way, one image at a time ---------------------------------------
    n_gen = args.generate_images
    prompts = [
        remap_token_ids(processor([s], train=False, prompt_only=True), id_map).to(device, dtype)
        for s in samples[:n_gen]
    ]
    full = remap_token_ids(processor(samples[:1], train=False), id_map)
    prompt_length = int(prompts[0].attention_mask[0].sum())
    answer = full.input_ids[0, prompt_length : int(full.attention_mask[0].sum())].tolist()
    if config.seg_token_id not in answer:
        raise RuntimeError(f"answer {answer} holds no [SEG]; the prompt/answer split is wrong")

    def generate_all() -> None:
        for prompt in prompts:
            forced = LogitsProcessorList([ForceTokens(answer, prompt_length)])
            out = model.generate_masks(prompt, max_new_tokens=len(answer), logits_processor=forced)
            if out[0].probabilities.shape[0] != 1:
                raise RuntimeError("generation did not yield exactly one [SEG] mask")

    _reset_peak(device)
    with torch.inference_mode():
        times = _timed(generate_all, device, 1, max(1, args.repeats // 2))
    median = statistics.median(times)
    rows.append(
        dict(
            preset=preset,
            mode="generate",
            batch_size=1,
            tokens_per_sample=prompt_length + len(answer),
            latency_per_batch_ms=median * 1000 / n_gen,
            latency_per_image_ms=median * 1000 / n_gen,
            images_per_s=n_gen / median,
            peak_memory_gib=_peak_memory_gib(device),
        )
    )
    generate_rate = rows[-1]["images_per_s"]
    for row in rows:
        row["speedup_vs_generate"] = row["images_per_s"] / generate_rate
        row["parameters"] = n_params
        row["weights_gib"] = weights_gib
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["sa2va-1b", "sa2va-4b"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--generate-images", type=int, default=8)
    parser.add_argument("--phrase", default="blood vessels")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from vesselctl.files import atomic_write_json, run_provenance

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; use --device cpu --preset tiny")
    rows = []
    for preset in args.preset:
        rows.extend(bench_preset(args, preset))
        gc.collect()  # free one model before building the next
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    header = (
        f"{'preset':<22}{'mode':<13}{'batch':>6}{'tokens':>8}{'ms/image':>11}"
        f"{'images/s':>10}{'peak GiB':>10}{'speedup':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        print(
            f"{r['preset']:<22}{r['mode']:<13}{r['batch_size']:>6}{r['tokens_per_sample']:>8}"
            f"{r['latency_per_image_ms']:>11.1f}{r['images_per_s']:>10.2f}{peak:>10}"
            f"{r['speedup_vs_generate']:>8.1f}x"
        )
    if args.out is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        atomic_write_json(
            args.out,
            {
                "benchmark": "model_inference",
                "settings": settings,
                "device_name": torch.cuda.get_device_name()
                if args.device.startswith("cuda")
                else "cpu",
                "provenance": run_provenance(include_gpus=args.device.startswith("cuda")),
                "results": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
