"""Finding the inputs of prepare and naming them with stable, filesystem-safe, unique ids.

Two input forms:

* LabelMe: every ``*.json`` under the folder, recursively (hidden folders skipped).
* Image + mask folder: ``images/<stem>.<ext>`` paired with ``masks/<stem>.png``; or, without
  those sub-folders, ``<stem>.<ext>`` paired with ``<stem>_mask.png`` beside it. Masks are
  binary PNGs (0/255 or 0/1; any single non-zero value is vessel).

An id is the source path relative to the input folder, without extension, with ``/`` turned
into ``__`` and every character outside ``A-Z a-z 0-9 . _ -`` turned into ``_``. When that
loses information (two sources give the same id, also ignoring case for case-insensitive file
systems) the colliding ids get ``-`` and 8 hex digits of the path's SHA-256 appended, so the
same file keeps the same id on every run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vesselctl.data.labelme import find_labelme_files, labelme_files_with_relatives
from vesselctl.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_ID = 150


@dataclass(frozen=True)
class SourceItem:
    """One input sample: a LabelMe JSON, or an image with its mask."""

    id: str
    kind: str  # "labelme" or "mask_folder"
    relative: str  # display name: path relative to the input folder (POSIX separators)
    annotation: Path  # the JSON (labelme) or the mask PNG (mask_folder)
    image: Path | None = None  # mask_folder only


def _raw_id(relative: str) -> str:
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    parts = [_UNSAFE.sub("_", part) for part in stem.split("/")]
    text = "__".join(parts).strip(".") or "item"
    return text[:_MAX_ID]


def make_ids(relatives: Sequence[str]) -> list[str]:
    """Stable, unique, filesystem-safe ids for relative source paths (see module docstring)."""
    raw = [_raw_id(r) for r in relatives]
    folded = Counter(r.lower() for r in raw)
    ids = []
    for relative, candidate in zip(relatives, raw, strict=True):
        if folded[candidate.lower()] > 1:
            candidate = f"{candidate}-{hashlib.sha256(relative.encode()).hexdigest()[:8]}"
        ids.append(candidate)
    return ids


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def find_labelme_sources(root: Path) -> list[SourceItem]:
    """Every LabelMe JSON under ``root`` as a SourceItem (sorted by relative path)."""
    root = Path(root)
    found = labelme_files_with_relatives(root)
    relatives = [relative for relative, _ in found]
    files = [path for _, path in found]
    return [
        SourceItem(item_id, "labelme", rel, path)
        for item_id, rel, path in zip(make_ids(relatives), relatives, files, strict=True)
    ]


def _images_in(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / f
            for f in sorted(filenames)
            if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
        )
    return sorted(found)


def find_mask_folder_sources(
    root: Path, images_dir: str = "images", masks_dir: str = "masks", mask_suffix: str = "_mask"
) -> list[SourceItem]:
    """Image/mask pairs under ``root``; an image without a mask (or a mask alone) is an error."""
    root = Path(root)
    pairs: list[tuple[str, Path, Path]] = []
    id_bases: list[str] = []  # ids come from the path inside images/ (no "images__" prefix)
    problems: list[str] = []
    if (root / images_dir).is_dir() and (root / masks_dir).is_dir():
        image_root, mask_root = root / images_dir, root / masks_dir
        masks = {
            _relative(p, mask_root).rsplit(".", 1)[0]: p
            for p in _images_in(mask_root)
            if p.suffix.lower() == ".png"
        }
        used = set()
        for image in _images_in(image_root):
            key = _relative(image, image_root).rsplit(".", 1)[0]
            mask = masks.get(key)
            if mask is None:
                problems.append(
                    f"{_relative(image, root)}: no mask {masks_dir}/{key}.png; "
                    "add the mask or remove the image"
                )
                continue
            used.add(key)
            pairs.append((_relative(image, root), image, mask))
            id_bases.append(_relative(image, image_root))
        problems.extend(
            f"{_relative(masks[key], root)}: mask without an image in {images_dir}/; "
            "add the image or remove the mask"
            for key in sorted(set(masks) - used)
        )
    else:
        for image in _images_in(root):
            if image.stem.endswith(mask_suffix):
                continue
            mask = image.with_name(f"{image.stem}{mask_suffix}.png")
            if not mask.is_file():
                problems.append(
                    f"{_relative(image, root)}: no mask {mask.name} beside it; "
                    f"name masks <stem>{mask_suffix}.png or use {images_dir}/ + {masks_dir}/"
                )
                continue
            pairs.append((_relative(image, root), image, mask))
            id_bases.append(_relative(image, root))
    if problems:
        raise DatasetError(
            f"{root}: {len(problems)} image/mask pairing problem(s): " + "; ".join(problems[:20])
        )
    if not pairs:
        raise DatasetError(
            f"{root}: no image/mask pairs found; expected {images_dir}/ + {masks_dir}/ with the "
            f"same stems, or <stem>.png beside <stem>{mask_suffix}.png"
        )
    return [
        SourceItem(item_id, "mask_folder", rel, mask, image)
        for item_id, (rel, image, mask) in zip(make_ids(id_bases), pairs, strict=True)
    ]


def detect_input_format(root: Path, images_dir: str = "images", masks_dir: str = "masks") -> str:
    """``labelme`` when the folder holds any JSON, else ``mask_folder``."""
    root = Path(root)
    if find_labelme_files(root):
        return "labelme"
    require_images(root, images_dir, masks_dir)
    return "mask_folder"


def require_images(root: Path, images_dir: str = "images", masks_dir: str = "masks") -> None:
    """DatasetError unless ``root`` has images/ + masks/ sub-folders or any image file."""
    root = Path(root)
    if (root / images_dir).is_dir() and (root / masks_dir).is_dir():
        return
    if _images_in(root):
        return
    raise DatasetError(
        f"{root}: found no LabelMe JSON files and no images; point prepare at the folder that "
        "holds the annotations"
    )
