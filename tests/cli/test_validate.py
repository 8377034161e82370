"""`vesselctl validate` through typer's CliRunner: exit codes, --strict, --out, errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.cli.flat_yaml import flat_yaml
from tests.data.test_checks import edit_json, make_labelme_dataset, shape
from vesselctl.cli import app

runner = CliRunner()
IGNORE_NOTES = ["--set", "labels.ignore=[note]", "--workers", "1"]


def test_clean_folder_exits_zero_and_prints_statistics(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    result = runner.invoke(app, ["validate", str(tmp_path), *IGNORE_NOTES])
    assert result.exit_code == 0, result.output
    assert "PASSED: 0 errors, 0 warnings" in result.stdout
    assert "dataset statistics" in result.stdout and "vessel width" in result.stdout


def test_errors_exit_one_and_are_listed(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path / "in")
    edit_json(tmp_path / "in/img1.json", lambda d: d["shapes"].append(shape([[1, 1], [2, 2]])))
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["validate", str(tmp_path / "in"), "--out", str(out), *IGNORE_NOTES]
    )
    assert result.exit_code == 1
    assert "point_count" in result.stdout and "FAILED: 1 error, 0 warnings" in result.stdout
    report = json.loads((out / "validation.json").read_text())
    assert report["problems"][0]["message"].startswith("img1.json: shapes[4].points")


def test_unknown_label_is_reported_with_the_default_label_map(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)  # its 'note' points are not in the default label map
    result = runner.invoke(app, ["validate", str(tmp_path), "--show", "1", "--workers", "1"])
    assert result.exit_code == 1
    assert "unknown_label" in result.stdout and "first 1 of 3 problems" in result.stdout


def test_strict_turns_warnings_into_failure(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    edit_json(tmp_path / "img0.json", lambda d: d.__setitem__("shapes", []))
    relaxed = runner.invoke(app, ["validate", str(tmp_path), *IGNORE_NOTES])
    strict = runner.invoke(app, ["validate", str(tmp_path), "--strict", *IGNORE_NOTES])
    assert relaxed.exit_code == 0 and "empty_mask" in relaxed.stdout
    assert strict.exit_code == 1


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "not a folder" in result.stderr
    inside = runner.invoke(app, ["validate", str(tmp_path), "--out", str(tmp_path / "r")])
    assert inside.exit_code == 2 and "never writes into its input" in inside.stderr


def test_config_lists_validate_settings() -> None:
    result = runner.invoke(app, ["config", "validate", "--yaml"])
    assert result.exit_code == 0
    keys = flat_yaml(result.stdout)
    assert keys["checks.tiny_mask_pixels"] == 50
    assert keys["labels.vessel"] == ["vessel"]


def test_user_text_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    make_labelme_dataset(tmp_path)
    odd = shape([[1, 1], [9, 1], [5, 6]], "[b]")
    edit_json(tmp_path / "img0.json", lambda d: d["shapes"].extend([odd, odd]))
    result = runner.invoke(app, ["validate", str(tmp_path), "--show", "1", *IGNORE_NOTES])
    assert result.exit_code == 1
    assert "polygon '[b]'" in result.stdout and "[b] 2" in result.stdout
    assert "1 more: --show 2 or --out DIR lists all" in result.stdout
