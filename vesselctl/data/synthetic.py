"""Synthetic angiogram-like vessel images with exact masks, as LabelMe or image+mask folders.

Public vessel datasets (DRIVE and friends) may not be redistributed, so tests, benchmarks and the
quickstart use these: dark, branching, tapering vessel trees that cross each other, plus closed
loops, on a noisy, vignetted background. The mask is exactly what was drawn, so conversions can
be checked against it. Everything is deterministic in ``seed`` (and the sample index).

LabelMe form: one JSON per image, file names ``P<patient>_img<index>.json`` (so a group pattern
``^(P\\d+)_`` keeps patients together); vessel outlines are ``vessel`` polygons and the gaps
inside loops ``hole`` polygons, in paint order (see ``vesselctl.data.masks``). Some images are
800x800, some 512x512; some carry the image embedded in ``imageData`` instead of a file.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import orjson

from vesselctl.data.images import encode_png
from vesselctl.data.labelme import LabelmeShape
from vesselctl.data.masks import LabelRoles, mask_to_regions, rasterize_shapes
from vesselctl.data.samples import write_file_unsynced

VESSEL_LABEL = "vessel"
HOLE_LABEL = "hole"
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class SyntheticSample:
    """A generated image (uint8 gray, H x W), its exact mask (bool) and its LabelMe shapes."""

    image: np.ndarray
    mask: np.ndarray
    shapes: list[dict]


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _grow_tree(
    mask: np.ndarray,
    rng: np.random.Generator,
    start: np.ndarray,
    angle: float,
    width: float,
    unit: float,
    depth: int = 0,
) -> None:
    """A tapering random walk that spawns thinner branches; stops when thin or off the image.

    The walk is computed with numpy in one go (cumulative sums of the turning angles) and drawn
    as polylines grouped by integer thickness, so a tree costs a few cv2 calls, not hundreds.
    """
    height, width_px = mask.shape
    steps = 400
    step = 3.0 * unit
    turns = rng.normal(0.0, 0.10, size=steps)
    branch_draw = rng.random(steps)
    angles = angle + np.cumsum(turns)
    path = np.empty((steps + 1, 2))
    path[0] = start
    path[1:, 0] = start[0] + step * np.cumsum(np.cos(angles))
    path[1:, 1] = start[1] + step * np.cumsum(np.sin(angles))
    branching = (branch_draw < 0.035) if depth < 3 else np.zeros(steps, dtype=bool)
    # Width tapers 0.7 % per step and drops 10 % after each branch point.
    factors = np.where(branching, 0.993 * 0.9, 0.993)
    widths = width * np.concatenate([[1.0], np.cumprod(factors)[:-1]])
    margin = 20 * unit
    outside = (
        (path[1:, 0] < -margin)
        | (path[1:, 0] > width_px + margin)
        | (path[1:, 1] < -margin)
        | (path[1:, 1] > height + margin)
    )
    stop = widths < 1.2 * unit
    ends = np.flatnonzero(stop | outside)
    count = int(ends[0]) + (0 if stop[ends[0]] else 1) if ends.size else steps
    if count == 0:
        return
    thickness = np.maximum(1, np.rint(widths[:count])).astype(np.int64)
    fixed = np.rint(path[: count + 1] * _ONE).astype(np.int32)
    # Consecutive segments of equal thickness form one polyline.
    breaks = np.flatnonzero(np.diff(thickness)) + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, count], strict=True):
        cv2.polylines(mask, [fixed[lo : hi + 1]], False, 1, int(thickness[lo]), cv2.LINE_8, _SHIFT)
    for k in np.flatnonzero(branching[:count]):
        side = 1.0 if rng.random() < 0.5 else -1.0
        _grow_tree(
            mask,
            rng,
            path[k + 1],
            float(angles[k]) + side * rng.uniform(0.45, 1.0),
            float(widths[k]) * rng.uniform(0.55, 0.8),
            unit,
            depth + 1,
        )


def _draw_loop(mask: np.ndarray, rng: np.random.Generator, unit: float) -> None:
    """A closed, wobbly vessel ring: the kind of loop that needs a hole shape in LabelMe."""
    height, width = mask.shape
    centre = np.array([rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height])
    radius = rng.uniform(18, 55) * unit
    squash = rng.uniform(0.6, 1.0)
    angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    wobble = 1.0 + 0.15 * np.sin(angles * rng.integers(2, 4) + rng.uniform(0, 6.28))
    xs = centre[0] + radius * wobble * np.cos(angles)
    ys = centre[1] + radius * squash * wobble * np.sin(angles)
    points = np.round(np.stack([xs, ys], axis=1) * _ONE).astype(np.int32)
    thickness = max(2, round(rng.uniform(2.5, 5.0) * unit))
    cv2.polylines(mask, [points], True, 1, thickness=thickness, lineType=cv2.LINE_8, shift=_SHIFT)


def draw_vessel_mask(seed: int, index: int = 0, height: int = 512, width: int = 512) -> np.ndarray:
    """A boolean mask of crossing, tapering vessel trees plus closed loops (deterministic)."""
    rng = _sample_rng(seed, index)
    unit = min(height, width) / 512.0
    mask = np.zeros((height, width), dtype=np.uint8)
    # Two or three trees entering from the borders cross each other; loops add closed rings.
    for _ in range(int(rng.integers(2, 4))):
        side = int(rng.integers(0, 4))
        along = rng.uniform(0.2, 0.8)
        start, angle = {
            0: (np.array([along * width, 0.0]), math.pi / 2),
            1: (np.array([width - 1.0, along * height]), math.pi),
            2: (np.array([along * width, height - 1.0]), -math.pi / 2),
            3: (np.array([0.0, along * height]), 0.0),
        }[side]
        _grow_tree(mask, rng, start, angle + rng.normal(0, 0.3), rng.uniform(6, 10) * unit, unit)
    for _ in range(int(rng.integers(1, 3))):
        _draw_loop(mask, rng, unit)
    return mask.astype(bool)


@functools.lru_cache(maxsize=8)
def _vignette(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    return 1.0 - 0.35 * np.clip(r2, 0, 2)


def render_angiogram(mask: np.ndarray, seed: int, index: int = 0) -> np.ndarray:
    """A uint8 gray angiogram-like image whose dark vessels are exactly ``mask``."""
    height, width = mask.shape
    rng = _sample_rng(seed, index + 1_000_003)
    unit = min(height, width) / 512.0
    # Background: vignette x smooth illumination; vessels darken it with a soft profile; noise.
    illumination = cv2.resize(
        rng.uniform(0.85, 1.15, size=(4, 4)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    background = np.float32(rng.uniform(150, 200)) * _vignette(height, width) * illumination
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8 * max(unit, 0.5))
    contrast = np.float32(rng.uniform(0.45, 0.65))
    image = background * (1.0 - contrast * soft)
    image += rng.standard_normal(size=(height, width), dtype=np.float32) * np.float32(6.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_sample(
    seed: int,
    index: int = 0,
    height: int = 512,
    width: int = 512,
    polygon_tolerance: float = 0.5,
) -> SyntheticSample:
    """One synthetic sample: LabelMe shapes, the mask they rasterise to, and the image.

    The drawn vessels are outlined with ``polygon_tolerance`` pixels of simplification (like a
    careful annotator, and light enough to parse fast); the mask is then *defined* as those
    shapes rasterised by vesselctl, and the image is rendered from that mask, so image, mask
    and annotation agree exactly.
    """
    drawn = draw_vessel_mask(seed, index, height, width)
    shapes = mask_to_labelme_shapes(drawn, tolerance=polygon_tolerance)
    parsed = [
        LabelmeShape(i, s["label"], "polygon", (), xy=np.asarray(s["points"], dtype=np.float64))
        for i, s in enumerate(shapes)
    ]
    roles = LabelRoles(frozenset({VESSEL_LABEL}), frozenset({HOLE_LABEL}))
    mask = rasterize_shapes(parsed, roles, height, width)
    return SyntheticSample(image=render_angiogram(mask, seed, index), mask=mask, shapes=shapes)


def mask_to_labelme_shapes(
    mask: np.ndarray,
    vessel_label: str = VESSEL_LABEL,
    hole_label: str = HOLE_LABEL,
    tolerance: float = 0.0,
) -> list[dict]:
    """LabelMe polygon shapes (vessel outlines, then holes, by nesting depth) for a binary mask.

    With ``tolerance`` 0, painted in order they reproduce the mask exactly under vesselctl's
    rasteriser; a positive tolerance (pixels) simplifies the outlines.
    """
    regions = mask_to_regions(mask, tolerance)
    shapes: list[dict] = []

    def polygon(label: str, ring: np.ndarray) -> dict:
        return {
            "label": label,
            "points": np.round(ring, 2).tolist(),
            "group_id": None,
            "description": "",
            "shape_type": "polygon",
            "flags": {},
            "mask": None,
        }

    for depth in sorted({r.depth for r in regions}):
        level = [r for r in regions if r.depth == depth]
        shapes.extend(polygon(vessel_label, r.outer) for r in level if len(r.outer) >= 3)
        shapes.extend(
            polygon(hole_label, hole) for r in level for hole in r.holes if len(hole) >= 3
        )
    return shapes


def labelme_document(
    shapes: list[dict], image_name: str, height: int, width: int, image_png: bytes | None
) -> dict:
    """A LabelMe 5.x JSON document; ``image_png`` set embeds the image in ``imageData``."""
    return {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_name,
        "imageData": base64.b64encode(image_png).decode("ascii") if image_png else None,
        "imageHeight": height,
        "imageWidth": width,
    }


def sample_name(index: int, patients: int) -> str:
    """File stem of sample ``index``: ``P<patient>_img<index>`` with patients assigned in turn."""
    return f"P{index % max(1, patients):03d}_img{index:04d}"


def write_labelme_dataset(
    out_dir: Path,
    count: int,
    seed: int = 0,
    sizes: Sequence[int] = (512, 800),
    embed_every: int = 5,
    patients: int = 10,
    start_index: int = 0,
) -> list[Path]:
    """Write ``count`` LabelMe JSON files (+ PNG images) into ``out_dir``; returns the JSON paths.

    Sample ``i`` is ``sizes[i % len(sizes)]`` pixels square; every ``embed_every``-th sample
    (0 = never) embeds its image in ``imageData`` and writes no image file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start_index, start_index + count):
        size = int(sizes[index % len(sizes)])
        sample = make_sample(seed, index, size, size)
        stem = sample_name(index, patients)
        png = encode_png(sample.image)
        embed = embed_every > 0 and index % embed_every == embed_every - 1
        if not embed:
            write_file_unsynced(out_dir / f"{stem}.png", png)
        document = labelme_document(
            sample.shapes, f"{stem}.png", size, size, png if embed else None
        )
        json_path = out_dir / f"{stem}.json"
        write_file_unsynced(json_path, orjson.dumps(document))
        paths.append(json_path)
    return paths


def write_mask_folder_dataset(
    out_dir: Path,
    count: int,
    seed: int = 0,
    sizes: Sequence[int] = (512,),
    patients: int = 10,
) -> list[tuple[Path, Path]]:
    """Write ``images/<stem>.png`` and ``masks/<stem>.png`` (0/255) pairs; returns the pairs."""
    out_dir = Path(out_dir)
    pairs = []
    for index in range(count):
        size = int(sizes[index % len(sizes)])
        sample = make_sample(seed, index, size, size)
        stem = sample_name(index, patients)
        image_path = out_dir / "images" / f"{stem}.png"
        mask_path = out_dir / "masks" / f"{stem}.png"
        write_file_unsynced(image_path, encode_png(sample.image))
        write_file_unsynced(mask_path, encode_png(sample.mask.astype(np.uint8) * 255, kind="mask"))
        pairs.append((image_path, mask_path))
    return pairs
