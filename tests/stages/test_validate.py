"""The validate stage: kinds of input, cross-file checks, outputs, strictness, parallel runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.data.test_checks import (
    SIZE,
    clean_shapes,
    edit_json,
    make_labelme_dataset,
    make_mask_folder,
    make_prepared_dataset,
    shape,
)
from vesselctl.errors import ConfigError, DatasetError
from vesselctl.settings.base import load_settings
from vesselctl.settings.validate import ValidateSettings
from vesselctl.stages import validate as stage


def settings_for(path: Path, workers: int = 1, **values) -> ValidateSettings:
    """Settings with the label map of the test data ('note' shapes are ignored)."""
    return ValidateSettings(path=path, workers=workers, labels={"ignore": ["note"]}, **values)


def test_clean_labelme_folder_passes_and_writes_nothing_by_default(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path / "in")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = stage.run(settings_for(tmp_path / "in"))
    assert result.kind == "labelme" and result.files == 3
    assert result.problems == [] and not result.failed
    assert result.out_dir is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    stats = result.stats
    assert stats["images"] == 3 and stats["masks"] == 3 and stats["empty_masks"] == 0
    assert stats["shapes_by_type"] == {"line": 3, "point": 3, "polygon": 6}
    assert stats["image_sizes"] == {f"{SIZE}x{SIZE}": 3}
    assert stats["vessel_width_px"]["skeleton_samples"] > 0


def test_report_lists_every_problem_with_stats_and_settings(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path / "in", count=4)
    edit_json(tmp_path / "in/img1.json", lambda d: d["shapes"].append(shape([[1, 1], [2, 2]])))
    edit_json(tmp_path / "in/img2.json", lambda d: d["shapes"].append(shape([[1, 1]] * 3)))
    (tmp_path / "in/img3.json").write_text("{")
    result = stage.run(settings_for(tmp_path / "in", out=tmp_path / "report"))
    assert result.failed and result.errors == 2 and result.warnings == 1
    report = json.loads((tmp_path / "report/validation.json").read_text())
    assert report["summary"]["passed"] is False
    assert report["summary"]["by_check"] == {
        "json_unreadable": 1,
        "point_count": 1,
        "zero_area": 1,
    }
    assert [(p["file"], p["check"], p["severity"]) for p in report["problems"]] == [
        ("img1.json", "point_count", "error"),
        ("img2.json", "zero_area", "warning"),
        ("img3.json", "json_unreadable", "error"),
    ]
    assert report["problems"][0]["shape"] == 4
    assert report["checks"]["split_leakage"]["severity"] == "error"
    assert report["stats"]["images"] == 3 and report["stats"]["files_checked"] == 4
    assert report["settings"]["path"] == str(tmp_path / "in")
    for name in ("result.json", "settings.yaml", "run_info.json"):
        assert (tmp_path / "report" / name).is_file()
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_images_no_annotation_uses_are_reported(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path, count=2)
    shutil.copy(tmp_path / "img0.png", tmp_path / "forgotten.png")
    (tmp_path / "img1.json").unlink()
    result = stage.run(settings_for(tmp_path))
    assert {(p.file, p.check) for p in result.problems} == {
        ("forgotten.png", "unannotated_image"),
        ("img1.png", "unannotated_image"),
    }


def test_strict_fails_on_warnings_only(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    edit_json(tmp_path / "img0.json", lambda d: d.__setitem__("shapes", []))  # empty mask
    assert not stage.run(settings_for(tmp_path)).failed
    strict = stage.run(settings_for(tmp_path, strict=True))
    assert strict.failed and strict.errors == 0 and strict.warnings == 1


def test_duplicates_in_a_labelme_folder_and_leakage_between_split_folders(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path / "train", count=2)
    make_labelme_dataset(tmp_path / "test", count=1, first_seed=10)
    shutil.copy(tmp_path / "train/img0.png", tmp_path / "test/img0.png")
    result = stage.run(settings_for(tmp_path))
    assert {(p.file, p.check) for p in result.problems} == {
        ("test/img0.json", "split_leakage"),
        ("train/img0.json", "split_leakage"),
    }
    shutil.copy(tmp_path / "train/img1.png", tmp_path / "train/img0.png")
    shutil.copy(tmp_path / "train/img1.png", tmp_path / "test/img0.png")
    checks = {(p.file, p.check) for p in stage.run(settings_for(tmp_path)).problems}
    assert ("train/img0.json", "split_leakage") in checks
    assert ("test/img0.json", "split_leakage") in checks


def test_resized_copy_is_a_near_duplicate_only_when_asked(tmp_path: Path) -> None:
    """The story behind vesselctl: images rescaled by hand next to their originals."""
    make_labelme_dataset(tmp_path / "train", count=2)
    make_labelme_dataset(tmp_path / "test", count=1, first_seed=10)
    original = cv2.imread(str(tmp_path / "train/img0.png"), cv2.IMREAD_GRAYSCALE)
    bigger = cv2.resize(original, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "test/img0.png"), bigger)
    edit_json(tmp_path / "test/img0.json", lambda d: d.update(imageHeight=64, imageWidth=64))
    assert stage.run(settings_for(tmp_path)).problems == []
    result = stage.run(settings_for(tmp_path, checks={"near_duplicates": True}))
    assert {(p.file, p.check) for p in result.problems} == {
        ("test/img0.json", "near_duplicate"),
        ("train/img0.json", "near_duplicate"),
    }
    assert "possible leakage" in result.problems[0].found


def test_prepared_dataset_leakage_and_duplicates(tmp_path: Path) -> None:
    make_prepared_dataset(tmp_path, splits=("train", "train", "test"))
    assert stage.run(settings_for(tmp_path)).problems == []
    # Copy image 0 over image 2 (test) and fix the checksum: only the leakage remains.
    data = (tmp_path / "images/p0.png").read_bytes()
    (tmp_path / "images/p2.png").write_bytes(data)
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    lines[2]["sha256_image"] = lines[0]["sha256_image"]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = stage.run(settings_for(tmp_path))
    assert result.kind == "prepared"
    assert {(p.file, p.check) for p in result.problems} == {
        ("images/p0.png", "split_leakage"),
        ("images/p2.png", "split_leakage"),
    }
    assert result.stats["shapes_by_label"] == {"hole": 3, "vessel": 3}


def test_prepared_dataset_group_leakage(tmp_path: Path) -> None:
    make_prepared_dataset(tmp_path, splits=("train", "train", "test"))
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    for record, group in zip(lines, ["P1", "P2", "P1"], strict=True):
        record["group"] = group
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = stage.run(settings_for(tmp_path))
    assert {(p.file, p.check) for p in result.problems} == {
        ("images/p0.png", "split_leakage"),
        ("images/p2.png", "split_leakage"),
    }


def test_mask_folder_is_detected(tmp_path: Path) -> None:
    make_mask_folder(tmp_path)
    result = stage.run(settings_for(tmp_path))
    assert result.kind == "mask_folder" and result.files == 2 and result.problems == []


def test_overlays_are_drawn_outside_the_input(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path / "in", count=2)
    result = stage.run(settings_for(tmp_path / "in", overlays=tmp_path / "overlays"))
    assert result.overlays == 2
    overlay = cv2.imread(str(tmp_path / "overlays/img0.png"), cv2.IMREAD_COLOR)
    original = cv2.imread(str(tmp_path / "in/img0.png"), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape == (SIZE, SIZE, 3)
    # Background pixels stay gray; vessel pixels are tinted (green above red and blue).
    assert np.array_equal(overlay[0, 0], np.repeat(original[0, 0], 3))
    inside = overlay[13, 20].astype(int)  # inside the band, away from its outline
    assert inside[1] > inside[0] and inside[1] > inside[2]


def test_outputs_inside_the_input_are_refused(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    with pytest.raises(ConfigError, match="never writes into its input"):
        load_settings(ValidateSettings, flags={"path": tmp_path, "out": tmp_path / "report"})
    with pytest.raises(ConfigError, match="overlays"):
        load_settings(ValidateSettings, flags={"path": tmp_path, "overlays": tmp_path})


def test_missing_or_empty_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        stage.run(settings_for(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no LabelMe"):
        stage.run(settings_for(tmp_path))


def test_parallel_run_matches_serial_run(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path, count=10)
    edit_json(tmp_path / "img3.json", lambda d: d["shapes"].append(shape([[1, 1], [2, 2]])))
    edit_json(tmp_path / "img7.json", lambda d: d.__setitem__("shapes", clean_shapes()[:1]))
    serial = stage.run(settings_for(tmp_path))
    parallel = stage.run(settings_for(tmp_path, workers=2))
    assert parallel.problems == serial.problems and len(serial.problems) == 1
    assert parallel.stats == serial.stats


def test_width_statistics_are_sampled(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path, count=5)
    every = stage.run(settings_for(tmp_path, stats={"width_images": 0}))
    some = stage.run(settings_for(tmp_path, stats={"width_images": 2}))
    off = stage.run(settings_for(tmp_path, stats={"widths": False}))
    assert every.stats["vessel_width_px"]["images_measured"] == 5
    assert some.stats["vessel_width_px"]["images_measured"] == 2  # images 0 and 3
    assert off.stats["vessel_width_px"]["images_measured"] == 0
