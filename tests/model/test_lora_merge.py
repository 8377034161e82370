"""LoRA merge math against peft's own merge, and LoRA settings read from mmengine configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.model.official_fixtures import MMENGINE_CFG
from vesselctl.errors import CheckpointError
from vesselctl.model.lora_merge import LoraSpec, lora_spec_from_mmengine_cfg, merge_lora


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_equals_peft_merge_and_layer_output(rslora: bool):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    base = model[0].weight.detach().clone()
    r, alpha = 4, 16.0
    inject_adapter_in_model(
        LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["0"]), model
    )
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a = layer.lora_A["default"].weight.detach().clone()
    b = layer.lora_B["default"].weight.detach().clone()
    spec = LoraSpec(r, alpha, rslora)
    assert spec.scale == pytest.approx(alpha / (math.sqrt(r) if rslora else r))
    ours = merge_lora(base, a, b, spec.scale)
    x = torch.randn(5, 12)
    with torch.no_grad():
        unmerged_out = model(x)
        layer.merge()
        peft_merged = layer.base_layer.weight.detach().clone()
    torch.testing.assert_close(ours, peft_merged, rtol=0, atol=1e-6)
    torch.testing.assert_close(x @ ours.T + layer.base_layer.bias, unmerged_out, atol=1e-5, rtol=0)


def test_merge_keeps_dtype_and_rounds_once():
    weight = torch.randn(8, 6).to(torch.bfloat16)
    a, b = torch.randn(2, 6), torch.randn(8, 2)
    merged = merge_lora(weight, a, b, 0.5)
    assert merged.dtype == torch.bfloat16
    exact = weight.float() + 0.5 * (b @ a)
    assert torch.equal(merged, exact.to(torch.bfloat16))


def test_factors_that_do_not_fit_are_refused():
    with pytest.raises(CheckpointError, match=r"layer\.q_proj.*different base model"):
        merge_lora(torch.zeros(8, 6), torch.zeros(2, 5), torch.zeros(8, 2), 1.0, "layer.q_proj")
    with pytest.raises(CheckpointError, match="do not fit together"):
        merge_lora(torch.zeros(8, 6), torch.zeros(2, 6), torch.zeros(8, 3), 1.0, "w")


def test_lora_settings_from_mmengine_config_text():
    spec = lora_spec_from_mmengine_cfg(MMENGINE_CFG.format(r=64, alpha=128), rank=64)
    assert spec == LoraSpec(64, 128.0, False)
    rs = lora_spec_from_mmengine_cfg(
        "llm_lora=dict(type='LoraConfig', r=8, lora_alpha=16, use_rslora=True)", rank=8
    )
    assert rs is not None and rs.rslora
    assert lora_spec_from_mmengine_cfg("model = dict(type='X')", rank=8) is None
    with pytest.raises(CheckpointError, match=r"r=64.*rank 32"):
        lora_spec_from_mmengine_cfg(MMENGINE_CFG.format(r=64, alpha=128), rank=32)
