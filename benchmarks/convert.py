"""Time and peak memory of `vesselctl convert` on a Sa2VA-4B-size official checkpoint.

Generates, in this process, an official-style Sa2VA HF export with the real Sa2VA-4B architecture
(InternVL2.5-4B + SAM 2.0 Hiera-L, exact official key names and config.json layout; the SAM2
video-memory parameters left out) filled with random bf16 weights and sharded like the released
export (5 GB shards), plus an official training checkpoint ``iter_3672.pth`` (LoRA r=64 / alpha
128 on every LLM Linear, embeddings and lm_head as modules_to_save copies, projector, mask
decoder, text_hidden_fcs; bf16). Then converts (1) the export and (2) the iter file with
``--base`` the export, each with `vesselctl convert ... --no-verify` in its own child process,
reading that child's peak resident memory from its rusage (``os.wait4``). Target: peak RSS <=
1.5x the model's bf16 size. Verification is off: it builds the model twice (one after the
other) in fp32 and is not part of the streaming path measured here.

The tokenizer is vesselctl's tiny offline one (the released tokenizer is not available offline):
it holds the same special tokens, and the weights keep the real 4B vocabulary rows.

    python benchmarks/convert.py --workdir /work/tmp --out convert_bench.json   # 4B, ~18 GB disk
    python benchmarks/convert.py --preset tiny --out /tmp/c.json                 # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # for tests.model.official_fixtures
    sys.path.insert(0, str(REPO))

SHARD_BYTES = 5 * 10**9


def generate_export(preset: str, directory: Path, seed: int = 0) -> dict[str, Any]:
    """Write an official-style HF export of ``preset`` with random bf16 weights, shard by shard."""
    import torch
    from safetensors.torch import save_file

    from tests.model.official_fixtures import official_config  # the tests' official layout
    from vesselctl.model.checkpoints import expected_shapes
    from vesselctl.model.keymaps import native_to_official
    from vesselctl.model.presets import preset_config
    from vesselctl.model.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = preset_config(preset, tokenizer if preset.startswith("tiny") else None)
    # Ids the conversion reads from the tokenizer must agree with the config it rebuilds.
    config.seg_token_id = tokenizer.convert_tokens_to_ids("[SEG]")
    config.mllm_config.image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    shapes = expected_shapes(config)
    names = native_to_official(shapes, "sa2va_hf_internvl", shapes)
    # group the pieces of each official tensor (fused qkv = three native tensors)
    official: dict[str, tuple[int, ...]] = {}
    for name, native, op, _index in names:
        shape = shapes[native]
        if op == "split_qkv":
            shape = (3 * shape[0], *shape[1:])
        elif op == "row":
            shape = (1, shape[1])
        official[name] = shape
    directory.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = 0
    files: list[str] = []
    total = 0

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name in sorted(official):
        tensor = torch.empty(official[name], dtype=torch.float32).normal_(generator=gen)
        tensor = (tensor * 0.02).to(torch.bfloat16)
        nbytes = tensor.numel() * 2
        if shard and size + nbytes > SHARD_BYTES:
            flush()
        shard[name] = tensor
        size += nbytes
        total += nbytes
    flush()
    final = {}
    for i, name in enumerate(files):
        new = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        (directory / name).rename(directory / new)
        final[name] = new
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: final[v] for k, v in weight_map.items()},
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "config.json").write_text(json.dumps(official_config(config, "internvl")))
    tokenizer.save_pretrained(directory)
    native_bytes = sum(_numel(s) for s in shapes.values()) * 2
    return {
        "official_tensors": len(official),
        "source_bytes": total,
        "native_parameters": native_bytes // 2,
        "model_bf16_bytes": native_bytes,
    }


def generate_iter_checkpoint(preset: str, path: Path, r: int, alpha: float, seed: int = 1) -> int:
    """An official ``iter_N.pth`` (xtuner, save_optimizer=False) for ``preset``: LoRA A/B (bf16)
    on every LLM Linear, embeddings and lm_head as modules_to_save copies, the projector, SAM2's
    mask decoder and text_hidden_fcs, as the official fine-tune saves them. Returns its bytes."""
    from collections import OrderedDict

    import torch

    from vesselctl.model.checkpoints import expected_shapes
    from vesselctl.model.keymaps import native_to_official
    from vesselctl.model.presets import preset_config
    from vesselctl.model.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = preset_config(preset, tokenizer if preset.startswith("tiny") else None)
    shapes = expected_shapes(config)
    names = native_to_official(shapes, "sa2va_train_internvl", shapes)
    official = {native: name for name, native, op, _ in names if op == "copy"}
    gen = torch.Generator().manual_seed(seed)
    wrap = "mllm.model.language_model."

    def rand(*shape: int) -> torch.Tensor:
        return (torch.empty(shape).normal_(generator=gen) * 0.02).to(torch.bfloat16)

    state: dict[str, torch.Tensor] = OrderedDict()
    for native, shape in shapes.items():
        name = official.get(native)
        if native.startswith(wrap + "layers.") and native.endswith("_proj.weight"):
            stem = wrap + "base_model.model." + name[len(wrap) :].removesuffix(".weight")
            state[f"{stem}.lora_A.default.weight"] = rand(r, shape[1])
            state[f"{stem}.lora_B.default.weight"] = rand(shape[0], r)
        elif native in (wrap + "embed_tokens.weight", "mllm.lm_head.weight"):
            stem = wrap + "base_model.model." + name[len(wrap) :].removesuffix(".weight")
            state[f"{stem}.modules_to_save.default.weight"] = rand(*shape)
        elif native.startswith(
            ("mllm.model.multi_modal_projector.", "sam2.mask_decoder.", "text_hidden_fcs.")
        ):
            state[name] = rand(*shape)
    cfg = f"model = dict(llm_lora=dict(r={r}, lora_alpha={alpha}, type='peft.LoraConfig'))"
    torch.save(
        {"state_dict": state, "meta": {"cfg": cfg, "iter": 3672}, "param_schedulers": []}, path
    )
    return path.stat().st_size


def run_child(command: list[str], log: Path) -> tuple[int, float, int]:
    """Run ``command``; return (exit code, seconds, peak RSS in bytes of that child alone).

    ``os.wait4`` returns the rusage of exactly this child (``getrusage(RUSAGE_CHILDREN)`` would
    be the maximum over every child waited for so far)."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss * 1024  # KiB on Linux


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sa2va-4b", help="sa2va-4b (default) or tiny")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/work/tmp"),
        help="where the temporary checkpoints and outputs go (deleted after)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--no-delta",
        action="store_true",
        help="only convert the HF export, not also iter_N.pth + --base",
    )
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.workdir).free
    root = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    rows = []
    try:
        started = time.perf_counter()
        info = generate_export(args.preset, root / "sa2va-hf")
        generate_s = time.perf_counter() - started
        if free < 2.2 * info["source_bytes"]:
            print(f"warning: only {free / 1e9:.1f} GB free in {args.workdir}", file=sys.stderr)
        scenarios = {"official HF export": ([str(root / "sa2va-hf")], 0)}
        if not args.no_delta:
            iter_bytes = generate_iter_checkpoint(args.preset, root / "iter_3672.pth", 64, 128.0)
            scenarios["iter_N.pth (LoRA r=64) + --base export"] = (
                [str(root / "iter_3672.pth"), "--base", str(root / "sa2va-hf")],
                iter_bytes,
            )
        for i, (name, (source_args, extra_bytes)) in enumerate(scenarios.items()):
            out_dir = root / f"converted-{i}"
            command = [
                sys.executable,
                "-m",
                "vesselctl",
                "convert",
                *source_args,
                "--out",
                str(out_dir),
                "--no-verify",
                "--dtype",
                "bf16",
            ]
            code, seconds, peak = run_child(command, root / f"convert-{i}.log")
            if code != 0:
                print((root / f"convert-{i}.log").read_text(), file=sys.stderr)
                return code
            result = json.loads((out_dir / "result.json").read_text())
            model_bytes = info["model_bf16_bytes"]
            rows.append(
                {
                    "scenario": name,
                    "preset": args.preset,
                    "parameters": info["native_parameters"],
                    "model_bf16_gb": model_bytes / 1e9,
                    "source_gb_on_disk": (info["source_bytes"] + extra_bytes) / 1e9,
                    "output_gb": result["size_bytes"] / 1e9,
                    "output_shards": result["num_shards"],
                    "generate_export_s": round(generate_s, 1),
                    "convert_s": round(seconds, 1),
                    "peak_rss_gb": peak / 1e9,
                    "peak_rss_over_model": peak / model_bytes,
                    "target_ratio": 1.5,
                    "meets_target": peak <= 1.5 * model_bytes,
                    "command": " ".join(command[1:]),
                }
            )
            shutil.rmtree(out_dir, ignore_errors=True)  # one output on disk at a time
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("| scenario | params | model bf16 GB | convert s | peak RSS GB | RSS / model | target |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        verdict = "<= 1.5: met" if row["meets_target"] else "> 1.5: MISSED"
        print(
            f"| {row['scenario']} | {row['parameters'] / 1e9:.2f} B | "
            f"{row['model_bf16_gb']:.2f} | {row['convert_s']:.1f} | "
            f"{row['peak_rss_gb']:.2f} | {row['peak_rss_over_model']:.2f} | {verdict} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(row["meets_target"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
