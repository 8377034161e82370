"""Presets: tiny models build and run with their processor; real sizes have the released shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesselctl.errors import ModelError
from vesselctl.model.batch import SegSample
from vesselctl.model.presets import build_preset, preset_config
from vesselctl.model.sa2va import Sa2VAModel

# Parameter counts (billions, SAM2 Hiera-L's ~0.22B included) that the released models have.
REAL_SIZES = {
    "sa2va-1b": (0.9, 1.3, 896, "internvl"),
    "sa2va-4b": (3.6, 4.3, 2048, "internvl"),
    "sa2va-internvl3-2b": (2.0, 2.6, 1536, "internvl"),
    "sa2va-qwen2.5-vl-3b": (3.6, 4.3, 2048, "qwen2_5_vl"),
}


@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_real_size_presets_have_plausible_sizes_on_the_meta_device(name):
    low, high, hidden, family = REAL_SIZES[name]
    with torch.device("meta"):
        model = Sa2VAModel(preset_config(name))
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    total = sum(p.numel() for p in model.parameters()) / 1e9
    sam2 = sum(p.numel() for p in model.sam2.parameters()) / 1e6
    assert low <= total <= high, f"{name}: {total:.3f}B parameters"
    assert 210 <= sam2 <= 225  # SAM2 Hiera-L with FPN, prompt encoder and decoder: ~217M
    assert model.config.llm_hidden_size == hidden and model.config.family == family
    assert model.text_hidden_fcs[2].out_features == 256
    assert model.config.mask_logits_size == 256


def test_qwen_real_preset_mrope_sections_fill_half_the_head_dim():
    text = preset_config("sa2va-qwen2.5-vl-3b").mllm_config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2.5-vl"])
def test_tiny_presets_train_and_predict_through_their_processor(name):
    torch.manual_seed(0)
    model, processor = build_preset(name)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    rng = np.random.default_rng(0)
    samples = [
        SegSample(
            "a",
            rng.integers(0, 255, (60, 80, 3), dtype=np.uint8),
            ["blood vessels"],
            [rng.random((60, 80)) > 0.5],
        ),
        SegSample(
            "b",
            rng.integers(0, 255, (50, 40, 3), dtype=np.uint8),
            ["vessels", "vein"],
            [rng.random((50, 40)) > 0.5, rng.random((50, 40)) > 0.5],
        ),
    ]
    out = model(processor(samples, train=True))
    assert torch.isfinite(out.loss)
    assert [t.shape[0] for t in out.mask_logits] == [1, 2]
    probabilities = model.predict_probabilities(processor(samples, train=False))
    assert [tuple(p.shape) for p in probabilities] == [(1, 60, 80), (2, 50, 40)]
    assert all(bool(((p >= 0) & (p <= 1)).all()) for p in probabilities)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ModelError, match=r"unknown preset 'sa2va-70b'.*sa2va-1b"):
        preset_config("sa2va-70b")


def test_real_preset_without_a_tokenizer_is_refused_before_building():
    with pytest.raises(ModelError, match="needs a tokenizer"):
        build_preset("sa2va-1b")
