"""Training and prediction speed of Sa2VA: the plain composition against each speed switch.

Issue 10's benchmark. Real-size Sa2VA-1B / Sa2VA-4B architectures with random weights in bf16,
micro-batch 8, one 448 tile per 512x512 image (~300 LLM tokens), LoRA r=64 on every LLM Linear,
SAM2 mask decoder + projector + text_hidden_fcs trained, AdamW, one GPU, through the same pieces
the train stage uses (apply_trainable, build_engine's TorchEngine: fp32 trainable weights, bf16
autocast). Configurations, each a fresh model in the same process and call:

  baseline       the plain composition (the anchor's configuration): LLM gradient checkpointing
                 on, full copies of the embeddings and lm_head (official recipe), no compile
  new_tokens     + only the new tokens' rows train (peft trainable_token_indices)
  no_ckpt        + no gradient checkpointing
  compile        + torch.compile of what trains (regional: the LLM decoder layers and SAM2's
                 mask decoder, as model.compile: llm; --compile-parts changes it)
  encoder_cache  + frozen-encoder outputs (InternViT, SAM2 Hiera) served from a GPU cache
  all            new_tokens + compile + encoder_cache + checkpointing chosen by a measured step
  all_ckpt       all, with checkpointing forced on (the low-memory variant)
  all_no_cache   all without the encoder cache (what runs with random augmentation get)

Per configuration: median step time (forward, backward, clip, AdamW step; data already on the
GPU), samples/s, speed-up over baseline, peak GPU memory (max_memory_allocated, weights
included), MFU, and the first step's loss parts on the same batch with the same seed (the loss
check: each switch must give the baseline's losses to bf16 tolerance). FLOPs are counted once
per shape with torch's FlopCounterMode over one forward+backward as executed without
recomputation (frozen weights get no weight gradients; attention switched to eager while
counting because the counter rejects grouped-query SDPA on some builds); configurations that
serve the encoders from the cache do not execute (and are not credited) the encoders' FLOPs.
MFU = FLOPs per step / step time / the bf16 matmul rate measured in the same call (8192^3, as
the anchor script does).

Prediction: images/s of ``predict_probabilities`` (one teacher-forced pass) at batch 32 for the
first preset, plain and with the LLM, vision and SAM2 encoder blocks compiled.

Data: the processor's CPU throughput per DataLoader worker (samples/s), and how many workers the
fastest configuration needs.

Token ids: inputs come from the real processor with the tiny offline tokenizer, its [SEG] and
image-token ids remapped to the real model's (as benchmarks/model.py explains).

GPU (one card; each call under 10 minutes, write JSON as it goes):

    python benchmarks/perf.py --preset sa2va-1b --configs baseline all new_tokens no_ckpt \
        compile encoder_cache --budget-s 300 --out perf_1b.json
    python benchmarks/perf.py --preset sa2va-4b --no-predict --budget-s 240 --out perf_4b.json

Order of work: baseline, all, all_ckpt, then prediction (first preset), then the single switches;
whatever has not started when --budget-s has passed is skipped and recorded as skipped. Results
are written after every configuration, so a killed call still returns what it measured.

CPU check (tiny preset; aot_eager keeps compile checks free of a C++ toolchain):

    python benchmarks/perf.py --device cpu --preset tiny --image-size 64 --steps 2 --warmup 1 \\
        --predict-batch 4 --compile-backend aot_eager --predict-compile llm --out /tmp/perf.json
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": dict(embeddings="full_copy", ckpt="on", compile=False, cache=False),
    "new_tokens": dict(embeddings="new_tokens", ckpt="on", compile=False, cache=False),
    "no_ckpt": dict(embeddings="full_copy", ckpt="off", compile=False, cache=False),
    "compile": dict(embeddings="full_copy", ckpt="on", compile=True, cache=False),
    "encoder_cache": dict(embeddings="full_copy", ckpt="on", compile=False, cache=True),
    "all": dict(embeddings="new_tokens", ckpt="auto", compile=True, cache=True),
    "all_ckpt": dict(embeddings="new_tokens", ckpt="on", compile=True, cache=True),
    "all_no_cache": dict(embeddings="new_tokens", ckpt="auto", compile=True, cache=False),
}


# --- inputs ------------------------------------------------------------------------------------


def _samples(count: int, size: int, train: bool) -> list[Any]:
    from model import _synthetic_images  # benchmarks/model.py: numpy-only drawing

    from vesselctl.model.batch import SegSample

    images = _synthetic_images(count, size)
    out = []
    for i, image in enumerate(images):
        mask = (image[:, :, 0] == 90) if train else None  # the vessel strokes
        out.append(SegSample(f"img{i}", image, ["blood vessels"], [mask] if train else None))
    return out


class Shape:
    """One preset's config, processor, id map and new-token ids."""

    def __init__(self, preset: str, image_size: int) -> None:
        from vesselctl.model.presets import TINY_PROCESSOR_OVERRIDES, preset_config
        from vesselctl.model.processor import ProcessorOptions, Sa2VAProcessor
        from vesselctl.model.tokenizer import build_tiny_tokenizer, token_ids
        from vesselctl.training.trainable import SA2VA_NEW_TOKENS

        self.preset = preset
        tokenizer = build_tiny_tokenizer()
        self.config = preset_config(preset, tokenizer)
        overrides = dict(TINY_PROCESSOR_OVERRIDES.get(preset, {}))
        if self.config.family == "internvl":
            overrides["max_tiles"] = 1  # one tile per image, the issue's setting
        self.processor = Sa2VAProcessor(
            tokenizer, ProcessorOptions.from_config(self.config, **overrides)
        )
        tiny = token_ids(tokenizer, ["[SEG]", "<IMG_CONTEXT>"])
        self.id_map = {
            tiny["[SEG]"]: self.config.seg_token_id,
            tiny["<IMG_CONTEXT>"]: self.config.image_token_id,
        }
        if preset.startswith("tiny"):
            ids = token_ids(tokenizer, list(SA2VA_NEW_TOKENS))
            self.new_token_ids = [ids[t] for t in SA2VA_NEW_TOKENS]
        else:  # released InternVL Sa2VA: the five added tokens are the last rows, [SEG] first
            seg = self.config.seg_token_id
            self.new_token_ids = list(range(seg, seg + len(SA2VA_NEW_TOKENS)))
        self.image_size = image_size

    def batches(self, count: int, micro_batch: int, train: bool) -> list[Any]:
        """``count`` batches, right-padded to one common length: random question templates give
        a few tokens' difference between batches, and one static shape means torch.compile
        compiles once per configuration instead of once more for dynamic shapes."""
        from model import remap_token_ids  # benchmarks/model.py

        samples = _samples(count * micro_batch, self.image_size, train)
        batches = [
            remap_token_ids(self.processor(samples[i : i + micro_batch], train=train), self.id_map)
            for i in range(0, len(samples), micro_batch)
        ]
        length = max(b.input_ids.shape[1] for b in batches)
        pad_id = self.processor.tokenizer.pad_token_id
        for b in batches:
            extra = length - b.input_ids.shape[1]
            if extra:
                pad = b.input_ids.new_full((b.batch_size, extra), pad_id)
                b.input_ids = torch_cat([b.input_ids, pad])
                b.attention_mask = torch_cat([b.attention_mask, pad * 0])
                if b.labels is not None:
                    b.labels = torch_cat([b.labels, pad * 0 - 100])
                if b.mm_token_type_ids is not None:
                    b.mm_token_type_ids = torch_cat([b.mm_token_type_ids, pad * 0])
        return batches


def torch_cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts, dim=1)


# --- device helpers ----------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_rate(device: Any) -> float | None:
    """Measured bf16 matmul FLOP/s (8192^3), the MFU denominator (as sa2va_anchor.py)."""
    import torch

    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    _sync(device)
    rate = 2 * 8192**3 * 20 / (time.perf_counter() - start)
    del a, b
    _free(device)
    return rate


# --- FLOPs ------------------------------------------------------------------------------------


def count_flops(model: Any, batch: Any, autocast: Any) -> dict[str, float] | None:
    """FLOPs of one forward+backward as executed without recomputation, and of the two frozen
    encoders' forwards (what the encoder cache saves)."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_config = base.mllm.config.text_config
    previous_attn = text_config._attn_implementation
    previous_ckpt = base.llm_gradient_checkpointing
    device = batch.input_ids.device
    ctx = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    try:
        text_config._attn_implementation = "eager"
        base.set_llm_gradient_checkpointing(False)
        with FlopCounterMode(display=False) as step_counter, ctx:
            output = model(batch)
            output.loss.backward()
        with torch.no_grad(), ctx:
            with FlopCounterMode(display=False) as vision_counter:
                base.mllm.model.vision_tower(pixel_values=batch.pixel_values.to(base.mllm.dtype))
            with FlopCounterMode(display=False) as sam2_counter:
                base.sam2.vision_encoder(batch.sam2_pixel_values.to(base.sam2.dtype))
    except Exception as exc:  # counting is best effort; timings still stand
        print(f"flop counting failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    finally:
        text_config._attn_implementation = previous_attn
        base.set_llm_gradient_checkpointing(previous_ckpt)
        model.zero_grad(set_to_none=True)
    return {
        "step": float(step_counter.get_total_flops()),
        "vision_encoder": float(vision_counter.get_total_flops()),
        "sam2_encoder": float(sam2_counter.get_total_flops()),
    }


# --- one training configuration -----------------------------------------------------------------


def run_config(
    name: str, shape: Shape, batches_cpu: list[Any], args: argparse.Namespace, device: Any
) -> dict[str, Any]:
    import torch

    from vesselctl.model.acceleration import (
        FrozenEncoderCache,
        choose_gradient_checkpointing,
        compile_blocks,
        enable_encoder_cache,
        probe_train_step,
    )
    from vesselctl.model.load import build_model
    from vesselctl.settings.train import TrainSettings
    from vesselctl.training.engine import build_engine
    from vesselctl.training.trainable import apply_trainable

    spec = CONFIGS[name]
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    _free(device)
    settings = TrainSettings(
        lora={"r": args.lora_r, "alpha": 2 * args.lora_r},
        trainable={"embeddings": spec["embeddings"]},
        optim={"micro_batch": args.micro_batch, "lr": 2e-5},
        distributed={"strategy": "single"},
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(shape.config, dtype, "sdpa")
    model.set_llm_gradient_checkpointing(spec["ckpt"] == "on")
    trained, report = apply_trainable(model, settings.lora, settings.trainable, shape.new_token_ids)
    total_steps = args.warmup + args.steps + len(batches_cpu) + 2
    built = build_engine(trained, settings, "single", 1, device, cuda, total_steps)
    engine = built.engine
    row: dict[str, Any] = {
        "preset": shape.preset,
        "config": name,
        **spec,
        "trainable_parameters": report.trainable,
        "trainable_groups": report.groups,
    }

    batches = [b.to(device, built.batch_dtype) for b in batches_cpu]
    if args.no_image_positions:  # the model finds them with masked_scatter (GPU waits)
        for b in batches:
            b.image_positions = None
    if spec["cache"]:
        cache = FrozenEncoderCache(storage="cuda" if cuda else "cpu")
        enable_encoder_cache(model, cache)
    else:
        cache = None
        for b in batches:
            b.vision_keys = b.sam2_keys = None
    if spec["compile"]:
        row["compiled_blocks"] = compile_blocks(
            model,
            tuple(args.compile_parts.split(",")),
            mode=args.compile_mode,
            backend=args.compile_backend,
        )
        # As the train stage does for model.compile_mode reduce-overhead.
        engine.cuda_graphs = cuda and args.compile_mode == "reduce-overhead"

    first_losses: list[list[float]] = []
    pending: list[Any] = []

    def record(output: Any) -> None:
        parts = (output.loss_mask, output.loss_dice, output.llm_loss)
        pending.append(torch.stack([p.detach().float() for p in parts]))
        if args.loss_check_at == "forward":  # before backward, as DeepSpeed runs need
            verify()

    def verify() -> None:
        # One copy of the loss parts to the CPU per step before the update, where the train
        # loop's loss check makes it (it waits for the GPU); the first values are the loss check.
        if not pending:  # already verified after forward
            return
        values = torch.stack(pending).cpu().tolist()
        pending.clear()
        if not first_losses:
            first_losses.append(values[0])

    def forward_backward(batch: Any) -> None:
        torch.manual_seed(1234)  # same point sampling (and dropout) on the loss-check step
        engine.micro_step(batch, True, record)

    def step(batch: Any) -> None:
        forward_backward(batch)
        engine.optimizer_step(verify)

    compile_s = None
    if spec["compile"]:
        start = time.perf_counter()
        reason = probe_train_step(model, lambda: forward_backward(batches[0]))
        _sync(device)
        compile_s = time.perf_counter() - start
        trained.zero_grad(set_to_none=True)
        row["compile_fallback"] = reason
    if spec["ckpt"] == "auto":
        # AdamW's two fp32 states per trainable value do not exist before the first step.
        adam_bytes = 8 * sum(p.numel() for p in trained.parameters() if p.requires_grad)
        choice = choose_gradient_checkpointing(
            model,
            lambda: forward_backward(batches[0]),
            device,
            args.ckpt_memory_fraction,
            pending_bytes=adam_bytes,
        )
        trained.zero_grad(set_to_none=True)
        row["ckpt_choice"] = {
            "enabled": choice.enabled,
            "peak_without_gib": choice.peak_without_gib,
            "reason": choice.reason,
        }
    row["gradient_checkpointing"] = model.llm_gradient_checkpointing
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        # Weights (+ cache entries, compiled graphs' buffers), before optimizer states exist.
        row["allocated_before_steps_gib"] = torch.cuda.memory_allocated(device) / 2**30

    # Warm-up: at least one pass over every distinct batch, so a cache is full when timing.
    warmup = max(args.warmup, len(batches) if cache is not None else 0)
    for i in range(warmup):
        step(batches[i % len(batches)])
    _sync(device)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(batches[(warmup + i) % len(batches)])
        _sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    if name in args.profile_configs:
        trace = args.trace_dir / f"trace_{shape.preset}_{name}.json.gz" if args.trace_dir else None
        table, summary = profile_step(lambda: step(batches[0]), device, trace)
        row["kernel_profile"], row["profile_summary"] = table, summary
        print(f"{shape.preset} {name}: where one step's GPU time goes {summary}\n{table}")
    if cuda:  # + AdamW states and any gradients kept between steps
        row["allocated_after_steps_gib"] = torch.cuda.memory_allocated(device) / 2**30
    row.update(
        step_s=median,
        step_times_s=times,
        samples_per_s=args.micro_batch / median,
        peak_memory_gib=_peak_gib(device),
        first_losses=first_losses[0] if first_losses else None,
        compile_s=compile_s,
        tokens_per_sample=int(batches_cpu[0].attention_mask[0].sum()),
    )
    if cache is not None:
        row["cache_stats"] = {
            "hits": cache.stats.hits,
            "misses": cache.stats.misses,
            "stored_gib": cache.stats.stored_bytes / 2**30,
        }
    if args.count_flops and name == args.flops_config:
        row["flops"] = count_flops(trained, batches[0], built.autocast_dtype)
    enable_encoder_cache(model, None)
    return row


def profile_step(step: Any, device: Any, trace: Path | None = None) -> tuple[str, dict]:
    """torch.profiler table of one step (the 25 operators with the most GPU time) and how busy
    the GPU was: kernel time (overlaps merged) against the step's wall time. ``trace``: also
    write the Chrome trace there, gzipped, for a timeline viewer."""
    import gzip
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        _sync(device)
        wall = time.perf_counter() - start
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        events = json.loads(raw.read_text()).get("traceEvents", [])
        if trace is not None:
            with gzip.open(trace, "wb") as f:
                f.write(raw.read_bytes())
    kernels = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
        for e in events
        if e.get("cat") == "kernel"
    )
    busy_us, end = 0.0, float("-inf")
    for s, e in kernels:  # union of kernel intervals (streams may overlap)
        if e > end:
            busy_us += e - max(s, end)
            end = e
    summary = {"wall_ms": wall * 1000, "gpu_busy_ms": busy_us / 1000, "kernels": len(kernels)}
    return table, summary


# --- prediction -----------------------------------------------------------------------------------


def predict_parts(model: Any, batch: Any, steps: int, device: Any) -> dict[str, float]:
    """Median seconds per batch of the two big parts of a prediction, each run alone: the MLLM
    forward (vision tower + LLM) and the SAM2 image encoder. What is left of the full pass is
    the mask decoder and the upsampling to the image size."""
    import torch
    from model import _timed  # benchmarks/model.py: warm-up, then synchronised timings

    def timed(fn: Any) -> float:
        with torch.inference_mode():
            return statistics.median(_timed(fn, str(device), warmup=1, repeats=steps))

    pixels = batch.sam2_pixel_values.to(model.sam2.dtype)
    parts = {
        "mllm_forward": timed(lambda: model.mllm_hidden_states(batch)),
        "sam2_image_encoder": timed(lambda: model.sam2.vision_encoder(pixels, return_dict=True)),
    }
    if device.type == "cuda":  # both parts at once, the SAM2 encoder on a second stream
        side = torch.cuda.Stream(device)

        def overlapped() -> None:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                model.sam2.vision_encoder(pixels, return_dict=True)
            model.mllm_hidden_states(batch)
            torch.cuda.current_stream(device).wait_stream(side)

        parts["both_on_two_streams"] = timed(overlapped)
    return parts


def run_predict(shape: Shape, args: argparse.Namespace, device: Any) -> list[dict[str, Any]]:
    import torch

    from vesselctl.model.acceleration import compile_blocks
    from vesselctl.model.load import build_model

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    _free(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(shape.config, dtype, "sdpa").eval()
    (batch_cpu,) = shape.batches(1, args.predict_batch, train=False)
    batch = batch_cpu.to(device, dtype)
    rows = []
    reference = None
    for mode in ("plain", "compiled"):
        compile_s = None
        with torch.inference_mode():
            if mode == "compiled":
                parts = tuple(p for p in args.predict_compile.split(",") if p)
                compile_blocks(model, parts, mode=args.compile_mode, backend=args.compile_backend)
                start = time.perf_counter()
                out = model.predict_probabilities(batch)
                _sync(device)
                compile_s = time.perf_counter() - start
            for _ in range(args.warmup):
                out = model.predict_probabilities(batch)
            _sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                out = model.predict_probabilities(batch)
                _sync(device)
                times.append(time.perf_counter() - start)
        probs = torch.cat([p.float().flatten() for p in out])
        if reference is None:
            reference = probs
        median = statistics.median(times)
        parts_s = predict_parts(model, batch, args.steps, device)
        profile = None
        if args.profile_predict:
            trace = args.trace_dir / f"trace_predict_{mode}.json.gz" if args.trace_dir else None
            with torch.inference_mode():
                table, profile = profile_step(
                    lambda m=model, b=batch: m.predict_probabilities(b), device, trace
                )
            print(f"{shape.preset} predict {mode}: {profile}\n{table}")
        rows.append(
            dict(
                preset=shape.preset,
                mode=mode,
                batch_size=args.predict_batch,
                batch_s=median,
                images_per_s=args.predict_batch / median,
                peak_memory_gib=_peak_gib(device),
                compile_s=compile_s,
                max_abs_prob_diff_vs_plain=float((probs - reference).abs().max()),
                parts_s=parts_s,
                profile_summary=profile,
            )
        )
    del model, batch
    _free(device)
    return rows


# --- data pipeline --------------------------------------------------------------------------------


def processor_rate(shape: Shape, micro_batch: int) -> dict[str, float]:
    """CPU samples/s of one DataLoader worker: process + collate + encoder-cache keys."""
    from vesselctl.model.acceleration import attach_encoder_keys

    samples = _samples(micro_batch, shape.image_size, train=True)
    shape.processor(samples, train=True)
    start = time.perf_counter()
    batch = shape.processor(samples, train=True)
    process_s = time.perf_counter() - start
    start = time.perf_counter()
    attach_encoder_keys(batch)
    keys_s = time.perf_counter() - start
    return {
        "process_samples_per_s": micro_batch / process_s,
        "keys_samples_per_s": micro_batch / keys_s,
    }


# --- report -----------------------------------------------------------------------------------


def _finish_rows(rows: list[dict[str, Any]], peak_rate: float | None) -> None:
    """Speed-ups, FLOPs per step, MFU and loss differences, against each preset's baseline."""
    for preset in {r["preset"] for r in rows}:
        group = [r for r in rows if r["preset"] == preset and "step_s" in r]
        base = next((r for r in group if r["config"] == "baseline"), None)
        flops = next((r["flops"] for r in group if r.get("flops")), None)
        for r in group:
            if base is not None:
                r["speedup_vs_baseline"] = r["samples_per_s"] / base["samples_per_s"]
                if base.get("first_losses") and r.get("first_losses"):
                    diffs = [
                        abs(a - b) / max(abs(b), 1e-6)
                        for a, b in zip(r["first_losses"], base["first_losses"], strict=True)
                    ]
                    r["max_rel_loss_diff_vs_baseline"] = max(diffs)
            if flops:
                executed = flops["step"]
                if r["cache"]:
                    executed -= flops["vision_encoder"] + flops["sam2_encoder"]
                r["tflop_per_step"] = executed / 1e12
                r["achieved_tflops"] = executed / r["step_s"] / 1e12
                if peak_rate:
                    r["mfu"] = executed / r["step_s"] / peak_rate


def _print(rows: list[dict[str, Any]], predict: list[dict[str, Any]], data: dict) -> None:
    header = (
        f"{'preset':<11}{'config':<15}{'ckpt':>5}{'ms/step':>9}{'samples/s':>10}{'x base':>8}"
        f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}{'loss diff':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "step_s" not in r:
            print(f"{r['preset']:<11}{r['config']:<15}  {r.get('error', 'skipped')}")
            continue

        def fmt(key: str, width: int, spec: str, scale: float = 1.0, row: dict = r) -> str:
            value = row.get(key)
            text = "-" if value is None else format(value * scale, spec)
            return text.rjust(width)

        print(
            f"{r['preset']:<11}{r['config']:<15}"
            f"{'on' if r['gradient_checkpointing'] else 'off':>5}"
            f"{r['step_s'] * 1000:>9.1f}{r['samples_per_s']:>10.2f}"
            f"{fmt('speedup_vs_baseline', 7, '.2f')}x{fmt('achieved_tflops', 9, '.1f')}"
            f"{fmt('mfu', 6, '.1f', 100)}%{fmt('peak_memory_gib', 9, '.2f')}"
            f"{fmt('max_rel_loss_diff_vs_baseline', 10, '.1e')}"
        )
    if predict:
        print()
        print(
            f"{'preset':<11}{'predict':<10}{'batch':>6}{'images/s':>10}{'peak GiB':>9}"
            f"{'MLLM ms':>9}{'SAM2 enc ms':>12}{'both, 2 streams':>16}"
        )
        for p in predict:
            if "images_per_s" not in p:
                print(f"{p['preset']:<11}{'predict':<10}  {p.get('error', 'skipped')}")
                continue
            peak = "-" if p["peak_memory_gib"] is None else f"{p['peak_memory_gib']:.2f}"
            parts = p.get("parts_s") or {}
            print(
                f"{p['preset']:<11}{p['mode']:<10}{p['batch_size']:>6}"
                f"{p['images_per_s']:>10.1f}{peak:>9}"
                f"{parts.get('mllm_forward', float('nan')) * 1000:>9.1f}"
                f"{parts.get('sam2_image_encoder', float('nan')) * 1000:>12.1f}"
                f"{parts.get('both_on_two_streams', float('nan')) * 1000:>16.1f}"
            )
    if data:
        print()
        print(
            f"data: one worker processes {data['process_samples_per_s']:.1f} samples/s "
            f"(cache keys {data['keys_samples_per_s']:.1f} samples/s); the fastest configuration "
            f"needs >= {data.get('workers_needed', '?')} workers"
        )


def main(argv: list[str] | None = None) -> int:
    from vesselctl.model.acceleration import COMPILE_SETTING_PARTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["sa2va-1b", "sa2va-4b"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--distinct-batches", type=int, default=3)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's default)",
    )
    parser.add_argument(
        "--compile-parts",
        default=",".join(COMPILE_SETTING_PARTS["llm"]),
        help="compiled regions in the compile configurations (as model.compile: llm)",
    )
    parser.add_argument(
        "--no-image-positions",
        action="store_true",
        help="drop the processor's image-token positions (transformers' masked_scatter path)",
    )
    parser.add_argument(
        "--loss-check-at",
        choices=["update", "forward"],
        default="update",
        help="where the per-step copy of the losses to the CPU waits for the GPU: before the "
        "update (the train loop on one process or DDP) or after forward (DeepSpeed runs)",
    )
    parser.add_argument("--ckpt-memory-fraction", type=float, default=0.9)
    parser.add_argument("--no-flops", dest="count_flops", action="store_false")
    parser.add_argument("--flops-config", default="baseline", choices=list(CONFIGS))
    parser.add_argument(
        "--profile-configs",
        nargs="*",
        default=[],
        choices=list(CONFIGS),
        help="also print a torch.profiler table of one step of these configurations",
    )
    parser.add_argument(
        "--trace-dir",
        type=Path,
        default=None,
        help="write a gzipped Chrome trace of each profiled step into this folder",
    )
    parser.add_argument(
        "--profile-predict", action="store_true", help="profile one prediction batch per mode"
    )
    parser.add_argument("--no-predict", dest="predict", action="store_false")
    parser.add_argument("--predict-batch", type=int, default=32)
    parser.add_argument("--predict-compile", default="llm,vision,sam2")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="seconds after which configurations not yet started are skipped (recorded as such)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.trace_dir is not None:  # a missing folder would fail each profiled configuration
        args.trace_dir.mkdir(parents=True, exist_ok=True)

    import torch

    from vesselctl.files import atomic_write_json, run_provenance
    from vesselctl.model.acceleration import attach_encoder_keys

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; use --device cpu --preset tiny")
    if args.flops_config not in args.configs:
        args.flops_config = args.configs[0]
    peak_rate = matmul_rate(device)
    rows: list[dict[str, Any]] = []
    predict_rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {}

    def save() -> None:
        _finish_rows(rows, peak_rate)
        if args.out is not None:
            settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            atomic_write_json(
                args.out,
                {
                    "benchmark": "perf",
                    "settings": settings,
                    "device_name": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else "cpu",
                    "bf16_matmul_tflops": None if peak_rate is None else peak_rate / 1e12,
                    "provenance": run_provenance(include_gpus=device.type == "cuda"),
                    "train": rows,
                    "predict": predict_rows,
                    "data": data,
                },
            )

    for index, preset in enumerate(args.preset):
        shape = Shape(preset, args.image_size)
        batches = [
            attach_encoder_keys(b)
            for b in shape.batches(args.distinct_batches, args.micro_batch, train=True)
        ]
        if index == 0:
            data.update(processor_rate(shape, args.micro_batch))
        # The baseline and the combined configurations first, then prediction (first preset),
        # then the single switches: what the targets need comes before the time budget runs out.
        head = [c for c in args.configs if c in ("baseline", "all", "all_ckpt", "all_no_cache")]
        tail = [c for c in args.configs if c not in head]
        for name in [*head, "predict", *tail]:
            if name == "predict" and not (index == 0 and args.predict):
                continue
            if time.perf_counter() - started > args.budget_s:
                what = {"config": name} if name != "predict" else {"mode": "predict"}
                target = rows if name != "predict" else predict_rows
                target.append({"preset": preset, **what, "error": "skipped: time budget"})
                continue
            print(f"{preset} {name} ...", flush=True)
            try:
                if name == "predict":
                    predict_rows.extend(run_predict(shape, args, device))
                else:
                    rows.append(run_config(name, shape, batches, args, device))
            except Exception as exc:  # one failing configuration must not lose the others
                traceback.print_exc()
                error = {"preset": preset, "error": f"{type(exc).__name__}: {exc}"}
                if name == "predict":
                    predict_rows.append({**error, "mode": "predict"})
                else:
                    rows.append({**error, "config": name})
            _free(device)  # the configuration's model is gone once it returns
            save()
    timed = [r for r in rows if "samples_per_s" in r]
    if timed and data:
        fastest = max(r["samples_per_s"] for r in timed)
        data["workers_needed"] = math.ceil(fastest / data["process_samples_per_s"])
    save()
    _print(rows, predict_rows, data)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
