"""Tiny on-the-spot data for evaluate tests: vessel-like masks, mask folders, prepared datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def vessel_mask(rng: np.random.Generator, height: int = 48, width: int = 48) -> np.ndarray:
    """A bool mask of a few random thick line segments (a toy vessel tree)."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        start = rng.integers(0, [width, height])
        end = rng.integers(0, [width, height])
        cv2.line(
            mask,
            tuple(int(v) for v in start),
            tuple(int(v) for v in end),
            1,
            int(rng.integers(1, 4)),
        )
    return mask.astype(bool)


def save_mask(path: Path, mask: np.ndarray) -> Path:
    """Save a bool mask as a 0/255 PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def save_prob(path: Path, prob: np.ndarray) -> Path:
    """Save probabilities in [0, 1] as an 8-bit PNG (value = round(prob * 255))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(prob * 255).astype(np.uint8)).save(path)
    return path


def noisy_prob(rng: np.random.Generator, gt: np.ndarray, noise: float = 0.35) -> np.ndarray:
    """A probability map that mostly agrees with ``gt``."""
    base = np.where(gt, 0.8, 0.15)
    return np.clip(base + rng.normal(0, noise, gt.shape), 0, 1)


def write_prepared_dataset(root: Path, splits: dict[str, dict[str, np.ndarray]]) -> Path:
    """A prepared-dataset folder (manifest.jsonl, images/, masks/) holding the given masks."""
    records = []
    for split, masks in splits.items():
        for case_id, mask in masks.items():
            save_mask(root / "masks" / f"{case_id}.png", mask)
            image = np.repeat((mask * 180 + 40).astype(np.uint8)[..., None], 3, axis=2)
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / f"{case_id}.png")
            records.append(
                {
                    "id": case_id,
                    "split": split,
                    "image": f"images/{case_id}.png",
                    "mask": f"masks/{case_id}.png",
                    "phrase": "blood vessels",
                    "height": int(mask.shape[0]),
                    "width": int(mask.shape[1]),
                }
            )
    (root / "manifest.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    return root
