"""Training augmentations that suit vessel images: flips, small rotations and zooms, contrast,
gamma and noise. Geometry is applied to the image and every mask with the same transform (masks
with nearest-neighbour sampling so they stay binary).

Every draw comes from a generator seeded by (seed, epoch, index): the same sample in the same
epoch gets the same augmentation in any process, worker or resumed run, which makes resume exact.
PIL does the affine warp (already a dependency, and it keeps OpenCV out of the training import
path).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vesselctl.settings.train import AugmentSettings


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample in one epoch."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


def _affine_coefficients(
    width: int, height: int, angle_deg: float, scale: float
) -> tuple[float, ...]:
    """PIL's AFFINE data: the inverse map (output pixel -> input pixel) of a rotation by
    ``angle_deg`` and zoom by ``scale`` about the image centre."""
    cx, cy = width / 2.0, height / 2.0
    theta = math.radians(angle_deg)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    # input = R^-1 (output - c) / scale + c
    a, b = cos, sin
    d, e = -sin, cos
    c = cx - a * cx - b * cy
    f = cy - d * cx - e * cy
    return (a, b, c, d, e, f)


def _warp(array: np.ndarray, coeffs: tuple[float, ...], resample: int) -> np.ndarray:
    height, width = array.shape[:2]
    image = Image.fromarray(array)
    warped = image.transform((width, height), Image.Transform.AFFINE, coeffs, resample=resample)
    return np.asarray(warped)


def augment_sample(
    image: np.ndarray,
    masks: list[np.ndarray],
    settings: AugmentSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return augmented copies of ``image`` (H x W x 3 uint8) and ``masks`` (H x W bool).

    The inputs are never modified. Draws happen in a fixed order whatever is enabled, so turning
    one augmentation off does not change the others' draws.
    """
    hflip = rng.random() < settings.hflip_p
    vflip = rng.random() < settings.vflip_p
    angle = rng.uniform(-settings.rotate_deg, settings.rotate_deg)
    scale = rng.uniform(*settings.scale_range)
    contrast = rng.uniform(1 - settings.contrast, 1 + settings.contrast)
    gamma = rng.uniform(1 - settings.gamma, 1 + settings.gamma)
    noise_std = rng.uniform(0, settings.noise_std) * 255.0
    noise_seed = int(rng.integers(0, 2**32))
    if not settings.enabled:
        return image.copy(), [m.copy() for m in masks]

    out = image
    out_masks = [m.astype(np.uint8) * 255 for m in masks]
    if hflip:
        out = out[:, ::-1]
        out_masks = [m[:, ::-1] for m in out_masks]
    if vflip:
        out = out[::-1]
        out_masks = [m[::-1] for m in out_masks]
    if abs(angle) > 1e-6 or abs(scale - 1.0) > 1e-6:
        height, width = out.shape[:2]
        coeffs = _affine_coefficients(width, height, angle, scale)
        out = _warp(np.ascontiguousarray(out), coeffs, Image.Resampling.BILINEAR)
        out_masks = [
            _warp(np.ascontiguousarray(m), coeffs, Image.Resampling.NEAREST) for m in out_masks
        ]

    pixels = out.astype(np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * contrast + mean
    pixels = np.clip(pixels, 0, 255)
    pixels = 255.0 * (pixels / 255.0) ** gamma
    if noise_std > 0:
        pixels = pixels + np.random.default_rng(noise_seed).normal(0, noise_std, pixels.shape)
    out = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return out, [np.ascontiguousarray(m > 127) for m in out_masks]
