"""Training throughput and memory of `vesselctl train`'s engine: strategy auto vs forced ZeRO-3.

Real-size Sa2VA architectures with random weights, LoRA (r=64 by default) + the official trained
groups, bf16, synthetic vessel images. Each configuration runs in its own process(es) (torchrun
for several GPUs) through the same pieces the train stage uses (apply_trainable, choose_strategy,
build_engine, TrainingLoop), so its numbers are the stage's numbers minus data loading.

Reported per configuration: samples/s at a fixed global batch, time per optimiser step, peak GPU
memory (max over ranks, torch.cuda.max_memory_allocated), and model FLOPs utilisation: the FLOPs
of one training micro-step counted by torch's FlopCounterMode (LLM attention switched to eager
while counting, because FlopCounterMode rejects grouped-query SDPA on some torch builds; frozen
weights get no weight-gradient FLOPs, exactly as executed) divided by step time, against the
bf16 matmul rate measured on the same machine in the same call. A resume check trains, saves,
restores into a fresh engine and compares the weights after the same further steps.

GPU machine (the lead runs this; about 10 minutes of device time with the defaults):

    python benchmarks/train.py --out train_bench.json

CPU check with the tiny preset (DDP with gloo for 2 processes; ZeRO on DeepSpeed's CPU backend):

    python benchmarks/train.py --device cpu --preset tiny --big-preset "" --image-size 64 \\
        --steps 2 --warmup 1 --out /tmp/train_bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


# ----------------------------------------------------------------------------------------------
# Worker: one configuration, possibly one rank of several
# ----------------------------------------------------------------------------------------------
def _synthetic_samples(count: int, size: int, seed: int = 0) -> list[Any]:
    import numpy as np

    from vesselctl.model.batch import SegSample

    rng = np.random.default_rng(seed)
    samples = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        centre = rng.uniform(0.3, 0.7) * size
        mask = np.abs(yy - centre - 0.3 * (xx - size / 2)) < size * 0.03
        gray = np.where(mask, 200, 50) + rng.normal(0, 10, (size, size))
        image = np.clip(gray, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
        samples.append(SegSample(f"s{i}", image, ["blood vessels"], [mask]))
    return samples


def _count_step_flops(model: Any, batch: Any, autocast: Any) -> float | None:
    """FLOPs of one forward+backward, as executed (frozen weights: no weight gradients)."""

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_config = base.mllm.config.text_config
    previous = text_config._attn_implementation
    text_config._attn_implementation = "eager"
    counter = FlopCounterMode(display=False)
    ctx = torch.autocast(batch.input_ids.device.type, dtype=autocast) if autocast else None
    try:
        with counter, ctx or contextlib.nullcontext():
            output = model(batch)
            output.loss.backward()
    except Exception as exc:  # counting is best effort; the timing still stands
        print(f"flop counting failed: {exc}", file=sys.stderr)
        return None
    finally:
        text_config._attn_implementation = previous
        model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_worker(spec: dict[str, Any]) -> None:
    import torch
    from model import remap_token_ids  # benchmarks/model.py

    from vesselctl.model.load import build_model, resolve_dtype
    from vesselctl.model.presets import TINY_PROCESSOR_OVERRIDES, preset_config
    from vesselctl.model.processor import ProcessorOptions, Sa2VAProcessor
    from vesselctl.model.tokenizer import build_tiny_tokenizer, token_ids
    from vesselctl.settings.train import TrainSettings
    from vesselctl.training.engine import build_engine
    from vesselctl.training.launch import DistEnv, choose_strategy, export_dist_env, launcher_env
    from vesselctl.training.logs import RunLog
    from vesselctl.training.loop import LoopConfig, TrainingLoop
    from vesselctl.training.trainable import apply_trainable

    dist = launcher_env() or DistEnv()
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda", dist.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_distributed:
        export_dist_env(dist)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")

    preset = spec["preset"]
    tokenizer = build_tiny_tokenizer()
    config = preset_config(preset, tokenizer)
    overrides = TINY_PROCESSOR_OVERRIDES.get(preset, {}) if preset.startswith("tiny") else {}
    processor = Sa2VAProcessor(tokenizer, ProcessorOptions.from_config(config, **overrides))
    image_token = "<IMG_CONTEXT>" if config.family == "internvl" else "<|image_pad|>"
    tiny = token_ids(tokenizer, ["[SEG]", image_token])
    id_map = {tiny["[SEG]"]: config.seg_token_id, tiny[image_token]: config.image_token_id}

    settings = TrainSettings(
        lora={"r": spec["lora_r"], "alpha": 2 * spec["lora_r"]},
        optim={
            "micro_batch": spec["micro_batch"],
            "accumulation": spec["accumulation"],
            "lr": 2e-5,
        },
        distributed={"strategy": spec["strategy"]},
        trainable={"embeddings": spec.get("embeddings", "full_copy")},
    )
    bf16 = cuda
    dtype = resolve_dtype("bfloat16" if bf16 else "float32")

    def build() -> tuple[Any, Any, str]:
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(config, dtype, "sdpa")
        if spec["grad_ckpt"]:
            model.set_llm_gradient_checkpointing(True)
        new_ids = [config.seg_token_id]  # stand-in: the real tokenizer's added tokens
        model, report = apply_trainable(model, settings.lora, settings.trainable, new_ids)
        torch.manual_seed(1 + dist.rank)
        frozen = sum(p.numel() * p.element_size() for p in model.parameters())
        memory = torch.cuda.get_device_properties(device).total_memory if cuda else None
        strategy = choose_strategy(spec["strategy"], dist.world_size, cuda, frozen, memory)
        if strategy == "single" and dist.is_distributed:
            strategy = "ddp"
        return model, report, strategy

    model, report, strategy = build()
    total = spec["warmup"] + spec["steps"]
    samples = _synthetic_samples(spec["micro_batch"] * 4, spec["image_size"])
    batches = [
        remap_token_ids(processor(samples[i : i + spec["micro_batch"]], train=True), id_map)
        for i in range(0, len(samples), spec["micro_batch"])
    ]
    flops = None
    if spec["count_flops"]:
        # Before any engine wraps the model: no DDP/DeepSpeed hooks see this extra backward.
        probe = batches[0].to(device, dtype if bf16 else None)
        flops = _count_step_flops(model, probe, torch.bfloat16 if bf16 else None)
    schedule_steps = total + 4  # the resume check's fresh engine must use the same schedule
    spec["schedule_steps"] = schedule_steps
    built = build_engine(model, settings, strategy, dist.world_size, device, bf16, schedule_steps)
    samples = _synthetic_samples(spec["micro_batch"] * 4, spec["image_size"])
    batches = [
        remap_token_ids(processor(samples[i : i + spec["micro_batch"]], train=True), id_map)
        for i in range(0, len(samples), spec["micro_batch"])
    ]

    _BATCHES[id(spec)] = batches

    def stream(start: int = 0):
        index = start
        while True:
            yield batches[index % len(batches)]
            index += 1

    run_dir = Path(spec["run_dir"])
    log = RunLog(run_dir, False, tensorboard=False, progress=False, total_steps=total, start_step=0)

    def make_loop(engine: Any, steps: int) -> TrainingLoop:
        config_ = LoopConfig(
            total_steps=steps, accumulation=spec["accumulation"],
            effective_batch=spec["micro_batch"] * spec["accumulation"] * dist.world_size,
            steps_per_epoch=10**9, log_every=10**9, val_every=0, val_threshold=0.5,
            val_micro_batch=1, checkpoint_every=10**9, keep_last=1, save_final=False,
            device=device, batch_dtype=built.batch_dtype, autocast_dtype=built.autocast_dtype,
            strategy=strategy,
        )  # fmt: skip
        return TrainingLoop(engine, config_, dist, run_dir, log, lambda s: {"step": s}, None, None)

    loop = make_loop(built.engine, spec["warmup"])
    data = stream()
    loop.run(data, time.perf_counter())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    loop.cfg.total_steps = total
    step_times: list[float] = []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        loop.cfg.total_steps = loop.state.global_step + 1
        loop.run(data, started)
        if cuda:
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    resume = None
    if spec["resume_check"]:
        resume = _resume_check(spec, loop, built, build, make_loop, settings, dist, device, bf16)

    peaks = [peak]
    if dist.is_distributed:
        gathered: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, peak)
        peaks = gathered
    if dist.is_main:
        step = statistics.median(step_times)
        global_batch = spec["micro_batch"] * spec["accumulation"] * dist.world_size
        result = {
            "preset": preset,
            "gpus": dist.world_size,
            "strategy_requested": spec["strategy"],
            "strategy": strategy,
            "micro_batch": spec["micro_batch"],
            "accumulation": spec["accumulation"],
            "global_batch": global_batch,
            "grad_ckpt": spec["grad_ckpt"],
            "embeddings": settings.trainable.embeddings,
            "image_size": spec["image_size"],
            "tokens_per_sample": int(batches[0].attention_mask[0].sum()),
            "lora_r": spec["lora_r"],
            "trainable_params": report.trainable,
            "total_params": report.total,
            "step_time_s": step,
            "samples_per_s": global_batch / step,
            "peak_memory_gib": max(p for p in peaks if p is not None) if cuda else None,
            "peak_memory_gib_per_rank": peaks,
            # one micro-batch's FLOPs on one rank x micro-batches per step x ranks
            "flops_per_step": flops * spec["accumulation"] * dist.world_size if flops else None,
            "resume": resume,
        }
        Path(spec["result_file"]).write_text(json.dumps(result), encoding="utf-8")
    if dist.is_distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _resume_check(spec, loop, built, build, make_loop, settings, dist, device, bf16) -> dict:
    """Save at step N, run 2 more steps; restore N into a fresh engine, run the same 2 steps;
    return the largest difference of the trainable weights (bitwise equality is not promised on
    GPU: some CUDA kernels are not deterministic)."""
    import torch

    from vesselctl.training.engine import build_engine

    n = loop.state.global_step
    saved = loop.save()
    loop.cfg.total_steps = n + 2
    loop.run(_batch_stream(spec, n), time.perf_counter())
    params = [p for p in built.engine.module.parameters() if p.requires_grad]
    gather = (
        built.engine.gathered(params)
        if hasattr(built.engine, "gathered")
        else contextlib.nullcontext()
    )
    with gather:
        reference = {
            name: p.detach().float().cpu().clone()
            for name, p in built.engine.module.named_parameters()
            if p.requires_grad
        }
    model, _, strategy = build()
    fresh = build_engine(
        model, settings, strategy, dist.world_size, device, bf16, spec["schedule_steps"]
    )
    again = make_loop(fresh.engine, n + 2)
    again.restore(saved)
    again.run(_batch_stream(spec, n), time.perf_counter())
    params = [p for p in fresh.engine.module.parameters() if p.requires_grad]
    gather = (
        fresh.engine.gathered(params)
        if hasattr(fresh.engine, "gathered")
        else contextlib.nullcontext()
    )
    with gather:
        worst = max(
            float((p.detach().float().cpu() - reference[name]).abs().max())
            for name, p in fresh.engine.module.named_parameters()
            if p.requires_grad
        )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"saved_step": n, "steps_after": 2, "max_abs_diff": worst}


_BATCHES: dict[int, list[Any]] = {}


def _batch_stream(spec: dict, start_step: int):
    """Batches by step number, so both runs of the resume check see the same data."""
    batches = _BATCHES[id(spec)]
    index = start_step * spec["accumulation"]
    while True:
        yield batches[index % len(batches)]
        index += 1


# ----------------------------------------------------------------------------------------------
# Matmul rate (the MFU denominator)
# ----------------------------------------------------------------------------------------------
def matmul_rate(device: str, size: int, repeats: int) -> float:
    """Achieved bf16 (CUDA) / fp32 (CPU) dense matmul TFLOP/s on this machine."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return 2 * size**3 * repeats / elapsed / 1e12


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def _launch(spec: dict[str, Any], gpus: int, timeout: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "result_file": str(Path(tmp) / "result.json"), "run_dir": tmp}
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec), encoding="utf-8")
        script = str(Path(__file__).resolve())
        if gpus > 1:
            port = 29000 + (os.getpid() % 500) * 2
            command = [
                sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}",
                f"--master-port={port}", script, "--worker", str(spec_file),
            ]  # fmt: skip
        else:
            command = [sys.executable, script, "--worker", str(spec_file)]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        if spec["device"] == "cpu":  # one thread set per process, as torchrun would
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // gpus))
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        result_file = Path(spec["result_file"])
        if done.returncode != 0 or not result_file.is_file():
            tail = (done.stderr or "")[-1500:]
            return {"error": f"exit code {done.returncode}", "stderr_tail": tail}
        result = json.loads(result_file.read_text(encoding="utf-8"))
        result["wall_s"] = time.perf_counter() - started
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--preset", default="sa2va-1b", help="model for the strategy comparison")
    parser.add_argument(
        "--big-preset", default="sa2va-4b", help="model for the memory runs ('' to skip)"
    )
    parser.add_argument("--gpus", default="1,2", help="process counts to compare, e.g. 1,2")
    parser.add_argument("--strategies", default="auto,zero3")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--no-resume-check", action="store_true")
    parser.add_argument("--out", type=Path, required=False)
    args = parser.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker.read_text(encoding="utf-8"))
        run_worker(spec)
        return 0

    if args.device == "cpu":
        args.matmul_size = min(args.matmul_size, 1024)
    rate = matmul_rate(args.device, args.matmul_size, 20 if args.device == "cuda" else 3)
    print(f"dense matmul rate ({'bf16' if args.device == 'cuda' else 'fp32'}): {rate:.3g} TFLOP/s")
    base = {
        "device": args.device,
        "lora_r": args.lora_r,
        "micro_batch": args.micro_batch,
        "image_size": args.image_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "grad_ckpt": False,
        "count_flops": True,
        "resume_check": False,
    }
    runs: list[tuple[dict[str, Any], int]] = []
    for gpus in [int(g) for g in args.gpus.split(",") if g]:
        accumulation = max(1, args.global_batch // (args.micro_batch * gpus))
        for strategy in [s for s in args.strategies.split(",") if s]:
            spec = {**base, "preset": args.preset, "strategy": strategy}
            spec["accumulation"] = accumulation
            spec["resume_check"] = not args.no_resume_check and gpus == 1 and strategy == "auto"
            runs.append((spec, gpus))
    if args.big_preset:
        big = {**base, "preset": args.big_preset, "grad_ckpt": True, "count_flops": False}
        big.update(micro_batch=1, accumulation=args.global_batch, steps=2, warmup=1)
        runs.append(({**big, "strategy": "auto"}, 1))
        runs.append(({**big, "strategy": "auto", "embeddings": "new_tokens"}, 1))
        runs.append(({**big, "strategy": "zero3", "accumulation": args.global_batch // 2}, 2))

    rows = []
    for spec, gpus in runs:
        label = f"{spec['preset']} gpus={gpus} strategy={spec['strategy']}"
        if spec["grad_ckpt"]:
            label += " +ckpt"
        if spec.get("embeddings", "full_copy") != "full_copy":
            label += f" emb={spec['embeddings']}"
        print(f"running {label} ...", flush=True)
        result = _launch(spec, gpus, args.timeout)
        result.update({"label": label, "requested_gpus": gpus})
        if result.get("flops_per_step") and result.get("step_time_s"):
            achieved = result["flops_per_step"] / result["step_time_s"] / 1e12
            result["achieved_tflops"] = achieved
            result["mfu"] = achieved / (rate * result["gpus"])
        rows.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}), flush=True)
        if "stderr_tail" in result:
            print(result["stderr_tail"], file=sys.stderr)

    _print_table(rows, rate)
    summary = {
        "matmul_tflops": rate,
        "matmul_dtype": "bf16" if args.device == "cuda" else "fp32",
        "rows": rows,
        "speedup_auto_vs_zero3": _speedups(rows),
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv,
    }
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _speedups(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for row in rows:
        if row.get("strategy_requested") != "auto" or "samples_per_s" not in row:
            continue
        for other in rows:
            if (
                other.get("strategy_requested") == "zero3"
                and other.get("preset") == row.get("preset")
                and other.get("gpus") == row.get("gpus")
                and other.get("global_batch") == row.get("global_batch")
                and "samples_per_s" in other
            ):
                key = f"{row['preset']} gpus={row['gpus']}"
                out[key] = row["samples_per_s"] / other["samples_per_s"]
    return out


def _print_table(rows: list[dict[str, Any]], rate: float) -> None:
    header = (
        f"{'configuration':56} {'strategy':>8} {'batch':>5} {'step s':>8} {'samples/s':>9} "
        f"{'peak GiB':>8} {'MFU':>6} {'resume diff':>11}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['label']:56} ERROR {row['error']}")
            continue
        peak = row.get("peak_memory_gib")
        mfu = row.get("mfu")
        resume = row.get("resume") or {}
        diff = f"{resume['max_abs_diff']:.2e}" if resume else "-"
        print(
            f"{row['label']:56} {row['strategy']:>8} {row['global_batch']:>5} "
            f"{row['step_time_s']:>8.3f} {row['samples_per_s']:>9.2f} "
            f"{(f'{peak:.2f}' if peak is not None else '-'):>8} "
            f"{(f'{100 * mfu:.1f}%' if mfu is not None else '-'):>6} "
            f"{diff:>11}"
        )
    print(f"(matmul rate {rate:.3g} TFLOP/s per device)")


if __name__ == "__main__":
    raise SystemExit(main())
