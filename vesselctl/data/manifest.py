"""The prepared-dataset contract: ``manifest.jsonl`` records that every later stage reads.

A prepared dataset folder holds ``images/<id>.png``, ``masks/<id>.png`` (single channel, 0/255),
``manifest.jsonl`` (one record per image) and ``splits.json``. Train, predict and evaluate read it
only through ``read_manifest`` so the format has one owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vesselctl.errors import DatasetError

MANIFEST_NAME = "manifest.jsonl"
SPLITS = ("train", "val", "test")
_REQUIRED = ("id", "split", "image", "mask", "phrase", "height", "width")


@dataclass(frozen=True)
class ManifestRecord:
    """One prepared image: paths are relative to the dataset folder; sizes are of the output."""

    id: str
    split: str
    image: str
    mask: str | None
    phrase: str
    height: int
    width: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def image_path(self, root: Path) -> Path:
        return Path(root) / self.image

    def mask_path(self, root: Path) -> Path | None:
        return Path(root) / self.mask if self.mask else None

    def to_json(self) -> dict[str, Any]:
        """The record as written to manifest.jsonl (required keys first, then extras)."""
        base = {k: getattr(self, k) for k in _REQUIRED}
        return {**base, **self.extra}


def is_prepared_dataset(path: Path) -> bool:
    """True when ``path`` is a folder holding a manifest.jsonl."""
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(dataset_dir: Path, split: str | None = None) -> list[ManifestRecord]:
    """Read and check ``manifest.jsonl``; optionally keep one split. Raises DatasetError."""
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(
            f"{dataset_dir}: not a prepared dataset (no {MANIFEST_NAME}); "
            "run `vesselctl prepare LABELME_DIR OUT_DIR` first"
        )
    if split is not None and split not in SPLITS:
        raise DatasetError(f"split '{split}' is unknown; expected one of {', '.join(SPLITS)}")
    records: list[ManifestRecord] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}:{line_no}: not valid JSON ({exc.msg}); re-run `vesselctl prepare`"
                ) from exc
            if not isinstance(data, dict):
                raise DatasetError(
                    f"{path}:{line_no}: a JSON {type(data).__name__}, not a record (a JSON "
                    "object per line); re-run `vesselctl prepare`"
                )
            missing = [k for k in _REQUIRED if k not in data]
            if missing:
                raise DatasetError(
                    f"{path}:{line_no}: record lacks {', '.join(missing)}; "
                    "re-run `vesselctl prepare`"
                )
            if data["split"] not in SPLITS:
                raise DatasetError(
                    f"{path}:{line_no}: split '{data['split']}' is not one of {', '.join(SPLITS)}"
                )
            _check_types(data, path, line_no)
            if data["id"] in seen:
                raise DatasetError(f"{path}:{line_no}: id '{data['id']}' appears twice")
            seen.add(data["id"])
            extra = {k: v for k, v in data.items() if k not in _REQUIRED}
            record = ManifestRecord(
                **{k: data[k] for k in _REQUIRED if k not in ("height", "width")},
                height=int(data["height"]),
                width=int(data["width"]),
                extra=extra,
            )
            if split is None or record.split == split:
                records.append(record)
    return records


def _check_types(data: dict[str, Any], path: Path, line_no: int) -> None:
    """DatasetError unless id, paths and phrase are text and the sizes whole numbers."""
    problems = [
        f"{key} {data[key]!r} is not text"
        for key in ("id", "image", "mask", "phrase")
        if not isinstance(data[key], str) and not (key == "mask" and data[key] is None)
    ]
    for key in ("height", "width"):
        value = data[key]
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            problems.append(f"{key} {value!r} is not a whole number of pixels")
    if problems:
        raise DatasetError(f"{path}:{line_no}: {'; '.join(problems)}; re-run `vesselctl prepare`")
