"""The synthetic vessel generator: deterministic, loopy, and consistent with its annotations."""

from __future__ import annotations

import json

import numpy as np

from vesselctl.data.images import read_image
from vesselctl.data.labelme import load_labelme, resolve_image_source
from vesselctl.data.masks import LabelRoles, mask_to_regions, rasterize_shapes
from vesselctl.data.synthetic import (
    draw_vessel_mask,
    make_sample,
    write_labelme_dataset,
    write_mask_folder_dataset,
)

ROLES = LabelRoles(frozenset({"vessel"}), frozenset({"hole"}))


def test_samples_are_deterministic_in_seed_and_index():
    a, b = make_sample(5, 2), make_sample(5, 2)
    assert (a.image == b.image).all() and (a.mask == b.mask).all() and a.shapes == b.shapes
    assert not (make_sample(6, 2).mask == a.mask).all()
    assert not (make_sample(5, 3).mask == a.mask).all()


def test_vessels_loop_and_are_dark_on_a_brighter_background():
    sample = make_sample(0, 0)
    assert any(r.holes for r in mask_to_regions(draw_vessel_mask(0, 0)))
    assert "hole" in {s["label"] for s in sample.shapes}
    assert 0.01 < sample.mask.mean() < 0.4
    assert sample.image[sample.mask].mean() + 30 < sample.image[~sample.mask].mean()


def test_labelme_folder_matches_the_masks_exactly(tmp_path):
    paths = write_labelme_dataset(tmp_path, 4, seed=3, sizes=(64, 100), embed_every=2)
    assert [p.name for p in paths] == [
        "P000_img0000.json",
        "P001_img0001.json",
        "P002_img0002.json",
        "P003_img0003.json",
    ]
    for index, path in enumerate(paths):
        size = (64, 100)[index % 2]
        document = load_labelme(path)
        assert (document.image_height, document.image_width) == (size, size)
        source, _ = resolve_image_source(document, [tmp_path])
        assert source.kind == ("embedded" if index % 2 == 1 else "file")
        expected = make_sample(3, index, size, size)
        mask = rasterize_shapes(document.shapes, ROLES, size, size)
        assert (mask == expected.mask).all()
        assert json.loads(path.read_text())["imagePath"] == f"{path.stem}.png"
    assert not (tmp_path / "P001_img0001.png").exists()


def test_image_and_mask_folder_form(tmp_path):
    pairs = write_mask_folder_dataset(tmp_path, 2, seed=1, sizes=(48,))
    for index, (image_path, mask_path) in enumerate(pairs):
        assert image_path.parent.name == "images" and mask_path.parent.name == "masks"
        mask = read_image(mask_path)
        assert set(np.unique(mask)) <= {0, 255}
        assert ((mask > 0) == make_sample(1, index, 48, 48).mask).all()
