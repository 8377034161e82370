"""Synthetic official Sa2VA checkpoints built from tiny random-weight models.

Files use the exact official names (keymaps' inverse maps, pinned by literal names in
test_keymaps.py) and the official containers: HF export folders (official config.json, sharded
safetensors, tokenizer), ``iter_N.pth`` files (``state_dict``/``meta``/``param_schedulers``) and
DeepSpeed ZeRO-3 folders. ``make_training_delta`` also returns the reference weights merged by
explicit math, which conversions must reproduce.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from vesselctl.model.keymaps import native_to_official

# SAM2 video-memory parameters an official export carries and vesselctl drops (with their names).
VIDEO_ONLY_KEYS = {
    "grounding_encoder.sam2_model.maskmem_tpos_enc": (7, 1, 1, 8),
    "grounding_encoder.sam2_model.no_mem_pos_enc": (1, 1, 32),
    "grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight": (32,),
    "grounding_encoder.sam2_model.memory_attention.layers.0.self_attn.q_proj.weight": (32, 32),
    "grounding_encoder.sam2_model.obj_ptr_proj.layers.0.weight": (32, 32),
}

MMENGINE_CFG = """model = dict(
    llm_lora=dict(
        bias='none',
        lora_alpha={alpha},
        lora_dropout=0.05,
        r={r},
        task_type='CAUSAL_LM',
        type='peft.LoraConfig'),
    type='projects.sa2va.models.Sa2VAModel')
"""


def tiny_model(family: str = "internvl", seed: int = 0):
    """A tiny random-weight Sa2VA model + processor (fp32, eval mode)."""
    from vesselctl.model.presets import build_preset

    torch.manual_seed(seed)
    model, processor = build_preset("tiny" if family == "internvl" else "tiny-qwen2.5-vl")
    with torch.no_grad():  # SAM2's decoder starts near zero: give every weight some signal
        for name, param in model.named_parameters():
            if name.startswith(("sam2.", "text_hidden_fcs.")) and param.ndim >= 1:
                param.add_(torch.randn_like(param) * 0.05)
        sam2 = model.sam2  # as in a real SAM2 conversion: one Gaussian matrix, two users
        sam2.shared_image_embedding.positional_embedding.copy_(
            sam2.prompt_encoder.shared_embedding.positional_embedding
        )
    return model.eval(), processor


def hf_layout(family: str) -> str:
    return "sa2va_hf_internvl" if family == "internvl" else "sa2va_hf_qwen"


def train_layout(family: str) -> str:
    return "sa2va_train_internvl" if family == "internvl" else "sa2va_train_qwen"


def to_official(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Native state dict -> the same weights under official names (qkv fused, rows split)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    names = native_to_official(state, layout, shapes)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor | None]] = {}
    for official, native, op, index in names:
        tensor = state[native].detach().clone()
        if op == "split_qkv":
            fused.setdefault(official, [None, None, None])[index] = tensor
        elif op == "row":
            out[official] = tensor[index : index + 1].clone()
        else:
            out[official] = tensor
    for official, parts in fused.items():
        out[official] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
    return out


def official_config(config, family: str) -> dict:
    """config.json as the official convert_to_hf.py writes it (remote-code layout) for a
    ``Sa2VAConfig`` (also used by benchmarks/convert.py for its 4B-size export)."""
    mllm = config.mllm_config
    if family == "internvl":
        vision, text = mllm.vision_config, mllm.text_config
        llm = text.to_dict()
        llm.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
        return {
            "architectures": ["Sa2VAChatModel"],
            "auto_map": {
                "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
                "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
                "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
            },
            "model_type": "sa2va_chat",
            "template": config.template,
            "downsample_ratio": mllm.downsample_ratio,
            "force_image_size": vision.image_size[0],
            "select_layer": -1,
            "ps_version": "v2",
            "dynamic_image_size": True,
            "use_thumbnail": True,
            "max_dynamic_patch": 12,
            "min_dynamic_patch": 1,
            "vision_config": {
                "architectures": ["InternVisionModel"],
                "model_type": "intern_vit_6b",
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
                "drop_path_rate": 0.0,
                "use_flash_attn": True,
            },
            "llm_config": llm,
        }
    data = mllm.to_dict()
    data.update(
        architectures=["Sa2VAChatModelQwen"],
        auto_map={
            "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
            "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
        },
        template="{% for message in messages %}...{% endfor %}",
    )
    return data


def write_official_hf_export(
    model, processor, directory: Path, family: str = "internvl", shards: int = 2
) -> dict[str, torch.Tensor]:
    """Write an official-style HF export of ``model``; returns its official state dict."""
    directory.mkdir(parents=True, exist_ok=True)
    state = to_official(model.state_dict(), hf_layout(family))
    for key, shape in VIDEO_ONLY_KEYS.items():
        state[key] = torch.randn(shape)
    keys = sorted(state)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "config.json").write_text(json.dumps(official_config(model.config, family)))
    processor.tokenizer.save_pretrained(directory)
    return state


def _peft_name(official: str, family: str, role: str) -> str:
    wrap = "mllm.model.language_model." if family == "internvl" else "mllm.model."
    assert official.startswith(wrap), official
    inner = official[len(wrap) :]
    stem = inner.removesuffix(".weight")
    if role == "plain":
        return f"{wrap}base_model.model.{inner}"
    if role == "modules_to_save":
        return f"{wrap}base_model.model.{stem}.modules_to_save.default.weight"
    return f"{wrap}base_model.model.{stem}.{role}.default.weight"


def make_training_delta(
    model,
    family: str = "internvl",
    r: int = 4,
    alpha: float = 8.0,
    seed: int = 1,
    old_layout: bool = False,
    rslora: bool = False,
):
    """What an official fine-tune saves, and the weights it should merge to.

    Returns ``(official_trainable_state, reference_native_state)``: LoRA A/B on every LLM Linear
    (except lm_head), embeddings and lm_head as ``modules_to_save`` copies (older tree: plain
    full tensors), the InternVL projector, SAM2's mask decoder and ``text_hidden_fcs``. The
    reference applies ``W + alpha/r * B @ A`` (rsLoRA: alpha/sqrt(r)) explicitly.
    """
    gen = torch.Generator().manual_seed(seed)
    native = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reference = {k: v.clone() for k, v in native.items()}
    layout = train_layout(family)
    official_names = native_to_official(
        native, layout, {k: tuple(v.shape) for k, v in native.items()}
    )
    official_of = {n: o for o, n, op, _ in official_names if op == "copy"}
    scale = alpha / (math.sqrt(r) if rslora else r)
    trained: dict[str, torch.Tensor] = OrderedDict()
    lm_prefix = "mllm.model.language_model."
    for key, weight in native.items():
        official = official_of.get(key)
        if key.startswith(lm_prefix + "layers.") and key.endswith("_proj.weight"):
            out_f, in_f = weight.shape
            a = torch.randn(r, in_f, generator=gen) * 0.1
            b = torch.randn(out_f, r, generator=gen) * 0.1
            trained[_peft_name(official, family, "lora_A")] = a
            trained[_peft_name(official, family, "lora_B")] = b
            reference[key] = weight + scale * (b @ a)
        elif key in (lm_prefix + "embed_tokens.weight", "mllm.lm_head.weight"):
            new = weight + torch.randn(weight.shape, generator=gen) * 0.02
            role = "plain" if old_layout else "modules_to_save"
            trained[_peft_name(official, family, role)] = new
            reference[key] = new
        elif key.startswith(
            ("mllm.model.multi_modal_projector.", "sam2.mask_decoder.", "text_hidden_fcs.")
        ):
            new = weight + torch.randn(weight.shape, generator=gen) * 0.02
            trained[official] = new
            reference[key] = new
    return trained, reference


def write_iter_checkpoint(
    path: Path, trained: dict[str, torch.Tensor], r: int, alpha: float, step: int = 3672
) -> None:
    """An mmengine/xtuner ``iter_N.pth`` (save_optimizer=False)."""
    torch.save(
        {
            "meta": {
                "cfg": MMENGINE_CFG.format(r=r, alpha=alpha),
                "seed": 42,
                "epoch": 3,
                "iter": step,
                "mmengine_version": "0.10.7",
                "time": "20250101_000000",
            },
            "state_dict": OrderedDict(trained),
            "param_schedulers": [{"last_step": step, "base_values": [2e-5], "_last_lr": [0.0]}],
        },
        path,
    )


def write_deepspeed_zero3(
    directory: Path,
    trained: dict[str, torch.Tensor],
    world_size: int,
    r: int,
    alpha: float,
    step: int = 3672,
) -> None:
    """A DeepSpeed ZeRO-3 checkpoint folder: placeholders + per-rank fp32 flat partitions."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(trained)
    shapes = OrderedDict((n, trained[n].shape) for n in names)
    flats: list[list[torch.Tensor]] = [[] for _ in range(world_size)]
    for name in names:
        flat = trained[name].reshape(-1).float()
        part = -(-flat.numel() // world_size)
        padded = torch.cat([flat, flat.new_zeros(part * world_size - flat.numel())])
        for rank in range(world_size):
            flats[rank].append(padded[rank * part : (rank + 1) * part])
    torch.save(
        {
            "module": OrderedDict((n, torch.empty(0)) for n in names),
            "buffer_names": [],
            "param_shapes": [shapes],
            "frozen_param_shapes": None,
            "shared_params": {},
            "global_steps": step,
            "dp_world_size": world_size,
            "ds_version": "0.16.4",
            "meta": {"cfg": MMENGINE_CFG.format(r=r, alpha=alpha), "iter": step},
        },
        directory / "zero_pp_rank_0_mp_rank_00_model_states.pt",
    )
    for rank in range(world_size):
        torch.save(
            {
                "optimizer_state_dict": {
                    "zero_stage": 3,
                    "partition_count": world_size,
                    "fp32_flat_groups": [torch.cat(flats[rank])],
                },
                "ds_version": "0.16.4",
            },
            directory / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        )


def write_deepspeed_zero2(
    directory: Path,
    trained: dict[str, torch.Tensor],
    step: int = 3672,
    r: int = 4,
    alpha: float = 8.0,
) -> None:
    """A DeepSpeed ZeRO-1/2 checkpoint folder: full (bf16) weights in the model-state file."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "module": OrderedDict((n, t.to(torch.bfloat16)) for n, t in trained.items()),
            "buffer_names": [],
            "param_shapes": [OrderedDict((n, t.shape) for n, t in trained.items())],
            "global_steps": step,
            "ds_version": "0.16.4",
            "meta": {"cfg": MMENGINE_CFG.format(r=r, alpha=alpha), "iter": step},
        },
        directory / "mp_rank_00_model_states.pt",
    )
