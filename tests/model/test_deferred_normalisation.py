"""Deferred (on-device) normalisation gives exactly the eager processor's pixel values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesselctl.model.batch import SegSample
from vesselctl.model.presets import TINY_PROCESSOR_OVERRIDES, preset_config
from vesselctl.model.processor import ProcessorOptions, Sa2VAProcessor
from vesselctl.model.tokenizer import build_tiny_tokenizer


@pytest.mark.parametrize("resize", ["square", "letterbox"])
def test_deferred_equals_eager(resize: str) -> None:
    tokenizer = build_tiny_tokenizer()
    config = preset_config("tiny", tokenizer)
    base = ProcessorOptions.from_config(
        config, **TINY_PROCESSOR_OVERRIDES.get("tiny", {}), sam2_resize=resize
    )
    eager = Sa2VAProcessor(tokenizer, base)
    deferred = Sa2VAProcessor(tokenizer, base, normalise_on_device=True)
    rng = np.random.default_rng(0)
    samples = [
        SegSample("a", rng.integers(0, 256, (40, 70, 3), dtype=np.uint8), ["blood vessels"]),
        SegSample("b", rng.integers(0, 256, (64, 32, 3), dtype=np.uint8), ["blood vessels"]),
    ]
    want = eager(samples, train=False).to("cpu", torch.float32)
    raw = deferred(samples, train=False)
    assert raw.pixel_values.dtype == torch.uint8 and raw.sam2_pixel_values.dtype == torch.uint8
    got = raw.to("cpu", torch.float32)
    assert got.deferred_normalisation is None
    assert torch.equal(got.pixel_values, want.pixel_values)
    assert torch.equal(got.sam2_pixel_values, want.sam2_pixel_values)
    assert torch.equal(got.input_ids, want.input_ids)
