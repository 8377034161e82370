"""Input discovery and ids: stable, unique, filesystem-safe."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vesselctl.data.images import encode_png
from vesselctl.data.sources import (
    detect_input_format,
    find_labelme_sources,
    find_mask_folder_sources,
    make_ids,
)
from vesselctl.errors import DatasetError


def test_ids_follow_the_relative_path_and_are_filesystem_safe():
    ids = make_ids(["a.json", "sub/dir/b c.json", "ünï/x?.json"])
    assert ids[:2] == ["a", "sub__dir__b_c"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in ids)


def test_colliding_ids_get_a_path_hash_and_stay_stable():
    ids = make_ids(["a b.json", "a_b.json", "A_B.json", "other.json"])
    assert len(set(ids)) == 4
    assert ids[3] == "other"
    assert all(i.startswith(("a_b-", "A_B-")) for i in ids[:3])
    assert make_ids(["a b.json", "a_b.json", "A_B.json", "other.json"]) == ids


def test_labelme_sources(tmp_path):
    for rel in ["P1_a.json", "nested/P2_b.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    items = find_labelme_sources(tmp_path)
    assert [(i.id, i.relative) for i in items] == [
        ("P1_a", "P1_a.json"),
        ("nested__P2_b", "nested/P2_b.json"),
    ]
    assert detect_input_format(tmp_path) == "labelme"


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(np.zeros((4, 4), np.uint8)))


def test_image_and_mask_folders_pair_by_stem(tmp_path):
    for stem in ["x1", "x2"]:
        _png(tmp_path / "images" / f"{stem}.png")
        _png(tmp_path / "masks" / f"{stem}.png")
    items = find_mask_folder_sources(tmp_path)
    assert [(i.id, i.image.name, i.annotation.name) for i in items] == [
        ("x1", "x1.png", "x1.png"),
        ("x2", "x2.png", "x2.png"),
    ]
    assert detect_input_format(tmp_path) == "mask_folder"
    _png(tmp_path / "images" / "x3.png")
    _png(tmp_path / "masks" / "x4.png")
    with pytest.raises(DatasetError, match=r"x3.png: no mask masks/x3.png.*x4.png: mask without"):
        find_mask_folder_sources(tmp_path)


def test_suffix_pairing_beside_the_image(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "a_mask.png")
    items = find_mask_folder_sources(tmp_path)
    assert [(i.id, i.annotation.name) for i in items] == [("a", "a_mask.png")]
    _png(tmp_path / "b.png")
    with pytest.raises(DatasetError, match=r"b.png: no mask b_mask.png"):
        find_mask_folder_sources(tmp_path)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match=r"no LabelMe JSON files and no images"):
        detect_input_format(tmp_path)
