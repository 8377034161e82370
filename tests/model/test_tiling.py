"""Tests for RGB conversion, InternVL tiling, the Qwen pixel budget and SAM2 geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vesselctl.errors import ModelError
from vesselctl.model.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAM2_MEAN,
    SAM2_STD,
    candidate_grids,
    closest_grid,
    internvl_pixel_values,
    internvl_tiles,
    internvl_tokens_per_tile,
    masks_to_sam2_frame,
    qwen_image_processor,
    qwen_pixel_values,
    sam2_frame,
    sam2_logits_to_image,
    sam2_pixel_values,
    to_rgb_uint8,
)

# --- RGB conversion ----------------------------------------------------------------------------


def test_grayscale_and_single_channel_become_three_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for image in (gray, gray[:, :, None]):
        rgb = to_rgb_uint8(image)
        assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
        assert (rgb == gray[:, :, None]).all()


def test_rgba_drops_alpha():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    assert (to_rgb_uint8(rgba) == np.array([200, 0, 0], dtype=np.uint8)).all()


def test_uint16_full_range_divides_by_257_and_rounds():
    values = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    out = to_rgb_uint8(values)[0, :, 0]
    assert out.tolist() == [0, 0, 1, 1, 128, 255]
    assert out.tolist() == [int(np.floor(v / 257 + 0.5)) for v in values[0].tolist()]


def test_uint16_image_max_stretches_each_image():
    values = np.array([[0, 1024, 4095]], dtype=np.uint16)  # 12-bit data in 16 bits
    assert to_rgb_uint8(values, "image_max")[0, :, 1].tolist() == [0, 64, 255]
    assert to_rgb_uint8(np.zeros((2, 2), np.uint16), "image_max").max() == 0


def test_bool_and_float_images():
    assert to_rgb_uint8(np.array([[True, False]]))[0, :, 2].tolist() == [255, 0]
    assert to_rgb_uint8(np.array([[0.0, 0.5, 1.0]]))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ModelError, match=r"outside \[0, 1\]"):
        to_rgb_uint8(np.array([[0.0, 2.0]]))


@pytest.mark.parametrize("shape", [(4, 4, 2), (4, 4, 5), (4,), (0, 4, 3)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ModelError, match="shape"):
        to_rgb_uint8(np.zeros(shape, dtype=np.uint8))


def test_unsupported_dtype_is_refused():
    with pytest.raises(ModelError, match="int32"):
        to_rgb_uint8(np.zeros((2, 2), dtype=np.int32))


# --- InternVL tiling -----------------------------------------------------------------------------


def test_candidate_grids_cover_every_product_up_to_max():
    grids = candidate_grids(1, 12)
    assert len(grids) == sum(12 // i for i in range(1, 13)) == 35
    products = [c * r for c, r in grids]
    assert products == sorted(products) and products[0] == 1 and max(products) == 12
    assert candidate_grids(1, 1) == [(1, 1)]
    with pytest.raises(ModelError, match="min_tiles"):
        candidate_grids(3, 2)


@pytest.mark.parametrize(
    ("width", "height", "max_tiles", "expected"),
    [
        (448, 448, 12, (1, 1)),  # square, exactly one tile
        (896, 448, 12, (2, 1)),  # 2:1 landscape
        (448, 896, 12, (1, 2)),  # 1:2 portrait
        (1000, 100, 12, (10, 1)),  # 10:1 strip
        (1000, 100, 6, (6, 1)),  # capped by max_tiles
        (500, 500, 12, (1, 1)),  # tie 1x1 / 2x2: 250000 px <= half of 4 tiles -> stay 1x1
        (900, 900, 12, (2, 2)),  # 810000 px > half of 4 tiles, < half of 9 tiles -> 2x2
        (1400, 1400, 12, (3, 3)),  # 1.96 Mpx > half of 9 tiles (903168) -> 3x3
        (1344, 448, 12, (3, 1)),  # 3:1
        (600, 400, 12, (3, 2)),  # 1.5 -> 3x2 (diff 0); 1:1 and 2:1 are 0.5 away
    ],
)
def test_closest_grid_hand_computed(width, height, max_tiles, expected):
    assert closest_grid(width, height, 1, max_tiles, 448) == expected


def test_tiles_are_row_major_with_thumbnail_last():
    tile = 8
    image = np.zeros((16, 24, 3), dtype=np.uint8)  # 3 columns x 2 rows of 8x8 blocks
    for row in range(2):
        for col in range(3):
            image[row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = 10 * (row * 3 + col) + 5
    tiles = internvl_tiles(image, tile, 1, 12, use_thumbnail=True)
    assert tiles.shape == (7, 8, 8, 3)
    assert [int(t[4, 4, 0]) for t in tiles[:6]] == [5, 15, 25, 35, 45, 55]
    expected_thumb = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.BICUBIC))
    assert (tiles[6] == expected_thumb).all()
    assert internvl_tiles(image, tile, 1, 12, use_thumbnail=False).shape[0] == 6
    assert internvl_tiles(image, tile, 1, 1, use_thumbnail=True).shape[0] == 1  # no thumbnail


def test_pixel_values_match_pil_resize_crop_and_imagenet_normalisation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    tile = 28
    pixels = internvl_pixel_values(image, tile, 1, 6, True)
    cols, rows = closest_grid(61, 37, 1, 6, tile)
    resized = Image.fromarray(image).resize((cols * tile, rows * tile), Image.Resampling.BICUBIC)
    crops = [
        np.asarray(resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)))
        for r in range(rows)
        for c in range(cols)
    ]
    crops.append(np.asarray(Image.fromarray(image).resize((tile, tile), Image.Resampling.BICUBIC)))
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    expected = np.stack(
        [((c.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1) for c in crops]
    )
    assert pixels.shape == (rows * cols + 1, 3, tile, tile) and pixels.dtype == torch.float32
    np.testing.assert_allclose(pixels.numpy(), expected, rtol=0, atol=1e-6)


def test_tokens_per_tile():
    assert internvl_tokens_per_tile(448, 14, 0.5) == 256
    assert internvl_tokens_per_tile(56, 14, 0.5) == 4
    with pytest.raises(ModelError, match="whole number"):
        internvl_tokens_per_tile(448, 14, 0.3)


# --- Qwen2.5-VL --------------------------------------------------------------------------------


def test_qwen_pixel_budget_shapes():
    processor = qwen_image_processor(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    image = np.full((56, 84, 3), 128, dtype=np.uint8)
    pixels, grid = qwen_pixel_values(image, processor)
    assert grid.tolist() == [1, 4, 6]  # 56x84 is already a multiple of 28
    assert pixels.shape == (24, 3 * 2 * 14 * 14) and pixels.dtype == torch.float32
    big = np.zeros((560, 840, 3), dtype=np.uint8)  # 600 merged patches > 64: scaled down
    _, grid = qwen_pixel_values(big, processor)
    assert int(grid.prod()) // 4 <= 64 and grid[1] % 2 == 0 and grid[2] % 2 == 0
    with pytest.raises(ModelError, match="min_pixels"):
        qwen_image_processor(min_pixels=100, max_pixels=10)


def test_qwen_reads_three_pixel_high_images_as_channels_last():
    processor = qwen_image_processor(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    image = np.zeros((3, 40, 3), dtype=np.uint8)  # would pass for channels-first when guessed
    image[..., 0] = 255
    pixels, grid = qwen_pixel_values(image, processor)
    assert grid[1] < grid[2]  # wide, not tall
    red = pixels.view(-1, 3, 2, 14, 14)[:, :, 0].mean(dim=(0, 2, 3))
    assert red[0] > 1.5 and red[1] < -1.0 and red[2] < -1.0  # pure red after CLIP normalisation


# --- SAM2 --------------------------------------------------------------------------------------


def test_sam2_constants_are_bf16_rounded_imagenet_values():
    def bf16(values):
        return tuple(torch.tensor(values, dtype=torch.bfloat16).float().tolist())

    assert bf16(IMAGENET_MEAN) == SAM2_MEAN
    assert bf16(IMAGENET_STD) == SAM2_STD


def test_sam2_square_resize_ignores_aspect_and_normalises():
    image = np.zeros((30, 60, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 128, 0
    pixels, frame = sam2_pixel_values(image, 64, "square")
    assert pixels.shape == (3, 64, 64) and frame.content == (64, 64)
    for channel, value in enumerate((255, 128, 0)):
        expected = (value / 255.0 - SAM2_MEAN[channel]) / SAM2_STD[channel]
        assert torch.allclose(pixels[channel], torch.tensor(expected), atol=1e-6)


def test_sam2_letterbox_keeps_aspect_and_zero_pads():
    image = np.full((50, 100, 3), 255, dtype=np.uint8)
    pixels, frame = sam2_pixel_values(image, 64, "letterbox")
    assert frame == sam2_frame(50, 100, 64, "letterbox")
    assert frame.content == (32, 64)
    assert (pixels[:, 32:, :] == 0).all()
    assert torch.allclose(pixels[0, :32], torch.tensor((1.0 - SAM2_MEAN[0]) / SAM2_STD[0]))
    assert sam2_frame(100, 50, 64, "letterbox").content == (64, 32)
    with pytest.raises(ModelError, match="sam2_resize"):
        sam2_frame(1, 1, 64, "crop")


@pytest.mark.parametrize("mode", ["square", "letterbox"])
def test_masks_survive_the_trip_through_the_logit_frame(mode):
    height, width = 60, 100
    mask = torch.zeros((1, height, width))
    mask[:, 10:50, 20:70] = 1.0
    frame = sam2_frame(height, width, 128, mode)
    in_frame = masks_to_sam2_frame(mask, frame, 32)
    assert in_frame.shape == (1, 32, 32)
    if mode == "letterbox":
        assert in_frame[:, 20:, :].sum() == 0  # padding rows (content is 77 of 128 -> 19 of 32)
    logits = in_frame * 20.0 - 10.0
    back = sam2_logits_to_image(logits, frame, (height, width)) > 0
    iou = (back & mask.bool()).sum() / (back | mask.bool()).sum()
    assert back.shape == (1, height, width) and iou > 0.85


def test_square_frame_is_the_official_two_step_upsampling():
    import torch.nn.functional as F

    logits = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    frame = sam2_frame(30, 50, 64, "square")
    x = F.interpolate(logits.float()[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=(30, 50), mode="bilinear", align_corners=False)[:, 0]
    out = sam2_logits_to_image(logits, frame, (30, 50))
    assert out.dtype == torch.float32 and torch.equal(out, x)


def test_logits_to_image_handles_no_masks_and_checks_rank():
    frame = sam2_frame(10, 10, 64, "square")
    assert sam2_logits_to_image(torch.zeros((0, 16, 16)), frame, (10, 12)).shape == (0, 10, 12)
    with pytest.raises(ModelError, match=r"\[n, h, w\]"):
        sam2_logits_to_image(torch.zeros((16, 16)), frame, (10, 10))


# --- resizing on a device (predict's GPU path) ----------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "out_h", "out_w"),
    [(512, 512, 448, 448), (512, 512, 1024, 1024), (512, 700, 448, 896), (512, 700, 896, 448),
     (300, 200, 120, 90), (64, 64, 64, 64)],
)  # fmt: skip
def test_resize_like_pil_is_within_one_grey_level_of_pil(height, width, out_h, out_w):
    from vesselctl.model.tiling import _pil_resize, resize_like_pil

    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = _pil_resize(image, out_w, out_h).astype(int)
    got = resize_like_pil(torch.from_numpy(image).permute(2, 0, 1), out_w, out_h)
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - expected)
    assert got.dtype == torch.uint8 and got.shape == (3, out_h, out_w)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("mode", ["square", "letterbox"])
def test_tensor_tiles_and_sam2_input_match_the_numpy_path(mode):
    from vesselctl.model.tiling import internvl_tiles_tensor, sam2_pixels_tensor

    image = np.random.default_rng(1).integers(0, 256, (300, 700, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)
    tiles = internvl_tiles_tensor(pixels, 56, 1, 6, True)
    expected = torch.from_numpy(internvl_tiles(image, 56, 1, 6, True)).permute(0, 3, 1, 2)
    assert tiles.shape == expected.shape and tiles.shape[0] > 1  # a grid plus the thumbnail
    assert (tiles.int() - expected.int()).abs().max() <= 1
    sam2, frame = sam2_pixels_tensor(pixels, 128, mode)
    reference, ref_frame = sam2_pixel_values(image, 128, mode, defer_normalisation=True)
    assert frame == ref_frame and sam2.shape == reference.shape == (3, 128, 128)
    assert (sam2.int() - reference.int()).abs().max() <= 1
