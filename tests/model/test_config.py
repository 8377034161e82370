"""Sa2VAConfig: sub-configs as native objects, JSON round trip, validation, derived sizes."""

from __future__ import annotations

import pytest
from transformers import InternVLConfig, Qwen2_5_VLConfig, Sam2Config

from vesselctl.model.config import Sa2VAConfig
from vesselctl.model.presets import preset_config


def test_defaults_follow_the_reference_losses_and_point_sampling():
    cfg = Sa2VAConfig()
    assert (cfg.loss_bce_weight, cfg.loss_dice_weight, cfg.loss_llm_weight) == (2.0, 0.5, 1.0)
    assert (cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert cfg.seg_token == "[SEG]" and cfg.text_projection_dim == 256
    assert isinstance(cfg.mllm_config, InternVLConfig) and isinstance(cfg.sam2_config, Sam2Config)


def test_json_round_trip_rebuilds_native_sub_config_objects(tmp_path):
    cfg = preset_config("tiny-qwen2.5-vl")
    cfg.save_pretrained(tmp_path)
    loaded = Sa2VAConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.mllm_config, Qwen2_5_VLConfig)
    assert isinstance(loaded.sam2_config, Sam2Config)
    assert loaded.mllm_config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert loaded.seg_token_id == cfg.seg_token_id and loaded.template == "qwen2_5_vl"
    assert loaded.sam2_image_size == cfg.sam2_image_size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "llava"}, "family is 'llava'"),
        ({"template": "vicuna"}, "template is 'vicuna'"),
        ({"text_projection_dim": 128}, "text_projection_dim is 128"),
        ({"importance_sample_ratio": 1.5}, "importance_sample_ratio must lie in"),
        ({"oversample_ratio": 0.5}, "oversample_ratio must be >= 1"),
        ({"family": "internvl", "mllm_config": {"model_type": "qwen2_5_vl"}}, "model_type is"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sa2VAConfig(**kwargs)


def test_real_size_derived_values():
    cfg = preset_config("sa2va-1b")
    assert cfg.tile_size == 448 and cfg.image_tokens_per_tile == 256
    assert cfg.sam2_image_size == 1024 and cfg.mask_logits_size == 256
    assert cfg.llm_hidden_size == 896 and cfg.template == "qwen_chat"
    assert preset_config("sa2va-4b").template == "phi3_chat"
