"""LabelMe parsing (strict and lenient) and safe resolution of imagePath / imageData."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from vesselctl.data.images import encode_png
from vesselctl.data.labelme import (
    find_labelme_files,
    load_labelme,
    parse_labelme,
    resolve_image_source,
)
from vesselctl.errors import DatasetError


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def document(shapes, image_path="img.png", image_data=None, height=4, width=4) -> dict:
    return {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": height,
        "imageWidth": width,
    }


def polygon(points, label="vessel", **extra) -> dict:
    return {"label": label, "points": points, "shape_type": "polygon", "group_id": None, **extra}


def test_parses_shapes_with_their_index_and_fields(tmp_path):
    path = write_json(
        tmp_path / "a.json",
        document(
            [
                polygon([[0, 0], [3, 0], [0, 3]], group_id=2, description="loop"),
                {"label": "hole", "points": [[1, 1], [2, 2]], "shape_type": "rectangle"},
            ]
        ),
    )
    doc = load_labelme(path)
    assert [s.index for s in doc.shapes] == [0, 1]
    assert doc.shapes[0].group_id == 2 and doc.shapes[0].description == "loop"
    assert doc.shapes[1].shape_type == "rectangle"
    assert doc.shapes[0].array().shape == (3, 2)
    assert doc.labels() == ["vessel", "hole"]
    assert (doc.image_height, doc.image_width) == (4, 4)


def test_lenient_mode_collects_every_problem(tmp_path):
    path = write_json(
        tmp_path / "bad.json",
        document(
            [
                polygon([[0, 0], [1, 1]]),  # 2 points
                polygon([[0, 0], [1, "x"], [2, 2]]),  # not numbers
                {"label": "", "points": [[0, 0], [1, 0], [0, 1]], "shape_type": "polygon"},
                {"label": "v", "points": [[0, 0]], "shape_type": "hexagon"},
                polygon([[0, 0], [2, 0], [0, 2]]),  # fine
            ],
            image_path=None,
        ),
    )
    doc, problems = parse_labelme(path, "labelme/bad.json")
    assert doc is not None and [s.index for s in doc.shapes] == [4]
    codes = {(p.shape_index, p.code) for p in problems}
    assert (0, "point_count") in codes
    assert (1, "bad_points") in codes
    assert (2, "bad_label") in codes
    assert (3, "unknown_shape_type") in codes
    assert (None, "no_image") in codes
    message = next(p for p in problems if p.code == "point_count").message()
    assert message.startswith("labelme/bad.json: shape 0 points: a polygon with 2 points")
    assert "at least 3" in message
    with pytest.raises(DatasetError, match=r"shape 0.*shape 1"):
        load_labelme(path, "labelme/bad.json")


def test_truncated_json_is_reported_with_position(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"shapes": [{"label": "vessel", "points": [[1, 2]')
    doc, problems = parse_labelme(path)
    assert doc is None
    assert problems[0].code == "bad_json" and "line 1" in problems[0].found


def test_non_labelme_json_is_rejected(tmp_path):
    path = write_json(tmp_path / "other.json", [1, 2, 3])
    doc, problems = parse_labelme(path)
    assert doc is None and problems[0].code == "not_labelme"


def _png(value: int = 7) -> bytes:
    return encode_png(np.full((4, 4), value, np.uint8))


def test_image_path_relative_to_json_with_windows_separators(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png())
    path = write_json(tmp_path / "ann" / "a.json", document([], image_path="..\\imgs\\a.png"))
    source, problems = resolve_image_source(load_labelme(path), [tmp_path])
    assert problems == []
    assert source.kind == "file" and source.path == (tmp_path / "imgs" / "a.png").resolve()


def test_missing_file_falls_back_to_same_name_beside_json_then_image_data(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(1))
    path = write_json(tmp_path / "a.json", document([], image_path="C:\\old\\place\\a.png"))
    source, problems = resolve_image_source(load_labelme(path), [tmp_path])
    assert source.path == (tmp_path / "a.png").resolve()
    assert [p.code for p in problems] == ["absolute_image_path"]

    embedded = base64.b64encode(_png(9)).decode()
    path = write_json(tmp_path / "b.json", document([], image_path="gone.png", image_data=embedded))
    source, problems = resolve_image_source(load_labelme(path), [tmp_path])
    assert source.kind == "embedded" and source.read_bytes() == _png(9)


def test_hostile_image_path_is_refused_and_never_read(tmp_path):
    root = tmp_path / "dataset"
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png())
    path = write_json(root / "x.json", document([], image_path="../secret.png"))
    source, problems = resolve_image_source(load_labelme(path), [root])
    assert source is None
    assert {"image_path_escapes", "missing_image"} <= {p.code for p in problems}
    # A symlink inside the root that points outside is refused as well.
    (root / "link.png").symlink_to(secret)
    path = write_json(root / "y.json", document([], image_path="link.png"))
    source, problems = resolve_image_source(load_labelme(path), [root])
    assert source is None and "image_path_escapes" in {p.code for p in problems}


def test_missing_image_without_data_is_an_error_with_a_fix(tmp_path):
    path = write_json(tmp_path / "a.json", document([], image_path="nope.png"))
    source, problems = resolve_image_source(load_labelme(path), [tmp_path], "a.json")
    assert source is None
    assert "copy the image next to the JSON" in problems[-1].message()


def test_find_labelme_files_is_recursive_sorted_and_skips_hidden(tmp_path):
    for rel in ["b.json", "sub/a.json", ".hidden/c.json", "sub/.d.json", "x.png"]:
        write_json(tmp_path / rel, {})
    found = [p.relative_to(tmp_path).as_posix() for p in find_labelme_files(tmp_path)]
    assert found == ["b.json", "sub/a.json"]
