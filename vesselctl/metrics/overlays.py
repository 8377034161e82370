"""Overlay images that show where a prediction is right and wrong.

Colours: true positives green, false positives red, false negatives blue, blended over the
source image (or black when there is none); pixels outside the field of view are dimmed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vesselctl.files import atomic_write_bytes

TP_COLOUR = (0, 200, 0)
FP_COLOUR = (230, 0, 0)
FN_COLOUR = (40, 90, 255)
LEGEND = {"tp": "green", "fp": "red", "fn": "blue"}


def overlay(
    pred: np.ndarray,
    gt: np.ndarray,
    image: np.ndarray | None = None,
    fov: np.ndarray | None = None,
    alpha: float = 0.65,
) -> np.ndarray:
    """An RGB uint8 picture of TP/FP/FN pixels over ``image`` (grey or RGB, same size)."""
    height, width = gt.shape
    if image is None:
        base = np.zeros((height, width, 3), np.float64)
    else:
        base = np.asarray(image, dtype=np.float64)
        if base.ndim == 2:
            base = np.repeat(base[..., None], 3, axis=2)
        base = base[..., :3]
        if base.shape[:2] != (height, width):
            raise ValueError(f"image {base.shape[:2]} and mask {gt.shape} differ in size")
        if base.max() > 255:
            base = base / base.max() * 255.0
    out = base.copy()
    for selected, colour in (
        (pred & gt, TP_COLOUR),
        (pred & ~gt, FP_COLOUR),
        (~pred & gt, FN_COLOUR),
    ):
        out[selected] = (1 - alpha) * base[selected] + alpha * np.asarray(colour, np.float64)
    if fov is not None:
        out[~fov] *= 0.35
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Encode an RGB array as PNG and write it atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
