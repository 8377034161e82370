"""Official Sa2VA / InternVL / Qwen2.5-VL / SAM2 parameter names -> vesselctl's native names.

The maps are data: each ``Rule`` pairs a full-key template in the official layout with one in
the native layout (transformers' ``InternVLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration`` and ``Sam2Model`` as composed in ``Sa2VAModel``: native
keys are ``mllm.*``, ``sam2.*``, ``text_hidden_fcs.*``). Templates use ``{i}``/``{j}`` for layer
numbers, ``{p}`` for a parameter name and ``{rest}`` for a pass-through tail. Because templates
are full-key patterns they work both ways: ``official -> native`` for loading, and
``native -> official`` so tests can write files with the exact official names.

Sources of the names (read, not copied): Sa2VA's remote-code InternVL (``modeling_intern_vit``:
``embeddings.class_embedding``, ``encoder.layers.N.attn.qkv``, ``ls1``...; ``mlp1.{0,1,3}``),
SAM2's modules (``image_encoder.trunk.blocks``, ``neck.convs.N.conv``, ``sam_prompt_encoder``,
``sam_mask_decoder``...), ``tools/convert_to_hf.py`` (prefix stripping, ``.gamma`` ->
``.g_weight``), xtuner's peft state dicts (``base_model.model.``, ``lora_A.default``,
``modules_to_save.default``), and transformers' own InternVL and SAM2 conversion scripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vesselctl.errors import CheckpointError

# ----------------------------------------------------------------------------------------------
# Rule engine
# ----------------------------------------------------------------------------------------------
_PLACEHOLDERS = {
    "i": r"\d+",
    "j": r"\d+",
    "p": r"[A-Za-z_][A-Za-z0-9_]*",
    "rest": r".+",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def _compile(template: str) -> re.Pattern[str]:
    """Turn ``a.{i}.b.{p}`` into an anchored regex with named groups."""
    out, pos = [], 0
    for match in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos : match.start()]))
        name = match.group(1)
        out.append(f"(?P<{name}>{_PLACEHOLDERS[name]})")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True)
class Rule:
    """One official <-> native name pair.

    op: ``copy`` (same tensor; several native targets get the same tensor), ``split_qkv``
    (official fused qkv split in three along dim 0; the native template holds ``{qkv}``),
    ``row`` (official tensor is row ``{i}`` of the native tensor, e.g. SAM2's four point
    embeddings stacked into one), ``drop`` (known official parameter the native model does not
    have, e.g. SAM2's video memory; ``reason`` says why).
    """

    official: str
    native: tuple[str, ...] = ()
    op: str = "copy"
    reason: str = ""
    _official_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _native_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_official_re", _compile(self.official))
        first = self.native[0].replace("{qkv}", "{p}") if self.native else None
        if first is not None and self.op == "split_qkv":
            # inverse matching for split rules: the {qkv} part must be one of q/k/v_proj
            first = self.native[0].replace("{qkv}", "__QKV__")
            pattern = _compile(first).pattern.replace("__QKV__", "(?P<qkv>[qkv]_proj)")
            object.__setattr__(self, "_native_re", re.compile(pattern))
        else:
            object.__setattr__(self, "_native_re", _compile(first) if first else None)


@dataclass(frozen=True)
class Target:
    """Where one official tensor goes: native ``keys`` and how (see ``Rule.op``)."""

    keys: tuple[str, ...]
    op: str = "copy"
    row: int | None = None
    reason: str = ""


def _fill(template: str, groups: dict[str, str]) -> str:
    return template.format(**groups)


def apply_rules(key: str, rules: Sequence[Rule]) -> Target | None:
    """Native target of an official key under ``rules`` (first full match wins); None: unmapped."""
    for rule in rules:
        match = rule._official_re.match(key)
        if match is None:
            continue
        groups = match.groupdict()
        if rule.op == "drop":
            return Target((), "drop", reason=rule.reason)
        if rule.op == "split_qkv":
            keys = tuple(rule.native[0].format(qkv=q, **groups) for q in _QKV)
            return Target(keys, "split_qkv")
        if rule.op == "row":
            return Target((_fill(rule.native[0], groups),), "row", row=int(groups["i"]))
        return Target(tuple(_fill(t, groups) for t in rule.native), "copy")
    return None


def invert_rules(key: str, rules: Sequence[Rule]) -> tuple[str, str, int | None] | None:
    """Official name of a native key: ``(official_key, op, index)``; None if no rule produces it.

    ``index`` is the q/k/v position (0..2) for ``split_qkv`` and the row for ``row`` rules.
    Secondary targets of multi-target copies (e.g. SAM2's shared image embedding, a copy of the
    prompt encoder's) map to None: the official file stores them once.
    """
    for rule in rules:
        if rule.op == "drop" or rule._native_re is None:
            continue
        match = rule._native_re.match(key)
        if match is None:
            continue
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        if rule.op == "split_qkv":
            index = _QKV.index(groups.pop("qkv"))
            return _fill(rule.official, groups), "split_qkv", index
        if rule.op == "row":
            return rule.official, "row", None  # rows are expanded by the caller (needs shape)
        return _fill(rule.official, groups), "copy", None
    return None


# ----------------------------------------------------------------------------------------------
# InternVL (remote-code layout, as in OpenGVLab/InternVL* and Sa2VA's HF export) -> native
# InternVLForConditionalGeneration. Keys relative to the InternVL chat model.
# ----------------------------------------------------------------------------------------------
INTERNVL_REMOTE_RULES: tuple[Rule, ...] = (
    Rule("vision_model.embeddings.class_embedding", ("model.vision_tower.embeddings.cls_token",)),
    Rule(
        "vision_model.embeddings.position_embedding",
        ("model.vision_tower.embeddings.position_embeddings",),
    ),
    Rule(
        "vision_model.embeddings.patch_embedding.{p}",
        ("model.vision_tower.embeddings.patch_embeddings.projection.{p}",),
    ),
    Rule(
        "vision_model.encoder.layers.{i}.attn.qkv.{p}",
        ("model.vision_tower.encoder.layer.{i}.attention.{qkv}.{p}",),
        op="split_qkv",
    ),
    Rule(
        "vision_model.encoder.layers.{i}.attn.proj.{p}",
        ("model.vision_tower.encoder.layer.{i}.attention.projection_layer.{p}",),
    ),
    Rule(
        "vision_model.encoder.layers.{i}.attn.q_norm.{p}",
        ("model.vision_tower.encoder.layer.{i}.attention.q_norm.{p}",),
    ),
    Rule(
        "vision_model.encoder.layers.{i}.attn.k_norm.{p}",
        ("model.vision_tower.encoder.layer.{i}.attention.k_norm.{p}",),
    ),
    Rule("vision_model.encoder.layers.{i}.ls1", ("model.vision_tower.encoder.layer.{i}.lambda_1",)),
    Rule("vision_model.encoder.layers.{i}.ls2", ("model.vision_tower.encoder.layer.{i}.lambda_2",)),
    Rule(
        "vision_model.encoder.layers.{i}.norm1.{p}",
        ("model.vision_tower.encoder.layer.{i}.layernorm_before.{p}",),
    ),
    Rule(
        "vision_model.encoder.layers.{i}.norm2.{p}",
        ("model.vision_tower.encoder.layer.{i}.layernorm_after.{p}",),
    ),
    Rule(
        "vision_model.encoder.layers.{i}.mlp.fc{j}.{p}",
        ("model.vision_tower.encoder.layer.{i}.mlp.fc{j}.{p}",),
    ),
    Rule("mlp1.0.{p}", ("model.multi_modal_projector.layer_norm.{p}",)),
    Rule("mlp1.1.{p}", ("model.multi_modal_projector.linear_1.{p}",)),
    Rule("mlp1.3.{p}", ("model.multi_modal_projector.linear_2.{p}",)),
    Rule("language_model.lm_head.{p}", ("lm_head.{p}",)),
    Rule("language_model.model.{rest}", ("model.language_model.{rest}",)),
)

# Native InternVLForConditionalGeneration as transformers saves it (and the Hub's ``-hf`` repos
# store it): the pre-5.x layout ``language_model.model.*`` / ``vision_tower.*`` /
# ``multi_modal_projector.*`` / ``language_model.lm_head``; in-memory names are accepted too.
INTERNVL_HF_RULES: tuple[Rule, ...] = (
    Rule("model.{rest}", ("model.{rest}",)),
    Rule("lm_head.{p}", ("lm_head.{p}",)),
    Rule("language_model.model.{rest}", ("model.language_model.{rest}",)),
    Rule("language_model.lm_head.{p}", ("lm_head.{p}",)),
    Rule("vision_tower.{rest}", ("model.vision_tower.{rest}",)),
    Rule("multi_modal_projector.{rest}", ("model.multi_modal_projector.{rest}",)),
)

# InternLM2-based Sa2VA (8B/26B) has no native transformers class; these keys identify it.
INTERNLM2_MARKERS = (
    "language_model.model.tok_embeddings.",
    ".attention.wqkv.",
    ".feed_forward.w1.",
)

# ----------------------------------------------------------------------------------------------
# Qwen2.5-VL: the official checkpoints already use transformers' class; only the layout of
# transformers < 4.52 (``visual.*``, ``model.layers.*``) differs from the current one.
# ----------------------------------------------------------------------------------------------
QWEN2_5_VL_RULES: tuple[Rule, ...] = (
    Rule("model.visual.{rest}", ("model.visual.{rest}",)),
    Rule("model.language_model.{rest}", ("model.language_model.{rest}",)),
    Rule("lm_head.{p}", ("lm_head.{p}",)),
    # transformers < 4.52 layout (one-way: the native names above are produced first)
    Rule("visual.{rest}", ("model.visual.{rest}",)),
    Rule("model.{rest}", ("model.language_model.{rest}",)),
)

# ----------------------------------------------------------------------------------------------
# SAM2 (facebookresearch/sam2 module names, as inside Sa2VA's ``grounding_encoder.sam2_model``)
# -> native Sam2Model. Keys relative to the SAM2 model.
# ----------------------------------------------------------------------------------------------
_VIDEO_ONLY = "SAM2 video-memory part; Sa2VA segments single images without it"
SAM2_RULES: tuple[Rule, ...] = (
    # Hiera trunk
    Rule("image_encoder.trunk.pos_embed", ("vision_encoder.backbone.pos_embed",)),
    Rule("image_encoder.trunk.pos_embed_window", ("vision_encoder.backbone.pos_embed_window",)),
    Rule(
        "image_encoder.trunk.patch_embed.proj.{p}",
        ("vision_encoder.backbone.patch_embed.projection.{p}",),
    ),
    Rule(
        "image_encoder.trunk.blocks.{i}.norm{j}.{p}",
        ("vision_encoder.backbone.blocks.{i}.layer_norm{j}.{p}",),
    ),
    Rule(
        "image_encoder.trunk.blocks.{i}.attn.qkv.{p}",
        ("vision_encoder.backbone.blocks.{i}.attn.qkv.{p}",),
    ),
    Rule(
        "image_encoder.trunk.blocks.{i}.attn.proj.{p}",
        ("vision_encoder.backbone.blocks.{i}.attn.proj.{p}",),
    ),
    Rule(
        "image_encoder.trunk.blocks.{i}.mlp.layers.0.{p}",
        ("vision_encoder.backbone.blocks.{i}.mlp.proj_in.{p}",),
    ),
    Rule(
        "image_encoder.trunk.blocks.{i}.mlp.layers.1.{p}",
        ("vision_encoder.backbone.blocks.{i}.mlp.proj_out.{p}",),
    ),
    Rule(
        "image_encoder.trunk.blocks.{i}.proj.{p}", ("vision_encoder.backbone.blocks.{i}.proj.{p}",)
    ),
    # FPN neck
    Rule("image_encoder.neck.convs.{i}.conv.{p}", ("vision_encoder.neck.convs.{i}.{p}",)),
    # prompt encoder
    Rule(
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        (
            "prompt_encoder.shared_embedding.positional_embedding",
            "shared_image_embedding.positional_embedding",
        ),
    ),
    Rule(
        "sam_prompt_encoder.point_embeddings.{i}.weight",
        ("prompt_encoder.point_embed.weight",),
        "row",
    ),
    Rule("sam_prompt_encoder.not_a_point_embed.{p}", ("prompt_encoder.not_a_point_embed.{p}",)),
    Rule("sam_prompt_encoder.no_mask_embed.{p}", ("prompt_encoder.no_mask_embed.{p}",)),
    Rule("sam_prompt_encoder.mask_downscaling.0.{p}", ("prompt_encoder.mask_embed.conv1.{p}",)),
    Rule(
        "sam_prompt_encoder.mask_downscaling.1.{p}", ("prompt_encoder.mask_embed.layer_norm1.{p}",)
    ),
    Rule("sam_prompt_encoder.mask_downscaling.3.{p}", ("prompt_encoder.mask_embed.conv2.{p}",)),
    Rule(
        "sam_prompt_encoder.mask_downscaling.4.{p}", ("prompt_encoder.mask_embed.layer_norm2.{p}",)
    ),
    Rule("sam_prompt_encoder.mask_downscaling.6.{p}", ("prompt_encoder.mask_embed.conv3.{p}",)),
    # mask decoder: two-way transformer
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.self_attn.out_proj.{p}",
        ("mask_decoder.transformer.layers.{i}.self_attn.o_proj.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.out_proj.{p}",
        ("mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.o_proj.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.out_proj.{p}",
        ("mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.o_proj.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.self_attn.{p}_proj.{rest}",
        ("mask_decoder.transformer.layers.{i}.self_attn.{p}_proj.{rest}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{p}_proj.{rest}",
        ("mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{p}_proj.{rest}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{p}_proj.{rest}",
        ("mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{p}_proj.{rest}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.norm{j}.{p}",
        ("mask_decoder.transformer.layers.{i}.layer_norm{j}.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.mlp.layers.0.{p}",
        ("mask_decoder.transformer.layers.{i}.mlp.proj_in.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.layers.{i}.mlp.layers.1.{p}",
        ("mask_decoder.transformer.layers.{i}.mlp.proj_out.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.final_attn_token_to_image.out_proj.{p}",
        ("mask_decoder.transformer.final_attn_token_to_image.o_proj.{p}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.final_attn_token_to_image.{p}_proj.{rest}",
        ("mask_decoder.transformer.final_attn_token_to_image.{p}_proj.{rest}",),
    ),
    Rule(
        "sam_mask_decoder.transformer.norm_final_attn.{p}",
        ("mask_decoder.transformer.layer_norm_final_attn.{p}",),
    ),
    # mask decoder: tokens, upscaling, heads
    Rule("sam_mask_decoder.iou_token.{p}", ("mask_decoder.iou_token.{p}",)),
    Rule("sam_mask_decoder.mask_tokens.{p}", ("mask_decoder.mask_tokens.{p}",)),
    Rule("sam_mask_decoder.obj_score_token.{p}", ("mask_decoder.obj_score_token.{p}",)),
    Rule("sam_mask_decoder.output_upscaling.0.{p}", ("mask_decoder.upscale_conv1.{p}",)),
    Rule("sam_mask_decoder.output_upscaling.1.{p}", ("mask_decoder.upscale_layer_norm.{p}",)),
    Rule("sam_mask_decoder.output_upscaling.3.{p}", ("mask_decoder.upscale_conv2.{p}",)),
    Rule("sam_mask_decoder.conv_s{i}.{p}", ("mask_decoder.conv_s{i}.{p}",)),
    *(
        rule
        for head in ("output_hypernetworks_mlps.{i}", "iou_prediction_head", "pred_obj_score_head")
        for rule in (
            Rule(
                f"sam_mask_decoder.{head}.layers.0.{{p}}", (f"mask_decoder.{head}.proj_in.{{p}}",)
            ),
            Rule(
                f"sam_mask_decoder.{head}.layers.1.{{p}}", (f"mask_decoder.{head}.layers.0.{{p}}",)
            ),
            Rule(
                f"sam_mask_decoder.{head}.layers.2.{{p}}", (f"mask_decoder.{head}.proj_out.{{p}}",)
            ),
        )
    ),
    Rule("no_mem_embed", ("no_memory_embedding",)),
    # video-only parts of SAM2Base (memory attention/encoder, object pointers, ...)
    Rule("memory_attention.{rest}", op="drop", reason=_VIDEO_ONLY),
    Rule("memory_encoder.{rest}", op="drop", reason=_VIDEO_ONLY),
    Rule("maskmem_tpos_enc", op="drop", reason=_VIDEO_ONLY),
    Rule("no_mem_pos_enc", op="drop", reason=_VIDEO_ONLY),
    Rule("no_obj_ptr", op="drop", reason=_VIDEO_ONLY),
    Rule("no_obj_embed_spatial", op="drop", reason=_VIDEO_ONLY),
    Rule("obj_ptr_proj.{rest}", op="drop", reason=_VIDEO_ONLY),
    Rule("obj_ptr_tpos_proj.{rest}", op="drop", reason=_VIDEO_ONLY),
    Rule("mask_downsample.{rest}", op="drop", reason=_VIDEO_ONLY),
)

IDENTITY_RULES: tuple[Rule, ...] = (Rule("{rest}", ("{rest}",)),)


# ----------------------------------------------------------------------------------------------
# Layouts: which official prefix goes through which rule table to which native prefix
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """Keys starting with ``official_prefix`` are mapped by ``rules`` under ``native_prefix``."""

    official_prefix: str
    rules: tuple[Rule, ...]
    native_prefix: str


_SAM2_IN_SA2VA = Section("grounding_encoder.sam2_model.", SAM2_RULES, "sam2.")
_FCS = Section("text_hidden_fcs.", IDENTITY_RULES, "text_hidden_fcs.")

LAYOUTS: dict[str, tuple[Section, ...]] = {
    # Sa2VA HF export (convert_to_hf.py strips 'mllm.model.' for InternVL, 'mllm.' for Qwen)
    "sa2va_hf_internvl": (_SAM2_IN_SA2VA, _FCS, Section("", INTERNVL_REMOTE_RULES, "mllm.")),
    "sa2va_hf_qwen": (_SAM2_IN_SA2VA, _FCS, Section("model.", QWEN2_5_VL_RULES, "mllm.")),
    # Sa2VA training checkpoints (iter_N.pth), after peft wrappers are stripped
    "sa2va_train_internvl": (
        _SAM2_IN_SA2VA,
        _FCS,
        Section("mllm.model.", INTERNVL_REMOTE_RULES, "mllm."),
    ),
    "sa2va_train_qwen": (_SAM2_IN_SA2VA, _FCS, Section("mllm.model.", QWEN2_5_VL_RULES, "mllm.")),
    # base checkpoints
    "internvl_remote": (Section("", INTERNVL_REMOTE_RULES, "mllm."),),
    "internvl_native": (Section("", INTERNVL_HF_RULES, "mllm."),),
    "qwen2_5_vl": (Section("", QWEN2_5_VL_RULES, "mllm."),),
    "sam2_original": (Section("", SAM2_RULES, "sam2."),),
    "sam2_native": (Section("", IDENTITY_RULES, "sam2."),),
    # vesselctl's own names (training exports, after peft wrappers are stripped)
    "vesselctl": (Section("", IDENTITY_RULES, ""),),
    # vesselctl model folders: save_pretrained stores the MLLM in transformers' on-disk layout
    # (InternVL: language_model.model.* / vision_tower.*); in-memory names are accepted too
    "vesselctl_model_internvl": (
        Section("mllm.", INTERNVL_HF_RULES, "mllm."),
        Section("sam2.", IDENTITY_RULES, "sam2."),
        _FCS,
    ),
    "vesselctl_model_qwen": (
        Section("mllm.", QWEN2_5_VL_RULES, "mllm."),
        Section("sam2.", IDENTITY_RULES, "sam2."),
        _FCS,
    ),
}


def map_key(key: str, layout: str) -> Target | None:
    """Native target of one official key in ``layout``; None when no rule knows it."""
    for section in LAYOUTS[layout]:
        if not key.startswith(section.official_prefix):
            continue
        # The HF export renamed SAM2's '.gamma' to '.g_weight' (only memory-encoder params).
        inner = key[len(section.official_prefix) :].replace(".g_weight", ".gamma")
        target = apply_rules(inner, section.rules)
        if target is None:
            return None
        keys = tuple(section.native_prefix + k for k in target.keys)
        return Target(keys, target.op, target.row, target.reason)
    return None


def native_to_official(
    native_keys: Iterable[str], layout: str, shapes: dict[str, tuple[int, ...]] | None = None
) -> list[tuple[str, str, str, int | None]]:
    """For writing official-format files in tests and benchmarks: ``(official_key, native_key,
    op, index)`` for each native key. A ``split_qkv`` official key appears three times (index =
    q/k/v position); ``row`` targets are expanded to one official key per row (needs
    ``shapes``). Native keys no rule produces are left out (derived copies).
    """
    out: list[tuple[str, str, str, int | None]] = []
    for native in native_keys:
        for section in LAYOUTS[layout]:
            if not native.startswith(section.native_prefix):
                continue
            inverse = invert_rules(native[len(section.native_prefix) :], section.rules)
            if inverse is None:
                continue
            official, op, index = inverse
            if op == "row":
                if shapes is None:
                    raise ValueError(f"{native}: row-stacked parameter needs shapes")
                for row in range(shapes[native][0]):
                    name = section.official_prefix + official.replace("{i}", str(row))
                    out.append((name, native, "row", row))
            else:
                out.append((section.official_prefix + official, native, op, index))
            break
    return out


# ----------------------------------------------------------------------------------------------
# peft wrappers (xtuner and vesselctl training checkpoints)
# ----------------------------------------------------------------------------------------------
_PEFT_SUFFIXES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(?P<base>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$"), "lora"),
    (
        re.compile(r"^(?P<base>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<p>.+)$"),
        "modules_to_save",
    ),
    (re.compile(r"^(?P<base>.+)\.original_module\.(?P<p>.+)$"), "original_module"),
    (re.compile(r"^(?P<base>.+)\.token_adapter\.base_layer\.(?P<p>.+)$"), "base_layer"),
    (re.compile(r"^(?P<base>.+)\.base_layer\.(?P<p>.+)$"), "base_layer"),
    (
        re.compile(
            r"^(?P<base>.+)\.token_adapter\.trainable_tokens_(?P<tt>delta|original)"
            r"(?:\.(?P<adapter>[^.]+))?$"
        ),
        "trainable_tokens",
    ),
)
_UNSUPPORTED_PEFT = ("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B", "lora_E")


@dataclass(frozen=True)
class PeftKey:
    """A checkpoint key with peft wrappers removed.

    ``base`` is the key of the weight it belongs to (e.g. ``...q_proj.weight`` for a LoRA
    factor); ``role`` is ``plain``, ``lora_A``, ``lora_B``, ``modules_to_save``,
    ``original_module``, ``base_layer``, ``trainable_tokens_delta`` or
    ``trainable_tokens_original``.
    """

    base: str
    role: str
    adapter: str | None = None


def strip_peft(key: str) -> PeftKey:
    """Remove peft's ``base_model.model.`` wrappers and classify LoRA/modules_to_save suffixes."""
    for marker in _UNSUPPORTED_PEFT:
        if f".{marker}" in key:
            raise CheckpointError(
                f"parameter '{key}' is a {marker} tensor (DoRA / LoRA on embeddings / AdaLoRA), "
                "which vesselctl cannot merge; only plain LoRA on Linear layers is supported"
            )
    plain = key.replace("base_model.model.", "")
    for pattern, kind in _PEFT_SUFFIXES:
        match = pattern.match(plain)
        if match is None:
            continue
        groups = match.groupdict()
        if kind == "lora":
            return PeftKey(groups["base"] + ".weight", f"lora_{groups['ab']}", groups["adapter"])
        if kind == "trainable_tokens":
            return PeftKey(
                groups["base"] + ".weight", f"trainable_tokens_{groups['tt']}", groups["adapter"]
            )
        base = f"{groups['base']}.{groups['p']}"
        return PeftKey(base, kind, groups.get("adapter"))
    return PeftKey(plain, "plain")


def format_key_list(keys: Sequence[str], limit: int = 10) -> str:
    """``a, b, c (+N more)``: capped so errors stay readable with thousands of keys."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
