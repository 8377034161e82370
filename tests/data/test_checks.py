"""Validate's checks: each fires on one planted defect and stays silent on clean data.

The builders here make tiny clean datasets on the spot (LabelMe folder, prepared dataset,
image+mask folder); tests/stages and tests/cli import them too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vesselctl.data.checks import (
    CHECKS,
    HashedImage,
    Problem,
    check_labelme_file,
    check_mask_pair,
    check_mask_values,
    check_prepared_record,
    check_shapes_geometry,
    find_duplicates,
)
from vesselctl.data.labelme import LabelmeShape
from vesselctl.data.manifest import read_manifest
from vesselctl.data.masks import LabelRoles, RasterOptions
from vesselctl.files import sha256_bytes

SIZE = 32
ROLES = LabelRoles(frozenset({"vessel"}), frozenset({"hole"}), frozenset({"note"}))
TINY = 20
# A band 24 px long and 6 px high with a 2x2 hole: 140 vessel pixels, well above TINY.
VESSEL = [[4, 10], [28, 10], [28, 16], [4, 16]]
HOLE = [[10, 12], [12, 12], [12, 14], [10, 14]]


def noise_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A gray image no other seed repeats (so clean datasets hold no duplicates)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    assert ok
    return buffer.tobytes()


def shape(points: list, label: str = "vessel", shape_type: str = "polygon") -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
    }


def clean_shapes() -> list[dict]:
    return [
        shape(VESSEL),
        shape(HOLE, "hole"),
        shape([[2, 24], [20, 24]], shape_type="line"),
        shape([[26, 26]], "note", "point"),
    ]


def make_labelme_dataset(root: Path, count: int = 3, first_seed: int = 0) -> list[str]:
    """``count`` clean LabelMe files img{i}.json + img{i}.png; returns their relative names."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        (root / f"img{i}.png").write_bytes(png_bytes(noise_image(first_seed + i)))
        document = {
            "version": "5.5.0",
            "flags": {},
            "shapes": clean_shapes(),
            "imagePath": f"img{i}.png",
            "imageData": None,
            "imageHeight": SIZE,
            "imageWidth": SIZE,
        }
        (root / f"img{i}.json").write_text(json.dumps(document))
        names.append(f"img{i}.json")
    return names


def make_prepared_dataset(root: Path, splits: tuple[str, ...] = ("train", "train", "test")) -> None:
    """A prepared dataset as prepare writes it: 0/255 masks, sha256 of each file, manifest."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    records = []
    for i, split in enumerate(splits):
        image = png_bytes(noise_image(100 + i))
        mask_array = np.zeros((SIZE, SIZE), np.uint8)
        mask_array[8 + i : 20, 4:28] = 255
        mask = png_bytes(mask_array)
        (root / f"images/p{i}.png").write_bytes(image)
        (root / f"masks/p{i}.png").write_bytes(mask)
        records.append(
            {
                "id": f"p{i}",
                "split": split,
                "image": f"images/p{i}.png",
                "mask": f"masks/p{i}.png",
                "phrase": "blood vessels",
                "height": SIZE,
                "width": SIZE,
                "sha256_image": sha256_bytes(image),
                "sha256_mask": sha256_bytes(mask),
                "shape_counts": {"polygon": 2},
                "label_counts": {"vessel": 1, "hole": 1},
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def make_mask_folder(root: Path, count: int = 2) -> None:
    """Images under images/, 0/255 masks of the same stem under masks/."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        (root / f"images/m{i}.png").write_bytes(png_bytes(noise_image(200 + i)))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[5:25, 10:16] = 255
        (root / f"masks/m{i}.png").write_bytes(png_bytes(mask))


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def check_ids(problems: list[Problem]) -> set[str]:
    return {p.check for p in problems}


def labelme_problems(root: Path, name: str = "img0.json", **kwargs) -> list[Problem]:
    return check_labelme_file(root, name, ROLES, RasterOptions(), TINY, **kwargs).problems


# ---------------------------------------------------------------------------------------------
# LabelMe files


def test_clean_labelme_files_have_no_problems(tmp_path: Path) -> None:
    names = make_labelme_dataset(tmp_path)
    for name in names:
        found = check_labelme_file(tmp_path, name, ROLES, RasterOptions(), TINY)
        assert found.problems == []
        assert found.image is not None and found.image.shape == (SIZE, SIZE)
        assert found.mask is not None and found.mask.sum() > TINY
    assert found.shapes_by_type == {"polygon": 2, "line": 1, "point": 1}
    assert found.shapes_by_label == {"vessel": 2, "hole": 1, "note": 1}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_shapes(shapes: list[dict]) -> Callable[[Path], None]:
    return lambda root: edit_json(
        root / "img0.json", lambda d: d.__setitem__("shapes", [*clean_shapes(), *shapes])
    )


LABELME_DEFECTS: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "truncated json": (lambda r: _truncate(r / "img0.json"), {"json_unreadable"}),
    "shapes not a list": (
        lambda r: edit_json(r / "img0.json", lambda d: d.__setitem__("shapes", {})),
        {"json_schema"},
    ),
    "label not text": (_set_shapes([shape(VESSEL, label=7)]), {"json_schema"}),
    "odd group_id": (
        lambda r: edit_json(r / "img0.json", lambda d: d["shapes"][0].__setitem__("group_id", "a")),
        {"labelme_warning"},
    ),
    "missing image": (lambda r: (r / "img0.png").unlink(), {"image_missing"}),
    "imagePath outside": (
        lambda r: edit_json(r / "img0.json", lambda d: d.__setitem__("imagePath", "../x.png")),
        {"image_outside", "image_missing"},
    ),
    "truncated image": (lambda r: _truncate(r / "img0.png"), {"image_unreadable"}),
    "declared size differs": (
        lambda r: edit_json(r / "img0.json", lambda d: d.__setitem__("imageHeight", 64)),
        {"size_mismatch"},
    ),
    "unknown label": (_set_shapes([shape(VESSEL, label="artery")]), {"unknown_label"}),
    "unknown shape type": (
        _set_shapes([shape(VESSEL, shape_type="ellipse")]),
        {"unknown_shape_type"},
    ),
    "polygon with 2 points": (_set_shapes([shape([[1, 1], [5, 5]])]), {"point_count"}),
    "collinear polygon": (_set_shapes([shape([[1, 1], [5, 5], [9, 9]])]), {"zero_area"}),
    "flat rectangle": (
        _set_shapes([shape([[1, 1], [9, 1]], shape_type="rectangle")]),
        {"zero_area"},
    ),
    "self-overlapping polygon": (
        # The ring winds twice around x 2..5, y 0..5: the even-odd fill leaves it empty.
        _set_shapes(
            [shape([[0, 0], [10, 0], [10, 10], [2, 10], [2, -5], [5, -5], [5, 5], [0, 5]])]
        ),
        {"self_intersection", "out_of_bounds"},
    ),
    "point outside": (
        _set_shapes([shape([[20, 20], [40, 20], [30, 28]])]),
        {"out_of_bounds"},
    ),
    "no vessel shapes": (
        lambda r: edit_json(r / "img0.json", lambda d: d.__setitem__("shapes", [])),
        {"empty_mask"},
    ),
    "only a hole": (
        lambda r: edit_json(
            r / "img0.json", lambda d: d.__setitem__("shapes", [shape(HOLE, "hole")])
        ),
        {"empty_mask"},
    ),
    "tiny vessel": (
        lambda r: edit_json(
            r / "img0.json",
            lambda d: d.__setitem__("shapes", [shape([[2, 2], [5, 5]], shape_type="rectangle")]),
        ),
        {"tiny_mask"},
    ),
}


@pytest.mark.parametrize("defect", list(LABELME_DEFECTS))
def test_labelme_check_fires_on_planted_defect(tmp_path: Path, defect: str) -> None:
    make_labelme_dataset(tmp_path)
    plant, expected = LABELME_DEFECTS[defect]
    plant(tmp_path)
    problems = labelme_problems(tmp_path)
    assert check_ids(problems) == expected, [p.message for p in problems]
    for problem in problems:
        assert problem.file == "img0.json"
        assert problem.found and problem.expected and problem.fix
        assert problem.message.startswith("img0.json: ")
    # The other files of the dataset are untouched and stay clean.
    assert labelme_problems(tmp_path, "img1.json") == []


def test_shape_problems_name_the_shape_index(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    _set_shapes([shape([[1, 1], [5, 5]])])(tmp_path)
    (problem,) = labelme_problems(tmp_path)
    assert problem.shape == 4
    assert "shapes[4]" in problem.message and "2 points" in problem.message


def test_out_of_bounds_says_how_many_and_how_far(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    _set_shapes([shape([[20, 20], [40, 20], [30, 28]])])(tmp_path)
    (problem,) = labelme_problems(tmp_path)
    assert "1 of 3 points outside the 32x32 image, up to 8.0 px away" in problem.found
    assert labelme_problems(tmp_path, bounds_tolerance=8.0) == []


def test_size_mismatch_states_both_sizes(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    edit_json(tmp_path / "img0.json", lambda d: d.update(imageHeight=800, imageWidth=800))
    problems = labelme_problems(tmp_path)
    assert check_ids(problems) == {"size_mismatch"}
    assert "800x800" in problems[0].found and "32x32" in problems[0].found


def test_image_resized_after_annotation_is_one_error_not_one_per_shape(tmp_path: Path) -> None:
    """Shapes drawn on a 64x64 image, then the image shrunk to 32x32 by hand."""
    make_labelme_dataset(tmp_path)

    def drawn_at_64(document: dict) -> None:
        document.update(imageHeight=64, imageWidth=64)
        for item in document["shapes"]:
            item["points"] = [[2 * x, 2 * y] for x, y in item["points"]]

    edit_json(tmp_path / "img0.json", drawn_at_64)
    problems = labelme_problems(tmp_path)
    assert check_ids(problems) == {"size_mismatch"}


def test_embedded_image_data_is_checked(tmp_path: Path) -> None:
    import base64

    make_labelme_dataset(tmp_path)
    data = base64.b64encode((tmp_path / "img0.png").read_bytes()[:200]).decode()
    (tmp_path / "img0.png").unlink()
    edit_json(tmp_path / "img0.json", lambda d: d.__setitem__("imageData", data))
    assert check_ids(labelme_problems(tmp_path)) == {"image_unreadable"}


def test_twist_is_silent_unless_asked(tmp_path: Path) -> None:
    """A bow-tie fills as drawn under the even-odd rule; report_twists reports it anyway."""
    make_labelme_dataset(tmp_path)
    _set_shapes([shape([[2, 2], [12, 12], [12, 2], [2, 12]])])(tmp_path)
    assert labelme_problems(tmp_path) == []
    problems = labelme_problems(tmp_path, report_twists=True)
    assert check_ids(problems) == {"self_intersection"}
    assert "near (7, 7)" in problems[0].found


def test_small_pockets_are_below_the_reporting_threshold(tmp_path: Path) -> None:
    """A 2x2 square walked twice leaves 4 pixels empty: reported only from 4 pixels down."""
    make_labelme_dataset(tmp_path)
    square = [[20, 2], [22, 2], [22, 4], [20, 4]]
    _set_shapes([shape(square + square)])(tmp_path)
    assert labelme_problems(tmp_path, min_pocket_pixels=5) == []
    (problem,) = labelme_problems(tmp_path, min_pocket_pixels=4)
    assert problem.check == "self_intersection" and "leaving 4 pixels" in problem.found


def test_geometry_check_on_shapes_directly() -> None:
    shapes = [
        LabelmeShape(0, "vessel", "circle", ((5.0, 5.0), (5.0, 5.0))),
        LabelmeShape(1, "vessel", "polygon", ((0.0, 0.0), (4.0, 0.0), (4.0, 4.0))),
        LabelmeShape(2, "vessel", "line", ((1.0, 1.0), (1.0, 1.0))),  # a dot: has a width
    ]
    problems = check_shapes_geometry("f.json", shapes, (8, 8))
    assert [(p.check, p.shape) for p in problems] == [("zero_area", 0)]
    assert check_shapes_geometry("f.json", [], (8, 8)) == []


# ---------------------------------------------------------------------------------------------
# Prepared datasets and image+mask folders


def test_clean_prepared_dataset_has_no_problems(tmp_path: Path) -> None:
    make_prepared_dataset(tmp_path)
    for record in read_manifest(tmp_path):
        found = check_prepared_record(tmp_path, record, TINY)
        assert found.problems == []
        assert found.mask is not None and set(np.unique(found.mask)) == {0, 255}


def _rewrite_mask(root: Path, array: np.ndarray) -> None:
    (root / "masks/p0.png").write_bytes(png_bytes(array))


def _one_zero_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:20, 4:28] = 1
    return mask


def _edit_manifest(root: Path, change: Callable[[dict], None]) -> None:
    lines = (root / "manifest.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    change(first)
    lines[0] = json.dumps(first)
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def _same_pixels_new_bytes(root: Path) -> None:
    image = cv2.imread(str(root / "images/p0.png"), cv2.IMREAD_UNCHANGED)
    _, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (root / "images/p0.png").write_bytes(buffer.tobytes())


PREPARED_DEFECTS: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "missing image": (lambda r: (r / "images/p0.png").unlink(), {"image_missing"}),
    "truncated image": (
        lambda r: (r / "images/p0.png").write_bytes((r / "images/p0.png").read_bytes()[:100]),
        {"image_unreadable", "checksum_mismatch"},
    ),
    "image edited after prepare": (_same_pixels_new_bytes, {"checksum_mismatch"}),
    "manifest size wrong": (
        lambda r: _edit_manifest(r, lambda d: d.__setitem__("height", 64)),
        {"size_mismatch"},
    ),
    "missing mask": (lambda r: (r / "masks/p0.png").unlink(), {"mask_missing"}),
    "no mask in record": (
        lambda r: _edit_manifest(r, lambda d: d.__setitem__("mask", None)),
        {"mask_missing"},
    ),
    "truncated mask": (
        lambda r: (r / "masks/p0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20),
        {"mask_unreadable", "checksum_mismatch"},
    ),
}


def _no_checksums(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Plant a mask defect and drop the mask checksum, so only the mask check itself fires."""

    def plant(root: Path) -> None:
        change(root)
        _edit_manifest(root, lambda d: d.pop("sha256_mask"))

    return plant


PREPARED_DEFECTS.update(
    {
        "mask 0/1": (
            lambda r: _no_checksums(lambda q: _rewrite_mask(q, _one_zero_mask()))(r),
            {"mask_not_binary"},
        ),
        "mask anti-aliased": (
            _no_checksums(
                lambda r: _rewrite_mask(r, cv2.GaussianBlur(_one_zero_mask() * 255, (3, 3), 0))
            ),
            {"mask_not_binary"},
        ),
        "mask in colour": (
            _no_checksums(lambda r: _rewrite_mask(r, np.dstack([_one_zero_mask() * 255] * 3))),
            {"mask_not_binary"},
        ),
        "mask resized": (
            _no_checksums(lambda r: _rewrite_mask(r, np.full((16, 16), 255, np.uint8))),
            {"mask_size_mismatch"},
        ),
        "empty mask": (
            _no_checksums(lambda r: _rewrite_mask(r, np.zeros((SIZE, SIZE), np.uint8))),
            {"empty_mask"},
        ),
        "tiny mask": (
            _no_checksums(
                lambda r: _rewrite_mask(
                    r, np.pad(np.full((2, 2), 255, np.uint8), ((0, SIZE - 2), (0, SIZE - 2)))
                )
            ),
            {"tiny_mask"},
        ),
    }
)


@pytest.mark.parametrize("defect", list(PREPARED_DEFECTS))
def test_prepared_check_fires_on_planted_defect(tmp_path: Path, defect: str) -> None:
    make_prepared_dataset(tmp_path)
    plant, expected = PREPARED_DEFECTS[defect]
    plant(tmp_path)
    first, *others = read_manifest(tmp_path)
    problems = check_prepared_record(tmp_path, first, TINY).problems
    assert check_ids(problems) == expected, [p.message for p in problems]
    assert all(p.found and p.expected and p.fix for p in problems)
    for record in others:
        assert check_prepared_record(tmp_path, record, TINY).problems == []


def test_zero_one_mask_fix_names_the_trap(tmp_path: Path) -> None:
    (problem,) = check_mask_values("m.png", _one_zero_mask())
    assert "0/1" in problem.fix and "{0, 1}" in problem.found


def test_mask_folder_accepts_any_binary_pair_and_flags_grey(tmp_path: Path) -> None:
    make_mask_folder(tmp_path)
    pair = ("images/m0.png", "masks/m0.png")
    assert check_mask_pair(tmp_path, *pair, TINY).problems == []
    (tmp_path / "masks/m0.png").write_bytes(png_bytes(_one_zero_mask()))  # 0/1 is fine here
    assert check_mask_pair(tmp_path, *pair, TINY).problems == []
    grey = cv2.GaussianBlur(_one_zero_mask() * 255, (3, 3), 0)
    (tmp_path / "masks/m0.png").write_bytes(png_bytes(grey))
    assert check_ids(check_mask_pair(tmp_path, *pair, TINY).problems) == {"mask_not_binary"}
    (tmp_path / "masks/m0.png").unlink()
    assert check_ids(check_mask_pair(tmp_path, *pair, TINY).problems) == {"mask_missing"}


# ---------------------------------------------------------------------------------------------
# Duplicates and the registry


def test_duplicates_within_and_across_splits() -> None:
    images = [
        HashedImage("a.png", "train", "h1"),
        HashedImage("b.png", "train", "h1"),
        HashedImage("c.png", "train", "h2"),
        HashedImage("d.png", "test", "h2"),
        HashedImage("e.png", "val", "h3"),
    ]
    problems = find_duplicates(images)
    assert {(p.file, p.check) for p in problems} == {
        ("a.png", "duplicate_image"),
        ("b.png", "duplicate_image"),
        ("c.png", "split_leakage"),
        ("d.png", "split_leakage"),
    }
    assert find_duplicates(images[2:3] + images[4:]) == []


def test_near_duplicates_skip_exact_copies_and_distinct_images() -> None:
    from vesselctl.data.checks import Thumbnail, find_near_duplicates, thumbnail

    base = noise_image(1, 64)
    copies = {
        "a": base,
        "b": cv2.GaussianBlur(base, (3, 3), 0),  # re-saved with a little smoothing
        "c": base.copy(),  # an exact copy: find_duplicates reports it
        "d": noise_image(2, 64),  # a different image
    }
    items = [Thumbnail(k, None, str(hash(v.tobytes())), thumbnail(v)) for k, v in copies.items()]
    problems = find_near_duplicates(items, 0.9)
    assert [p.file for p in problems] == ["a", "b", "c"]
    # a and c are the same pixels: each is near only to b, and b to both.
    assert problems[0].found.startswith("the image looks like b 0.9")
    assert problems[2].found.startswith("the image looks like b 0.9")
    assert "a 0.9" in problems[1].found and "c 0.9" in problems[1].found
    assert thumbnail(np.full((8, 8), 7, np.uint8)) is None


def test_group_in_two_splits_is_leakage() -> None:
    from vesselctl.data.checks import find_group_leakage

    records = [("a.png", "train", "P1"), ("b.png", "test", "P1"), ("c.png", "train", "P2")]
    problems = find_group_leakage(records)
    assert [(p.file, p.check) for p in problems] == [
        ("a.png", "split_leakage"),
        ("b.png", "split_leakage"),
    ]
    assert "group 'P1' also has images in test" in problems[0].found
    assert find_group_leakage(records[:1] + records[2:]) == []


def test_every_check_has_a_severity_and_problems_reject_unknown_ids() -> None:
    assert {c.severity for c in CHECKS.values()} == {"error", "warning"}
    with pytest.raises(ValueError, match="unknown check id"):
        Problem("f", "no_such_check", "x", "y", "z")


def test_inputs_are_not_modified(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path / "in")
    before = {p: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    labelme_problems(tmp_path / "in")
    assert {p: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
    shutil.rmtree(tmp_path / "in")


@settings(max_examples=40, deadline=None)
@given(
    radii=st.lists(st.floats(2.0, 14.0), min_size=3, max_size=12),
    centre=st.tuples(st.floats(14.0, 18.0), st.floats(14.0, 18.0)),
)
def test_pockets_are_exactly_the_doubly_wound_pixels(radii: list[float], centre: tuple) -> None:
    """A star-shaped (simple) ring leaves no pocket; the same ring walked twice leaves every
    pixel it encloses empty under the even-odd rule, which the rasteriser confirms."""
    from vesselctl.data.checks import _pocket_pixels_rings
    from vesselctl.data.masks import fill_rings

    def _pocket_pixels(ring: np.ndarray, image_size: tuple[int, int]) -> int:
        starts, counts = np.zeros(1, dtype=np.int64), np.array([len(ring)], dtype=np.int64)
        return int(_pocket_pixels_rings(ring, starts, counts, image_size)[0])

    angles = np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    ring = np.stack(
        [centre[0] + np.cos(angles) * radii, centre[1] + np.sin(angles) * radii], axis=1
    )
    assert _pocket_pixels(ring, (SIZE, SIZE)) == 0
    enclosed = int(fill_rings([ring], SIZE, SIZE).sum())
    assert _pocket_pixels(np.concatenate([ring, ring]), (SIZE, SIZE)) == enclosed
    assert not fill_rings([np.concatenate([ring, ring])], SIZE, SIZE).any()
    # Many rings at once give each ring's own count.
    both = np.concatenate([ring, ring, ring])
    n = len(ring)
    counts = _pocket_pixels_rings(both, np.array([0, n]), np.array([n, 2 * n]), (SIZE, SIZE))
    assert counts.tolist() == [0, enclosed]
