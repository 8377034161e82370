"""Image side of the processor: RGB conversion, InternVL tiles, the Qwen2.5-VL pixel budget, and
SAM2's input (official square resize or an aspect-preserving letterbox), plus the geometry to
bring SAM2 mask logits back to the original image.

Resizing uses PIL's bicubic filter because the official pipeline resizes PIL images (InternVL
``dynamic_preprocess`` and Sa2VA's ``DirectResize`` both call ``Image.resize`` with its bicubic
default); matching it keeps released weights seeing the pixels they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vesselctl.errors import ModelError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: SAM2 in Sa2VA normalises with ImageNet mean/std held as bfloat16, even when the model runs in
#: float32 (sa2va.md); these are those bf16 values, exactly.
SAM2_MEAN = (0.484375, 0.455078125, 0.40625)
SAM2_STD = (0.228515625, 0.2236328125, 0.224609375)

INTERNVL_IMG_START = "<img>"
INTERNVL_IMG_END = "</img>"
INTERNVL_IMG_CONTEXT = "<IMG_CONTEXT>"
QWEN_VISION_START = "<|vision_start|>"
QWEN_VISION_END = "<|vision_end|>"
QWEN_IMAGE_PAD = "<|image_pad|>"

Sam2Resize = Literal["square", "letterbox"]
Uint16Scaling = Literal["full_range", "image_max"]


# --- any image -> H x W x 3 uint8 RGB -------------------------------------------------------


def to_rgb_uint8(image: np.ndarray, uint16_scaling: Uint16Scaling = "full_range") -> np.ndarray:
    """Convert grayscale, RGBA, 16-bit, bool or [0,1]-float images to H x W x 3 uint8 RGB.

    16-bit images: ``full_range`` (default) maps 0..65535 onto 0..255 by dividing by 257 and
    rounding, the same for every image, so train and predict see identical intensities and
    65535 -> 255 exactly. ``image_max`` stretches each image by its own maximum (useful for 10-
    or 12-bit data stored in 16 bits, which ``full_range`` leaves dark), at the price of
    per-image contrast. Alpha is dropped (not composited). Floats must lie in [0, 1].
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ModelError(
            f"image has shape {array.shape}; expected H x W (grayscale), H x W x 3 (RGB) "
            "or H x W x 4 (RGBA)"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ModelError(f"image has shape {array.shape}; it must be at least 1 x 1 pixel")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype == np.uint8:
        out = array
    elif array.dtype == np.bool_:
        out = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        if uint16_scaling == "full_range":
            out = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        elif uint16_scaling == "image_max":
            peak = int(array.max())
            scaled = array.astype(np.float64) * (255.0 / peak) if peak else array * 0.0
            out = np.rint(scaled).astype(np.uint8)
        else:
            raise ModelError(
                f"uint16_scaling is '{uint16_scaling}'; expected 'full_range' or 'image_max'"
            )
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ModelError(
                f"float image ({array.dtype}) has values outside [0, 1] or non-finite values "
                f"(min {np.nanmin(array):.4g}, max {np.nanmax(array):.4g}); scale it to [0, 1] "
                "or pass uint8"
            )
        out = np.rint(array * 255.0).astype(np.uint8)
    else:
        raise ModelError(
            f"image dtype {array.dtype} is not supported; expected uint8, uint16, bool or float"
        )
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def _pil_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of an H x W x 3 uint8 array with PIL (the official pipeline's filter)."""
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def resize_like_pil(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic resize of [..., 3, H, W] uint8 pixels on their device, as PIL does it.

    For the GPU (predict resizes there instead of in CPU workers). PIL resizes in two
    separable passes with a = -0.5 and antialiasing, rounding and clipping to uint8 after each
    pass, horizontal first unless the image widens and shortens; torch's antialiased bicubic
    uses the same kernel, so doing the same passes in the same order matches PIL within one
    grey level (on fewer than 1% of pixels even for pure noise: PIL's fixed-point weights).
    """
    import torch
    import torch.nn.functional as F

    height_in, width_in = pixels.shape[-2:]
    if (height_in, width_in) == (height, width):
        return pixels
    x = pixels.reshape(-1, *pixels.shape[-3:]).to(torch.float32)
    vertical_first = width > width_in and height < height_in
    sizes = (
        [(height, width_in), (height, width)]
        if vertical_first
        else [(height_in, width), (height, width)]
    )
    for size in sizes:
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            x = x.add_(0.5).floor_().clamp_(0, 255)  # PIL rounds halves up
    return x.to(torch.uint8).reshape(*pixels.shape[:-2], height, width)


def internvl_tiles_tensor(
    pixels: torch.Tensor,
    tile_size: int,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
) -> torch.Tensor:
    """``internvl_tiles`` for a [3, H, W] uint8 tensor on any device: [n, 3, tile, tile] uint8."""
    import torch

    height, width = pixels.shape[-2:]
    cols, rows = closest_grid(width, height, min_tiles, max_tiles, tile_size)
    resized = resize_like_pil(pixels, cols * tile_size, rows * tile_size)
    tiles = (
        resized.reshape(3, rows, tile_size, cols, tile_size)
        .permute(1, 3, 0, 2, 4)
        .reshape(rows * cols, 3, tile_size, tile_size)
    )
    if use_thumbnail and rows * cols != 1:
        thumbnail = resize_like_pil(pixels, tile_size, tile_size)
        tiles = torch.cat([tiles, thumbnail[None]], dim=0)
    return tiles


def sam2_pixels_tensor(
    pixels: torch.Tensor, size: int, mode: Sam2Resize = "square"
) -> tuple[torch.Tensor, Sam2Frame]:
    """``sam2_pixel_values(..., defer_normalisation=True)`` for a [3, H, W] uint8 tensor on any
    device: [3, S, S] uint8 (letterbox padding 0) and its placement."""
    import torch

    frame = sam2_frame(int(pixels.shape[-2]), int(pixels.shape[-1]), size, mode)
    content_h, content_w = frame.content
    resized = resize_like_pil(pixels, content_w, content_h)
    if frame.content == (size, size):
        return resized.contiguous(), frame
    canvas = torch.zeros((3, size, size), dtype=torch.uint8, device=pixels.device)
    canvas[:, :content_h, :content_w] = resized
    return canvas, frame


def channels_first_uint8(pixels: np.ndarray) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] uint8, for normalisation later on the device."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, -3)))


def normalise_tensor(pixels: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """[..., 3, H, W] uint8 -> float32 /255 then (x - mean) / std, on the tensor's device.

    The same float32 operations in the same order as ``_normalise``, so the values are equal.
    """
    import torch

    shape = (3, 1, 1)
    tensor = pixels.to(torch.float32).div_(255.0)
    tensor = tensor.sub_(torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(shape))
    return tensor.div_(torch.tensor(std, dtype=torch.float32, device=pixels.device).view(shape))


def _normalise(pixels: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float32: /255 then (x - mean) / std."""
    import torch

    # Channels first while still uint8 (a cheap copy), then float32 ops on contiguous memory;
    # the arithmetic (/255, -mean, /std in float32) is torchvision's ToTensor + Normalize.
    channels_first = np.moveaxis(pixels, -1, -3).astype(np.float32)
    tensor = torch.from_numpy(channels_first).div_(255.0)
    shape = (3, 1, 1)
    tensor = tensor.sub_(torch.tensor(mean, dtype=torch.float32).view(shape))
    return tensor.div_(torch.tensor(std, dtype=torch.float32).view(shape))


# --- InternVL dynamic tiling ------------------------------------------------------------------


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (columns, rows) grids with min_tiles <= columns*rows <= max_tiles, fewest tiles first.

    Built as a set and sorted by tile count like InternVL's ``dynamic_preprocess`` so grids
    with the same count keep InternVL's order (CPython's set order for small int tuples is
    fixed), which decides ties exactly as the official code does.
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ModelError(
            f"tiles: min_tiles {min_tiles} and max_tiles {max_tiles} must satisfy "
            "1 <= min_tiles <= max_tiles"
        )
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def closest_grid(
    width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int
) -> tuple[int, int]:
    """The (columns, rows) grid whose aspect ratio is closest to width/height.

    On a tie the later (larger) grid wins only when the image has more than half the pixels
    of that grid, as in InternVL, so small images are not blown up into many tiles.
    """
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def internvl_tiles(
    image: np.ndarray,
    tile_size: int,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
) -> np.ndarray:
    """Cut an RGB uint8 image into InternVL tiles: [n, tile, tile, 3] uint8, row-major.

    The image is resized to the closest grid, cut into tiles, and (when more than one tile)
    followed by a thumbnail of the whole image.
    """
    height, width = image.shape[:2]
    cols, rows = closest_grid(width, height, min_tiles, max_tiles, tile_size)
    resized = _pil_resize(image, cols * tile_size, rows * tile_size)
    tiles = (
        resized.reshape(rows, tile_size, cols, tile_size, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * cols, tile_size, tile_size, 3)
    )
    if use_thumbnail and rows * cols != 1:
        thumbnail = _pil_resize(image, tile_size, tile_size)
        tiles = np.concatenate([tiles, thumbnail[None]], axis=0)
    return tiles


def internvl_pixel_values(
    image: np.ndarray,
    tile_size: int,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    defer_normalisation: bool = False,
) -> torch.Tensor:
    """InternVL input of one image: [n_tiles, 3, tile, tile] float32, ImageNet-normalised
    (uint8 and not yet normalised with ``defer_normalisation``)."""
    tiles = internvl_tiles(image, tile_size, min_tiles, max_tiles, use_thumbnail)
    if defer_normalisation:
        return channels_first_uint8(tiles)
    return _normalise(tiles, IMAGENET_MEAN, IMAGENET_STD)


def internvl_tokens_per_tile(tile_size: int, patch_size: int, downsample_ratio: float) -> int:
    """``<IMG_CONTEXT>`` tokens per tile: (tile/patch)^2 * downsample^2 (256 at 448/14/0.5)."""
    side = tile_size // patch_size
    tokens = (side * downsample_ratio) ** 2
    if tile_size % patch_size or tokens != int(tokens) or tokens < 1:
        raise ModelError(
            f"tile size {tile_size}, patch size {patch_size} and downsample ratio "
            f"{downsample_ratio} do not give a whole number of image tokens per tile"
        )
    return int(tokens)


# --- Qwen2.5-VL pixel budget ------------------------------------------------------------------


def qwen_image_processor(
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> Any:
    """transformers' Qwen2-VL image processor, PIL ("slow") backend, pinned.

    sa2va.md: the fast (torchvision) and slow processors differ by up to 0.028 in pixel values,
    so one is pinned; the PIL one is what released Sa2VA-Qwen checkpoints were trained with. The
    size is passed as a fresh dict because transformers 5.17 would otherwise write min/max
    pixels into the class-level default shared by every instance.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    if not 0 < min_pixels <= max_pixels:
        raise ModelError(
            f"Qwen pixel budget: min_pixels {min_pixels} and max_pixels {max_pixels} must "
            "satisfy 0 < min_pixels <= max_pixels"
        )
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)},
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )


def qwen_pixel_values(image: np.ndarray, processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL input of one image: pixel_values [patches, 3*t*p*p] and grid_thw [3]."""
    import torch

    # Channels-last stated explicitly: transformers guesses, and guesses wrong for images whose
    # height is 1 or 3 pixels.
    out = processor(images=[image], return_tensors="np", input_data_format="channels_last")
    pixel_values = torch.from_numpy(np.ascontiguousarray(out["pixel_values"])).to(torch.float32)
    grid = torch.as_tensor(out["image_grid_thw"][0], dtype=torch.long)
    return pixel_values, grid


# --- SAM2 input and mask geometry -------------------------------------------------------------


@dataclass(frozen=True)
class Sam2Frame:
    """Where the image sits in SAM2's S x S input: top-left ``content`` (height, width) region.

    ``square`` resizes to S x S (content = (S, S)); ``letterbox`` keeps the aspect ratio and
    pads bottom/right with zeros after normalisation (the mean colour).
    """

    size: int
    content: tuple[int, int]


def sam2_frame(height: int, width: int, size: int, mode: Sam2Resize) -> Sam2Frame:
    """The SAM2 placement of a height x width image."""
    if mode == "square":
        return Sam2Frame(size, (size, size))
    if mode == "letterbox":
        scale = size / max(height, width)
        content = (
            min(size, max(1, int(height * scale + 0.5))),
            min(size, max(1, int(width * scale + 0.5))),
        )
        return Sam2Frame(size, content)
    raise ModelError(f"sam2_resize is '{mode}'; expected 'square' or 'letterbox'")


def sam2_pixel_values(
    image: np.ndarray, size: int, mode: Sam2Resize = "square", defer_normalisation: bool = False
) -> tuple[torch.Tensor, Sam2Frame]:
    """SAM2 input of one RGB uint8 image: [3, S, S] float32 and its placement.

    ``square`` is Sa2VA's official input (resize to S x S ignoring the aspect ratio);
    normalisation is /255 then the bf16-rounded ImageNet mean/std, as the official code does.
    With ``defer_normalisation`` the result is uint8 (letterbox padding 0) and
    ``Sa2VABatch.to`` normalises it on the device and zeroes the padding again.
    """
    import torch

    frame = sam2_frame(image.shape[0], image.shape[1], size, mode)
    content_h, content_w = frame.content
    resized = _pil_resize(image, content_w, content_h)
    if defer_normalisation:
        canvas = torch.zeros((3, size, size), dtype=torch.uint8)
        canvas[:, :content_h, :content_w] = channels_first_uint8(resized)
        return canvas, frame
    normalised = _normalise(resized, SAM2_MEAN, SAM2_STD)
    if frame.content == (size, size):
        return normalised, frame
    canvas = torch.zeros((3, size, size), dtype=torch.float32)
    canvas[:, :content_h, :content_w] = normalised
    return canvas, frame


def sam2_logits_to_image(
    logits: torch.Tensor, frame: Sam2Frame, original_size: tuple[int, int]
) -> torch.Tensor:
    """Mask logits [n, h, w] (SAM2's 256 x 256) -> float32 [n, H, W] at the original size.

    Bilinear (align_corners=False) up to S x S, the letterbox padding cropped away, then
    bilinear to the original size: the official path for ``square``. Apply the sigmoid after.
    """
    import torch
    import torch.nn.functional as F

    if logits.ndim != 3:
        raise ModelError(f"mask logits have shape {tuple(logits.shape)}; expected [n, h, w]")
    if logits.shape[0] == 0:
        return logits.new_zeros((0, *original_size), dtype=torch.float32)
    x = logits[:, None].float()
    x = F.interpolate(x, size=(frame.size, frame.size), mode="bilinear", align_corners=False)
    x = x[:, :, : frame.content[0], : frame.content[1]]
    if tuple(x.shape[-2:]) != tuple(original_size):
        x = F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)
    return x[:, 0]


def masks_to_sam2_frame(masks: torch.Tensor, frame: Sam2Frame, out_size: int) -> torch.Tensor:
    """Ground-truth masks [n, H, W] -> [n, out, out] in the frame of SAM2's logits (nearest).

    For ``square`` this is the official nearest resize to the prediction size; for
    ``letterbox`` the mask is resized into the content region and the padding is 0.
    """
    import torch
    import torch.nn.functional as F

    if masks.ndim != 3:
        raise ModelError(f"masks have shape {tuple(masks.shape)}; expected [n, H, W]")
    n = masks.shape[0]
    if frame.content == (frame.size, frame.size):
        return F.interpolate(masks[:, None].float(), size=(out_size, out_size), mode="nearest")[
            :, 0
        ].to(masks.dtype)
    content_h = max(1, round(frame.content[0] * out_size / frame.size))
    content_w = max(1, round(frame.content[1] * out_size / frame.size))
    inner = F.interpolate(masks[:, None].float(), size=(content_h, content_w), mode="nearest")
    out = torch.zeros((n, out_size, out_size), dtype=masks.dtype, device=masks.device)
    out[:, :content_h, :content_w] = inner[:, 0].to(masks.dtype)
    return out
