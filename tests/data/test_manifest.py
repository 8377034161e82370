"""manifest.jsonl reading: good records, split filtering, and clear errors on bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vesselctl.data.manifest import is_prepared_dataset, read_manifest
from vesselctl.errors import DatasetError


def _record(i: int, split: str) -> dict:
    return {
        "id": f"img{i}",
        "split": split,
        "image": f"images/img{i}.png",
        "mask": f"masks/img{i}.png",
        "phrase": "blood vessels",
        "height": 8,
        "width": 8,
        "scale_x": 1.0,
    }


def test_read_and_filter(tmp_path: Path) -> None:
    lines = [_record(0, "train"), _record(1, "test"), _record(2, "test")]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert is_prepared_dataset(tmp_path)
    assert [r.id for r in read_manifest(tmp_path, "test")] == ["img1", "img2"]
    rec = read_manifest(tmp_path)[0]
    assert rec.extra == {"scale_x": 1.0} and rec.to_json() == lines[0]
    assert rec.mask_path(tmp_path) == tmp_path / "masks/img0.png"


def test_missing_manifest_says_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="vesselctl prepare"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("phrase"), "lacks phrase"),
        (lambda r: r.update(split="holdout"), "split 'holdout'"),
    ],
)
def test_bad_records(tmp_path: Path, mutate, message: str) -> None:
    rec = _record(0, "train")
    mutate(rec)
    (tmp_path / "manifest.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(DatasetError, match=message):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("5", r"manifest.jsonl:1: a JSON int, not a record"),
        ('["img0", "train"]', r"manifest.jsonl:1: a JSON list, not a record"),
        (json.dumps({**_record(0, "train"), "height": None}), r":1: height None is not"),
        (json.dumps({**_record(0, "train"), "width": "wide"}), r":1: width 'wide' is not"),
        (json.dumps({**_record(0, "train"), "id": ["img0"]}), r":1: id \['img0'\] is not"),
        (json.dumps({**_record(0, "train"), "image": 3}), r":1: image 3 is not"),
        (json.dumps({**_record(0, "train"), "mask": {}}), r":1: mask \{\} is not"),
    ],
)
def test_records_of_wrong_type_are_clear_errors(tmp_path: Path, line: str, message: str) -> None:
    """A hand-edited manifest gives a DatasetError naming the line, not a Python traceback."""
    (tmp_path / "manifest.jsonl").write_text(line + "\n")
    with pytest.raises(DatasetError, match=message):
        read_manifest(tmp_path)


def test_duplicate_ids(tmp_path: Path) -> None:
    text = json.dumps(_record(0, "train")) + "\n"
    (tmp_path / "manifest.jsonl").write_text(text + text)
    with pytest.raises(DatasetError, match="appears twice"):
        read_manifest(tmp_path)
