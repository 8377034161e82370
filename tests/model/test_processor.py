"""Tests for Sa2VAProcessor: label masking, image tokens, collation, Qwen path, save/load."""

from __future__ import annotations

import pickle
import random
from functools import partial

import numpy as np
import pytest
import torch

from vesselctl.errors import ModelError
from vesselctl.model.batch import SegSample
from vesselctl.model.processor import IGNORE_INDEX, Sa2VAProcessor
from vesselctl.model.tokenizer import build_tiny_tokenizer

# InternVL options small enough for tests: 28-px tiles, patch 14, pixel shuffle 0.5 -> 1 token/tile.
SMALL = dict(family="internvl", template="qwen_chat", tile_size=28, max_tiles=4, sam2_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return Sa2VAProcessor(tokenizer, **SMALL)


def _sample(sample_id="s", height=28, width=56, phrases=("vessels",), seed=0, masks=True):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask_list = [rng.random((height, width)) > 0.5 for _ in phrases] if masks else None
    return SegSample(sample_id, image, list(phrases), mask_list)


def _enc(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_labels_masked_exactly_against_hand_built_vector(tokenizer, processor):
    batch = processor([_sample(phrases=("vessels", "artery"))], train=True)
    # 56x28 -> 2x1 grid + thumbnail = 3 tiles x 1 token.
    first = (
        "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 3 + "</img>\n"
        "Please segment vessels in this image.<|im_end|>\n<|im_start|>assistant\n"
    )
    second = (
        "<|im_start|>user\nPlease segment artery in this image.<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = "Sure, [SEG].<|im_end|>"
    ids, labels = [], []
    for prompt in (first, second):
        ids += _enc(tokenizer, prompt) + _enc(tokenizer, answer) + _enc(tokenizer, "\n")
        labels += [IGNORE_INDEX] * len(_enc(tokenizer, prompt))
        labels += _enc(tokenizer, answer)
        labels += [IGNORE_INDEX] * len(_enc(tokenizer, "\n"))
    assert batch.input_ids[0].tolist() == ids
    assert batch.labels[0].tolist() == labels
    supervised = batch.labels[0][batch.labels[0] != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == answer + answer
    # Same ids as encoding the whole conversation in one go (special tokens split the text).
    assert ids == _enc(tokenizer, first + answer + "\n" + second + answer + "\n")


def test_image_tokens_per_tile(tokenizer):
    processor = Sa2VAProcessor(tokenizer, **{**SMALL, "tile_size": 56, "max_tiles": 6})
    assert processor.tokens_per_tile == 4
    for height, width in ((56, 56), (56, 112), (130, 60)):
        batch = processor([_sample(height=height, width=width)], train=False)
        n_tiles = batch.pixel_values.shape[0]
        n_image = int((batch.input_ids == processor.image_token_id).sum())
        assert n_image == 4 * n_tiles
        assert batch.pixel_values.shape[1:] == (3, 56, 56)
    assert n_tiles == 3  # 60 wide x 130 high (0.46) -> 1x2 grid (0.5) + thumbnail


def test_several_phrases_give_several_seg_with_masks_in_order(processor):
    sample = _sample(phrases=("artery", "vein", "capillary"), seed=3)
    batch = processor([sample], train=True)
    assert int((batch.input_ids[0] == processor.seg_token_id).sum()) == 3
    assert batch.gt_masks[0].shape == (3, 28, 56) and batch.gt_masks[0].dtype == torch.float32
    for i, mask in enumerate(sample.masks):
        assert torch.equal(batch.gt_masks[0][i], torch.from_numpy(mask).float())
    # Every [SEG] is supervised (the LLM learns to emit it).
    seg_positions = batch.input_ids[0] == processor.seg_token_id
    assert (batch.labels[0][seg_positions] == processor.seg_token_id).all()


def test_collate_right_pads_and_keeps_each_sample_intact(processor, tokenizer):
    short, long = _sample("a", phrases=("x",), seed=1), _sample("b", phrases=("x", "y"), seed=2)
    batch = processor([short, long], train=True)
    alone = processor([short], train=True)
    n = alone.input_ids.shape[1]
    assert batch.input_ids.shape == (2, batch.attention_mask[1].sum())
    assert torch.equal(batch.input_ids[0, :n], alone.input_ids[0])
    assert torch.equal(batch.labels[0, :n], alone.labels[0])
    assert (batch.input_ids[0, n:] == tokenizer.pad_token_id).all()
    assert (batch.attention_mask[0, n:] == 0).all() and (batch.attention_mask[0, :n] == 1).all()
    assert (batch.labels[0, n:] == IGNORE_INDEX).all()
    assert batch.sam2_pixel_values.shape == (2, 3, 64, 64)
    assert batch.pixel_values.shape[0] == 6  # 3 tiles each
    assert batch.sample_ids == ["a", "b"] and batch.original_sizes == [(28, 56), (28, 56)]
    assert [f.content for f in batch.sam2_frames] == [(64, 64), (64, 64)]


def test_inference_appends_answer_without_labels_or_masks(processor, tokenizer):
    sample = _sample(masks=False)
    batch = processor([sample], train=False)
    assert batch.labels is None and batch.gt_masks is None
    text = tokenizer.decode(batch.input_ids[0])
    assert text.endswith("<|im_start|>assistant\nSure, [SEG].<|im_end|>\n")
    # Inference ids equal training ids with the same (first) templates.
    trained = processor([_sample()], train=True)
    assert torch.equal(batch.input_ids, trained.input_ids)


def test_prompt_only_ends_with_the_assistant_header(processor, tokenizer):
    batch = processor([_sample(masks=False)], train=False, prompt_only=True)
    text = tokenizer.decode(batch.input_ids[0])
    assert text.endswith("in this image.<|im_end|>\n<|im_start|>assistant\n")
    assert "[SEG]" not in text and batch.labels is None
    full = processor([_sample(masks=False)], train=False)
    n = batch.input_ids.shape[1]
    assert torch.equal(full.input_ids[0, :n], batch.input_ids[0])
    with pytest.raises(ModelError, match="exactly one phrase"):
        processor([_sample(phrases=("a", "b"), masks=False)], train=False, prompt_only=True)
    with pytest.raises(ModelError, match="train=False"):
        processor([_sample()], train=True, prompt_only=True)


def test_training_draws_templates_from_rng(tokenizer):
    processor = Sa2VAProcessor(
        tokenizer,
        **SMALL,
        question_templates=["Please segment {phrase} in this image.", "Where is the {phrase}?"],
        answer_templates=["Sure, [SEG].", "It is [SEG]."],
    )
    sample = _sample(phrases=("vessel",) * 12)
    texts = {
        tokenizer.decode(processor([sample], True, random.Random(s)).input_ids[0]) for s in range(3)
    }
    assert len(texts) > 1
    a = processor([sample], True, random.Random(7)).input_ids
    assert torch.equal(a, processor([sample], True, random.Random(7)).input_ids)
    text = tokenizer.decode(a[0])
    assert "Where is the vessel?" in text and "It is [SEG]." in text


def test_qwen_path_shapes_and_token_types(tokenizer):
    from vesselctl.model.presets import preset_config

    config = preset_config("tiny-qwen2.5-vl", tokenizer)
    processor = Sa2VAProcessor(tokenizer, config, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    assert processor.options.family == "qwen2_5_vl" and processor.options.template == "qwen2_5_vl"
    batch = processor([_sample(height=56, width=84), _sample("b", 30, 30, ("a", "b"))], True)
    grid = batch.image_grid_thw
    # 56x84 fits the budget as is; 30x30 is below min_pixels and grows to 56x56 (grid in 14-px
    # patches, 2x2 of them merged into one token).
    assert grid.tolist() == [[1, 4, 6], [1, 4, 4]]
    assert batch.pixel_values.shape == (24 + 16, 1176)
    for row in range(2):
        n_pad = int((batch.input_ids[row] == config.image_token_id).sum())
        assert n_pad == int(grid[row].prod()) // 4
        assert torch.equal(
            batch.mm_token_type_ids[row].bool(), batch.input_ids[row] == config.image_token_id
        )
    text = tokenizer.decode(batch.input_ids[0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|vision_end|>Please segment" in text
    assert batch.sam2_pixel_values.shape == (2, 3, config.sam2_image_size, config.sam2_image_size)


def test_from_config_reads_sizes_and_checks_token_ids(tokenizer):
    from vesselctl.model.presets import preset_config

    config = preset_config("tiny", tokenizer)
    processor = Sa2VAProcessor.from_config(config, tokenizer)
    assert processor.options.tile_size == config.tile_size
    assert processor.tokens_per_tile == config.image_tokens_per_tile
    assert processor.options.sam2_size == config.sam2_image_size
    assert processor.seg_token_id == config.seg_token_id
    config.seg_token_id = config.seg_token_id + 1
    with pytest.raises(ModelError, match=r"\[SEG\] id .* expects"):
        Sa2VAProcessor.from_config(config, tokenizer)


def test_truncation_never_cuts_image_or_seg(tokenizer, processor):
    sample = _sample(phrases=("vessels", "artery"))
    full = processor([sample], train=True).input_ids.shape[1]
    cut = Sa2VAProcessor(tokenizer, **{**SMALL, "max_length": full - 2})([sample], True)
    assert cut.input_ids.shape[1] == full - 2  # only "<|im_end|>\n" after the last [SEG] cut
    with pytest.raises(ModelError, match=r"exceed max_length 10.*max_tiles"):
        Sa2VAProcessor(tokenizer, **{**SMALL, "max_length": 10})([sample], True)
    last_seg = int(
        (processor([sample], True).input_ids[0] == processor.seg_token_id).nonzero().max()
    )
    with pytest.raises(ModelError, match=r"\d \[SEG\]\) exceed"):
        Sa2VAProcessor(tokenizer, **{**SMALL, "max_length": last_seg})([sample], True)


def test_letterbox_option_records_the_frame(tokenizer):
    processor = Sa2VAProcessor(tokenizer, **{**SMALL, "sam2_resize": "letterbox"})
    batch = processor([_sample(height=28, width=56)], train=False)
    assert batch.sam2_frames[0].content == (32, 64)
    assert (batch.sam2_pixel_values[0, :, 32:, :] == 0).all()


def test_grayscale_and_16_bit_images_are_accepted(processor):
    gray16 = (np.arange(28 * 56, dtype=np.uint16).reshape(28, 56) * 40).astype(np.uint16)
    batch = processor([SegSample("g", gray16, ["vessels"])], train=False)
    rgb = np.repeat(
        ((gray16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, 2
    )
    expected = processor([SegSample("g", rgb, ["vessels"])], train=False)
    assert torch.equal(batch.pixel_values, expected.pixel_values)
    assert torch.equal(batch.sam2_pixel_values, expected.sam2_pixel_values)


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        (SegSample("m", np.zeros((28, 28, 3), np.uint8), ["x"], None), "no masks"),
        (
            SegSample("m", np.zeros((28, 28, 3), np.uint8), ["x"], [np.zeros((5, 5), bool)]),
            "match the image size",
        ),
        (
            SegSample("m", np.zeros((28, 28, 3), np.uint8), ["x", "y"], [np.zeros((28, 28), bool)]),
            "2 phrases but 1 masks",
        ),
        (SegSample("m", np.zeros((28, 28, 3), np.uint8), [], []), "no phrases"),
        (
            SegSample(
                "m", np.zeros((28, 28, 3), np.uint8), ["a [SEG]"], [np.zeros((28, 28), bool)]
            ),
            "special token",
        ),
    ],
)
def test_bad_samples_raise_clear_errors(processor, sample, match):
    with pytest.raises(ModelError, match=match):
        processor([sample], train=True)


def test_bad_options_raise(tokenizer):
    with pytest.raises(ModelError, match="family"):
        Sa2VAProcessor(tokenizer, family="llava")
    with pytest.raises(ModelError, match="max_tiles"):
        Sa2VAProcessor(tokenizer, **{**SMALL, "min_tiles": 5})
    with pytest.raises(ModelError, match="sam2_resize"):
        Sa2VAProcessor(tokenizer, **{**SMALL, "sam2_resize": "crop"})
    with pytest.raises(ModelError, match=r"unknown processor option.*max_tile\b"):
        Sa2VAProcessor(tokenizer, **SMALL, max_tile=3)
    with pytest.raises(ModelError, match="no samples"):
        Sa2VAProcessor(tokenizer, **SMALL)([], True)


def test_tokenizer_without_sa2va_tokens_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>",
    )
    with pytest.raises(ModelError, match="add_sa2va_tokens"):
        Sa2VAProcessor(bare, **SMALL)


def _assert_same_batch(a, b):
    for name in ("input_ids", "attention_mask", "labels", "pixel_values", "sam2_pixel_values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert all(torch.equal(x, y) for x, y in zip(a.gt_masks, b.gt_masks, strict=True))
    assert a.sam2_frames == b.sam2_frames and a.original_sizes == b.original_sizes


def test_save_and_load_round_trip(tmp_path, tokenizer):
    processor = Sa2VAProcessor(
        tokenizer, **{**SMALL, "sam2_resize": "letterbox", "question_templates": ["Find {phrase}."]}
    )
    # A model directory also holds the Sa2VA config.json, which AutoTokenizer must not need.
    from vesselctl.model.presets import preset_config

    preset_config("tiny", tokenizer).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    loaded = Sa2VAProcessor.from_pretrained(tmp_path)
    assert loaded.options == processor.options
    samples = [_sample(phrases=("a", "b")), _sample("c", 40, 30)]
    _assert_same_batch(
        processor(samples, True, random.Random(0)), loaded(samples, True, random.Random(0))
    )


def test_load_refuses_missing_or_foreign_files(tmp_path):
    with pytest.raises(ModelError, match=r"no processor_config\.json"):
        Sa2VAProcessor.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text('{"processor_class": "Other"}')
    with pytest.raises(ModelError, match="processor_class is 'Other'"):
        Sa2VAProcessor.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(
        '{"processor_class": "Sa2VAProcessor", "format_version": 1, "tile_sise": 4}'
    )
    with pytest.raises(ModelError, match=r"unknown processor option.*tile_sise"):
        Sa2VAProcessor.from_pretrained(tmp_path)


def test_pickles_and_runs_in_dataloader_workers(processor):
    samples = [_sample(str(i), phrases=("v",) * (1 + i % 2), seed=i) for i in range(4)]
    clone = pickle.loads(pickle.dumps(processor))
    _assert_same_batch(
        processor(samples[:2], True, random.Random(1)), clone(samples[:2], True, random.Random(1))
    )
    loader = torch.utils.data.DataLoader(
        samples, batch_size=2, num_workers=2, collate_fn=partial(processor, train=True)
    )
    batches = list(loader)
    assert [b.sample_ids for b in batches] == [["0", "1"], ["2", "3"]]
    assert all(b.labels is not None and len(b.gt_masks) == 2 for b in batches)


def test_encode_pixels_matches_encode_on_a_numpy_image(tokenizer):
    """The GPU path of predict: same tokens and frame, pixels within one grey level."""
    processor = Sa2VAProcessor(tokenizer, **SMALL, normalise_on_device=True)
    sample = _sample(height=40, width=90, masks=False)
    reference = processor.encode(sample, train=False)
    got = processor.encode_pixels(
        sample.sample_id, torch.from_numpy(sample.image).permute(2, 0, 1), sample.phrases
    )
    assert got.input_ids == reference.input_ids and got.labels == reference.labels
    assert got.sam2_frame == reference.sam2_frame and got.original_size == (40, 90)
    for name in ("pixel_values", "sam2_pixel_values"):
        a, b = getattr(got, name), getattr(reference, name)
        assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 1, name
    with pytest.raises(ModelError, match=r"\[3, H, W\] uint8"):
        processor.encode_pixels("x", torch.zeros(3, 8, 8), ["vessels"])
