"""Key maps: official names (written out literally from the official modules) <-> native names."""

from __future__ import annotations

import pytest

from tests.model.official_fixtures import tiny_model
from vesselctl.errors import CheckpointError
from vesselctl.model.keymaps import map_key, native_to_official, strip_peft

# Literal names as Sa2VA's remote-code InternViT/InternVL, SAM2 and convert_to_hf.py produce them
# (layer 0 of each stack), paired with the native parameter they must land on.
OFFICIAL_HF_INTERNVL = {
    "vision_model.embeddings.class_embedding": "mllm.model.vision_tower.embeddings.cls_token",
    "vision_model.embeddings.position_embedding": (
        "mllm.model.vision_tower.embeddings.position_embeddings"
    ),
    "vision_model.embeddings.patch_embedding.weight": (
        "mllm.model.vision_tower.embeddings.patch_embeddings.projection.weight"
    ),
    "vision_model.encoder.layers.0.ls1": "mllm.model.vision_tower.encoder.layer.0.lambda_1",
    "vision_model.encoder.layers.0.norm2.bias": (
        "mllm.model.vision_tower.encoder.layer.0.layernorm_after.bias"
    ),
    "vision_model.encoder.layers.0.attn.proj.weight": (
        "mllm.model.vision_tower.encoder.layer.0.attention.projection_layer.weight"
    ),
    "vision_model.encoder.layers.0.mlp.fc2.weight": (
        "mllm.model.vision_tower.encoder.layer.0.mlp.fc2.weight"
    ),
    "mlp1.0.weight": "mllm.model.multi_modal_projector.layer_norm.weight",
    "mlp1.1.bias": "mllm.model.multi_modal_projector.linear_1.bias",
    "mlp1.3.weight": "mllm.model.multi_modal_projector.linear_2.weight",
    "language_model.model.embed_tokens.weight": "mllm.model.language_model.embed_tokens.weight",
    "language_model.model.layers.0.self_attn.q_proj.weight": (
        "mllm.model.language_model.layers.0.self_attn.q_proj.weight"
    ),
    "language_model.model.norm.weight": "mllm.model.language_model.norm.weight",
    "language_model.lm_head.weight": "mllm.lm_head.weight",
    "grounding_encoder.sam2_model.image_encoder.trunk.pos_embed": (
        "sam2.vision_encoder.backbone.pos_embed"
    ),
    "grounding_encoder.sam2_model.image_encoder.trunk.patch_embed.proj.weight": (
        "sam2.vision_encoder.backbone.patch_embed.projection.weight"
    ),
    "grounding_encoder.sam2_model.image_encoder.trunk.blocks.0.norm1.weight": (
        "sam2.vision_encoder.backbone.blocks.0.layer_norm1.weight"
    ),
    "grounding_encoder.sam2_model.image_encoder.trunk.blocks.0.attn.qkv.weight": (
        "sam2.vision_encoder.backbone.blocks.0.attn.qkv.weight"
    ),
    "grounding_encoder.sam2_model.image_encoder.trunk.blocks.0.mlp.layers.1.weight": (
        "sam2.vision_encoder.backbone.blocks.0.mlp.proj_out.weight"
    ),
    "grounding_encoder.sam2_model.image_encoder.trunk.blocks.1.proj.weight": (
        "sam2.vision_encoder.backbone.blocks.1.proj.weight"
    ),
    "grounding_encoder.sam2_model.image_encoder.neck.convs.0.conv.weight": (
        "sam2.vision_encoder.neck.convs.0.weight"
    ),
    "grounding_encoder.sam2_model.no_mem_embed": "sam2.no_memory_embedding",
    "grounding_encoder.sam2_model.sam_prompt_encoder.no_mask_embed.weight": (
        "sam2.prompt_encoder.no_mask_embed.weight"
    ),
    "grounding_encoder.sam2_model.sam_prompt_encoder.not_a_point_embed.weight": (
        "sam2.prompt_encoder.not_a_point_embed.weight"
    ),
    "grounding_encoder.sam2_model.sam_prompt_encoder.mask_downscaling.4.weight": (
        "sam2.prompt_encoder.mask_embed.layer_norm2.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.transformer.layers.0.self_attn.out_proj"
    ".weight": "sam2.mask_decoder.transformer.layers.0.self_attn.o_proj.weight",
    "grounding_encoder.sam2_model.sam_mask_decoder.transformer.layers.0.norm3.bias": (
        "sam2.mask_decoder.transformer.layers.0.layer_norm3.bias"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight": (
        "sam2.mask_decoder.transformer.layers.0.mlp.proj_in.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.transformer.norm_final_attn.weight": (
        "sam2.mask_decoder.transformer.layer_norm_final_attn.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.output_upscaling.1.weight": (
        "sam2.mask_decoder.upscale_layer_norm.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.output_hypernetworks_mlps.3.layers.1.weight": (
        "sam2.mask_decoder.output_hypernetworks_mlps.3.layers.0.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.iou_prediction_head.layers.2.bias": (
        "sam2.mask_decoder.iou_prediction_head.proj_out.bias"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.pred_obj_score_head.layers.0.weight": (
        "sam2.mask_decoder.pred_obj_score_head.proj_in.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.conv_s1.weight": (
        "sam2.mask_decoder.conv_s1.weight"
    ),
    "grounding_encoder.sam2_model.sam_mask_decoder.obj_score_token.weight": (
        "sam2.mask_decoder.obj_score_token.weight"
    ),
    "text_hidden_fcs.2.weight": "text_hidden_fcs.2.weight",
}

OFFICIAL_HF_QWEN = {
    "model.model.visual.patch_embed.proj.weight": "mllm.model.visual.patch_embed.proj.weight",
    "model.model.visual.merger.mlp.0.weight": "mllm.model.visual.merger.mlp.0.weight",
    "model.model.language_model.layers.0.mlp.up_proj.weight": (
        "mllm.model.language_model.layers.0.mlp.up_proj.weight"
    ),
    "model.lm_head.weight": "mllm.lm_head.weight",
    # transformers < 4.52 wrote the Qwen2.5-VL parts without the language_model level
    "model.visual.blocks.0.attn.qkv.weight": "mllm.model.visual.blocks.0.attn.qkv.weight",
    "model.model.layers.0.self_attn.k_proj.bias": (
        "mllm.model.language_model.layers.0.self_attn.k_proj.bias"
    ),
    "model.model.embed_tokens.weight": "mllm.model.language_model.embed_tokens.weight",
}


@pytest.fixture(scope="module")
def internvl_state():
    model, _ = tiny_model("internvl")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def qwen_state():
    model, _ = tiny_model("qwen2_5_vl")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("official", "native"), sorted(OFFICIAL_HF_INTERNVL.items()))
def test_literal_official_internvl_names_map_to_model_parameters(official, native, internvl_state):
    target = map_key(official, "sa2va_hf_internvl")
    assert target is not None and target.op == "copy"
    assert target.keys[0] == native
    assert native in internvl_state


@pytest.mark.parametrize(("official", "native"), sorted(OFFICIAL_HF_QWEN.items()))
def test_literal_official_qwen_names_map_to_model_parameters(official, native, qwen_state):
    target = map_key(official, "sa2va_hf_qwen")
    assert target is not None and target.keys == (native,)
    assert native in qwen_state


def test_fused_and_stacked_parameters():
    qkv = map_key("vision_model.encoder.layers.3.attn.qkv.bias", "sa2va_hf_internvl")
    assert qkv.op == "split_qkv"
    assert qkv.keys == tuple(
        f"mllm.model.vision_tower.encoder.layer.3.attention.{p}.bias"
        for p in ("q_proj", "k_proj", "v_proj")
    )
    row = map_key(
        "grounding_encoder.sam2_model.sam_prompt_encoder.point_embeddings.2.weight",
        "sa2va_hf_internvl",
    )
    assert (row.op, row.row, row.keys) == ("row", 2, ("sam2.prompt_encoder.point_embed.weight",))
    gauss = map_key(
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "sam2_original"
    )
    assert set(gauss.keys) == {
        "sam2.prompt_encoder.shared_embedding.positional_embedding",
        "sam2.shared_image_embedding.positional_embedding",
    }


@pytest.mark.parametrize(
    "key",
    [
        "grounding_encoder.sam2_model.memory_attention.layers.0.self_attn.q_proj.weight",
        "grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight",
        "grounding_encoder.sam2_model.maskmem_tpos_enc",
        "grounding_encoder.sam2_model.obj_ptr_proj.layers.0.weight",
    ],
)
def test_video_memory_parameters_are_dropped_with_a_reason(key):
    target = map_key(key, "sa2va_hf_internvl")
    assert target.op == "drop" and "video" in target.reason


@pytest.mark.parametrize(
    "key",
    [
        "grounding_encoder.sam2_model.sam_mask_decoder.bogus.weight",
        "vision_model.encoder.layers.0.attn.qkv_extra.weight",
        "mlp1.2.weight",  # GELU has no weights: a key there means another architecture
    ],
)
def test_unknown_official_keys_are_unmapped(key):
    assert map_key(key, "sa2va_hf_internvl") is None


@pytest.mark.parametrize("family", ["internvl", "qwen2_5_vl"])
def test_every_native_parameter_has_an_official_name_and_maps_back(
    family, internvl_state, qwen_state
):
    shapes = internvl_state if family == "internvl" else qwen_state
    for layout in (
        ("sa2va_hf_internvl", "sa2va_train_internvl")
        if family == "internvl"
        else ("sa2va_hf_qwen", "sa2va_train_qwen")
    ):
        names = native_to_official(shapes, layout, shapes)
        covered = set()
        for official, native, _op, _index in names:
            target = map_key(official, layout)
            assert target is not None, official
            assert native in target.keys
            covered.update(target.keys)
        assert set(shapes) == covered, sorted(set(shapes) ^ covered)[:5]


def test_strip_peft_roles():
    lora = strip_peft(
        "mllm.model.language_model.base_model.model.model.layers.0.self_attn.q_proj"
        ".lora_A.default.weight"
    )
    assert lora.role == "lora_A"
    assert lora.base == "mllm.model.language_model.model.layers.0.self_attn.q_proj.weight"
    saved = strip_peft("mllm.model.base_model.model.lm_head.modules_to_save.default.weight")
    assert (saved.role, saved.base) == ("modules_to_save", "mllm.model.lm_head.weight")
    plain = strip_peft("base_model.model.sam2.mask_decoder.iou_token.weight")
    assert (plain.role, plain.base) == ("plain", "sam2.mask_decoder.iou_token.weight")
    frozen = strip_peft("base_model.model.x.embed_tokens.original_module.weight")
    assert frozen.role == "original_module"
    with pytest.raises(CheckpointError, match="DoRA"):
        strip_peft("a.q_proj.lora_magnitude_vector.default.weight")
