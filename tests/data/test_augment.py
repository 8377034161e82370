"""Augmentations: the same geometry on image and masks, seeded per (epoch, index), inputs kept."""

from __future__ import annotations

import numpy as np

from vesselctl.data.augment import augment_rng, augment_sample
from vesselctl.settings.train import AugmentSettings


def _image_and_mask(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((size, size), dtype=bool)
    mask[10:22, 5:50] = True  # an off-centre bar: flips and rotations move it
    mask[30:60, 40:46] = True
    image = np.where(mask[..., None], 220, 30).astype(np.uint8).repeat(3, axis=2)
    return image, mask


def test_geometry_is_identical_on_image_and_mask() -> None:
    image, mask = _image_and_mask()
    settings = AugmentSettings(
        contrast=0, gamma=0, noise_std=0, rotate_deg=20, scale_range=(0.8, 1.2)
    )
    moved = 0
    for index in range(12):
        out, (out_mask,) = augment_sample(image, [mask], settings, augment_rng(0, 0, index))
        assert out.dtype == np.uint8 and out_mask.dtype == bool and out_mask.shape == mask.shape
        bright = out[..., 0] > 125
        # the warped mask covers the warped bright pixels (edges may differ by interpolation)
        agree = (bright == out_mask).mean()
        assert agree > 0.97, (index, agree)
        moved += int((out_mask != mask).any())
    assert moved >= 10  # it really changes the geometry


def test_same_key_same_result_other_key_other_result() -> None:
    image, mask = _image_and_mask()
    settings = AugmentSettings()
    a = augment_sample(image, [mask], settings, augment_rng(7, 2, 5))
    b = augment_sample(image, [mask], settings, augment_rng(7, 2, 5))
    c = augment_sample(image, [mask], settings, augment_rng(7, 3, 5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[0], c[0])


def test_inputs_not_modified_and_disabled_is_identity() -> None:
    image, mask = _image_and_mask()
    image_copy, mask_copy = image.copy(), mask.copy()
    augment_sample(image, [mask], AugmentSettings(), augment_rng(0, 0, 0))
    assert np.array_equal(image, image_copy) and np.array_equal(mask, mask_copy)
    out, (out_mask,) = augment_sample(
        image, [mask], AugmentSettings(enabled=False), augment_rng(0, 0, 0)
    )
    assert np.array_equal(out, image) and np.array_equal(out_mask, mask)


def test_photometric_changes_keep_the_range() -> None:
    image, mask = _image_and_mask()
    settings = AugmentSettings(
        hflip_p=0, vflip_p=0, rotate_deg=0, scale_range=(1, 1), noise_std=0.1
    )
    out, (out_mask,) = augment_sample(image, [mask], settings, augment_rng(1, 0, 0))
    assert np.array_equal(out_mask, mask)  # no geometry
    assert out.min() >= 0 and out.max() <= 255 and not np.array_equal(out, image)
