"""A tiny prepared dataset made on the spot: dark noisy images with bright thick 'vessels'.

Easy on purpose (vessel = bright), so a tiny random-weight model learns it in a few dozen steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _vessel_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.5:
            centre = rng.uniform(0.25, 0.75) * size
            slope = rng.uniform(-0.4, 0.4)
            mask |= np.abs(yy - (centre + slope * (xx - size / 2))) < size * 0.09
        else:
            centre = rng.uniform(0.25, 0.75) * size
            slope = rng.uniform(-0.4, 0.4)
            mask |= np.abs(xx - (centre + slope * (yy - size / 2))) < size * 0.09
    base = rng.normal(40, 8, (size, size))
    base[mask] = rng.normal(215, 8, int(mask.sum()))
    gray = np.clip(base, 0, 255).astype(np.uint8)
    image = np.stack([gray, (gray * 0.6).astype(np.uint8), (gray * 0.5).astype(np.uint8)], -1)
    return image, mask


def make_prepared_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 48) -> Path:
    """Write images/, masks/, manifest.jsonl and splits.json under ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    records = []
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        sample_id = f"img_{i:03d}"
        image, mask = _vessel_image(rng, size)
        Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{sample_id}.png")
        records.append(
            {
                "id": sample_id,
                "split": split,
                "image": f"images/{sample_id}.png",
                "mask": f"masks/{sample_id}.png",
                "phrase": "blood vessels",
                "height": size,
                "width": size,
            }
        )
        splits[split].append(sample_id)
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    (root / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
    return root
