"""Time and peak memory of `vesselctl convert` on a Sa2VA-4B-size official HF export.

Generates, in this process, an official-style Sa2VA HF export with the real Sa2VA-4B architecture
(InternVL2.5-4B + SAM 2.0 Hiera-L, exact official key names and config.json layout, the SAM2
video-memory parameters left out) filled with random bf16 weights, sharded like the released
export (5 GB shards). Then runs `vesselctl convert SOURCE --out DIR --no-verify` in a child
process and reads the child's peak resident memory from ``getrusage(RUSAGE_CHILDREN)``. The target
is peak RSS <= 1.5x the model's bf16 size. Verification is off: it builds the model twice (one
after the other) and is not part of the streaming path measured here.

The tokenizer is vesselctl's tiny offline one (the released tokenizer is not available offline):
it holds the same special tokens, and the weights keep the real 4B vocabulary rows.

    python benchmarks/convert.py --workdir /work/tmp --out convert_bench.json   # 4B, ~17 GB disk
    python benchmarks/convert.py --preset tiny --out /tmp/c.json                 # quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARD_BYTES = 5 * 10**9


def _official_config(config: Any) -> dict[str, Any]:
    """config.json as Sa2VA's convert_to_hf.py writes it for the InternVL family."""
    mllm = config.mllm_config
    vision, text = mllm.vision_config, mllm.text_config
    llm = text.to_dict()
    llm.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    return {
        "architectures": ["Sa2VAChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
            "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
        },
        "model_type": "sa2va_chat",
        "template": config.template,
        "downsample_ratio": mllm.downsample_ratio,
        "force_image_size": vision.image_size[0],
        "select_layer": -1,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "image_size": vision.image_size[0],
            "patch_size": vision.patch_size[0],
            "qkv_bias": vision.attention_bias,
            "qk_normalization": vision.use_qk_norm,
            "norm_type": vision.norm_type,
            "layer_norm_eps": vision.layer_norm_eps,
            "hidden_act": vision.hidden_act,
        },
        "llm_config": llm,
    }


def generate_export(preset: str, directory: Path, seed: int = 0) -> dict[str, Any]:
    """Write an official-style HF export of ``preset`` with random bf16 weights, shard by shard."""
    import torch
    from safetensors.torch import save_file

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
    (directory / "config.json").write_text(json.dumps(_official_config(config)))
    tokenizer.save_pretrained(directory)
    native_bytes = sum(_numel(s) for s in shapes.values()) * 2
    return {
        "official_tensors": len(official),
        "source_bytes": total,
        "native_parameters": native_bytes // 2,
        "model_bf16_bytes": native_bytes,
    }


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
        help="where the temporary checkpoint and output go (deleted after)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.workdir).free
    root = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    try:
        started = time.perf_counter()
        info = generate_export(args.preset, root / "sa2va-hf")
        generate_s = time.perf_counter() - started
        if free < 2.2 * info["source_bytes"]:
            print(f"warning: only {free / 1e9:.1f} GB free in {args.workdir}", file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "vesselctl",
            "convert",
            str(root / "sa2va-hf"),
            "--out",
            str(root / "converted"),
            "--no-verify",
            "--dtype",
            "bf16",
        ]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        convert_s = time.perf_counter() - started
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return proc.returncode
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        result = json.loads((root / "converted" / "result.json").read_text())
        limit = 1.5 * info["model_bf16_bytes"]
        row = {
            "preset": args.preset,
            "parameters": info["native_parameters"],
            "model_bf16_gb": info["model_bf16_bytes"] / 1e9,
            "source_gb_on_disk": info["source_bytes"] / 1e9,
            "output_gb": result["size_bytes"] / 1e9,
            "output_shards": result["num_shards"],
            "generate_s": round(generate_s, 1),
            "convert_s": round(convert_s, 1),
            "peak_rss_gb": peak / 1e9,
            "peak_rss_over_model": peak / info["model_bf16_bytes"],
            "target_ratio": 1.5,
            "meets_target": peak <= limit,
            "command": " ".join(command[1:]),
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("| preset | params | model bf16 GB | convert s | peak RSS GB | RSS / model | target |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {row['preset']} | {row['parameters'] / 1e9:.2f} B | {row['model_bf16_gb']:.2f} | "
        f"{row['convert_s']:.1f} | {row['peak_rss_gb']:.2f} | {row['peak_rss_over_model']:.2f} "
        f"| {'<= 1.5: met' if row['meets_target'] else '> 1.5: MISSED'} |"
    )
    if args.out:
        args.out.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
