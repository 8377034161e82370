"""Single-pass inference equals generation's [SEG] path; probabilities come at original size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from vesselctl.model.batch import Sa2VABatch
from vesselctl.model.inference import logits_to_probabilities
from vesselctl.model.presets import preset_config
from vesselctl.model.sa2va import Sa2VAModel
from vesselctl.model.tokenizer import build_tiny_tokenizer


class ForceTokens(LogitsProcessor):
    """Make greedy decoding emit ``tokens`` (random weights would never say "Sure, [SEG].")."""

    def __init__(self, tokens: list[int], prompt_length: int) -> None:
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids, scores):
        step = min(input_ids.shape[1] - self.prompt_length, len(self.tokens) - 1)
        forced = torch.full_like(scores, -1e9)
        forced[:, self.tokens[step]] = 0.0
        return forced


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _prompt_and_pixels(cfg, gen):
    img = cfg.image_token_id
    if cfg.family == "internvl":
        prompt = [305, 306, *([img] * cfg.image_tokens_per_tile), 307]
        return prompt, torch.randn(1, 3, cfg.tile_size, cfg.tile_size, generator=gen), None
    vs, ve = cfg.mllm_config.vision_start_token_id, cfg.mllm_config.vision_end_token_id
    prompt = [305, vs, *([img] * 4), ve, 307]
    return prompt, torch.randn(16, 1176, generator=gen), torch.tensor([[1, 4, 4]])


def _batch(ids, pixels, grid, sam2, size):
    t = torch.tensor([ids])
    return Sa2VABatch(
        input_ids=t,
        attention_mask=torch.ones_like(t),
        labels=None,
        pixel_values=pixels,
        sam2_pixel_values=sam2,
        image_grid_thw=grid,
        original_sizes=[size],
    )


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2.5-vl"])
def test_teacher_forced_single_pass_equals_generation(tokenizer, name):
    """The [SEG] hidden state of a forward over prompt + "Sure, [SEG]." is the one generation
    reads (its step where [SEG] is the input), so the probabilities agree."""
    torch.manual_seed(0)
    model = Sa2VAModel(preset_config(name, tokenizer)).eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    prompt, pixels, grid = _prompt_and_pixels(cfg, gen)
    answer = tokenizer("Sure, [SEG].", add_special_tokens=False).input_ids
    answer.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert cfg.seg_token_id in answer
    sam2 = torch.randn(1, 3, cfg.sam2_image_size, cfg.sam2_image_size, generator=gen)
    generated = model.generate_masks(
        _batch(prompt, pixels, grid, sam2, (70, 90)),
        max_new_tokens=len(answer),
        logits_processor=LogitsProcessorList([ForceTokens(answer, len(prompt))]),
    )[0]
    assert generated.token_ids == answer
    single = model.predict_probabilities(_batch(prompt + answer, pixels, grid, sam2, (70, 90)))[0]
    assert single.shape == generated.probabilities.shape == (1, 70, 90)
    assert torch.allclose(single, generated.probabilities, atol=1e-5)


def test_a_seg_generated_as_the_last_token_gives_no_mask(tokenizer):
    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).eval()
    cfg = model.config
    prompt, pixels, grid = _prompt_and_pixels(cfg, torch.Generator().manual_seed(1))
    sam2 = torch.randn(1, 3, cfg.sam2_image_size, cfg.sam2_image_size)
    out = model.generate_masks(
        _batch(prompt, pixels, grid, sam2, (20, 30)),
        max_new_tokens=2,
        logits_processor=LogitsProcessorList([ForceTokens([305, cfg.seg_token_id], len(prompt))]),
    )[0]
    assert out.token_ids == [305, cfg.seg_token_id]
    assert out.probabilities.shape == (0, 20, 30)


def test_probabilities_upsample_logits_in_two_bilinear_steps_then_sigmoid():
    logits = torch.randn(2, 8, 8)
    got = logits_to_probabilities(logits, 32, (20, 50))
    step = F.interpolate(logits[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    step = F.interpolate(step, size=(20, 50), mode="bilinear", align_corners=False)
    assert torch.allclose(got, step[:, 0].sigmoid(), atol=1e-6)
    assert logits_to_probabilities(torch.zeros(0, 8, 8), 32, (5, 6)).shape == (0, 5, 6)


def test_batched_prediction_equals_one_sample_at_a_time(tokenizer):
    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).eval()
    cfg = model.config
    seg, img = cfg.seg_token_id, cfg.image_token_id
    tile = [img] * cfg.image_tokens_per_tile
    rows = [
        [305, *tile, 306, seg, 307, seg, 308],
        [305, *tile, 306, 307],  # no [SEG]: no mask
        [305, *tile, seg],
    ]
    length = max(map(len, rows))
    ids = torch.zeros(3, length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randn(3, 3, cfg.tile_size, cfg.tile_size, generator=gen)
    sam2 = torch.randn(3, 3, cfg.sam2_image_size, cfg.sam2_image_size, generator=gen)
    sizes = [(30, 40), (25, 25), (64, 48)]
    batch = Sa2VABatch(
        input_ids=ids,
        attention_mask=mask,
        labels=None,
        pixel_values=pixels,
        sam2_pixel_values=sam2,
        original_sizes=sizes,
    )
    together = model.predict_probabilities(batch)
    assert [tuple(p.shape) for p in together] == [(2, 30, 40), (0, 25, 25), (1, 64, 48)]
    for i in (0, 2):
        one = model.predict_probabilities(
            _batch(rows[i], pixels[i : i + 1], None, sam2[i : i + 1], sizes[i])
        )[0]
        assert torch.allclose(one, together[i], atol=1e-5)


# --- letterbox SAM2 input: predictions land on the input image -------------------------------


def _bright_region_decoder(model, sam2_pixel_values):
    """A stand-in mask decoder that segments exactly the bright pixels of SAM2's input, so any
    misplacement of its logits on the way back to the image shows up as a shifted mask."""
    side = model.config.mask_logits_size
    bright = (sam2_pixel_values[:, 0:1] > 1.0).float()  # white -> ~2.3, black -> ~-2.1, pad 0
    pooled = F.adaptive_avg_pool2d(bright, side)[:, 0]
    logits = (pooled * 2.0 - 1.0) * 10.0

    def decode(image_embeddings, prompts, image_index):
        out = logits.to(prompts.dtype).index_select(0, image_index) + prompts.sum() * 0.0
        return out, torch.zeros(prompts.shape[0], dtype=prompts.dtype)

    return decode


def _rectangle_sample(height, width, box):
    import numpy as np

    from vesselctl.model.batch import SegSample

    image = np.zeros((height, width, 3), np.uint8)
    top, bottom, left, right = box
    image[top:bottom, left:right] = 255
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return SegSample("rect", image, ["vessels"], [mask]), torch.from_numpy(mask)


def _iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


@pytest.mark.parametrize("mode", ["letterbox", "square"])
def test_letterboxed_prediction_is_aligned_with_the_input_image(tokenizer, monkeypatch, mode):
    from vesselctl.model.processor import Sa2VAProcessor

    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).eval()
    processor = Sa2VAProcessor(tokenizer, model.config, sam2_resize=mode)
    sample, truth = _rectangle_sample(48, 120, (8, 28, 70, 110))
    batch = processor([sample], train=False)
    monkeypatch.setattr(
        model, "decode_masks", _bright_region_decoder(model, batch.sam2_pixel_values)
    )
    probabilities = model.predict_probabilities(batch)[0]
    assert probabilities.shape == (1, 48, 120)
    assert _iou(probabilities[0] > 0.5, truth) > 0.85
    if mode == "letterbox":
        # The square-resize geometry on the same logits misplaces the mask: the test can fail.
        logits, _ = model.decode_masks(None, torch.zeros(1, 256), torch.zeros(1, dtype=torch.long))
        square = logits_to_probabilities(logits, model.config.sam2_image_size, (48, 120))
        assert _iou(square[0] > 0.5, truth) < 0.5


def test_square_frame_probabilities_are_bit_identical_to_the_official_upsampling():
    from vesselctl.model.tiling import Sam2Frame

    logits = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(3))
    step = F.interpolate(logits[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    step = F.interpolate(step, size=(30, 70), mode="bilinear", align_corners=False)
    expected = step[:, 0].sigmoid()
    assert torch.equal(logits_to_probabilities(logits, Sam2Frame(64, (64, 64)), (30, 70)), expected)
    assert torch.equal(logits_to_probabilities(logits, 64, (30, 70)), expected)
    # Same size as SAM2's input: the second (identity) resize is skipped, still bit-identical.
    step = F.interpolate(logits[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    expected = F.interpolate(step, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(logits_to_probabilities(logits, 64, (64, 64)), expected[:, 0].sigmoid())


def test_seg_scores_equal_the_full_lm_head_at_the_position_before_seg() -> None:
    """P([SEG]) comes from the hidden state that predicts it, as in a full forward."""
    import numpy as np
    import torch

    from vesselctl.model.batch import SegSample
    from vesselctl.model.inference import predict_with_seg_scores
    from vesselctl.model.presets import build_preset

    torch.manual_seed(0)
    model, processor = build_preset("tiny")
    model.eval()
    rng = np.random.default_rng(0)
    samples = [
        SegSample("a", rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), ["blood vessels"]),
        SegSample("b", rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), ["vessels", "arteries"]),
    ]
    batch = processor(samples, train=False)
    maps, scores = predict_with_seg_scores(model, batch)
    assert [m.shape[0] for m in maps] == [1, 2] and [s.shape[0] for s in scores] == [1, 2]
    with torch.no_grad():
        logits = model.mllm(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
        ).logits.float()
    seg = model.config.seg_token_id
    rows, cols = (batch.input_ids == seg).nonzero(as_tuple=True)
    expected = logits[rows, cols - 1].softmax(-1)[:, seg]
    torch.testing.assert_close(torch.cat(scores), expected, atol=1e-5, rtol=1e-4)
