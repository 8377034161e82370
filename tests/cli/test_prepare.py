"""`vesselctl prepare` through the Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.cli.flat_yaml import flat_yaml
from vesselctl.cli import app
from vesselctl.data.manifest import read_manifest
from vesselctl.data.synthetic import write_labelme_dataset

runner = CliRunner()


def test_prepare_writes_a_dataset_and_prints_a_summary(tmp_path):
    src, out = tmp_path / "labelme", tmp_path / "data"
    write_labelme_dataset(src, 6, seed=1, sizes=(64, 80), embed_every=3, patients=3)
    result = runner.invoke(
        app,
        [
            "prepare",
            str(src),
            str(out),
            "--size",
            "48",
            "--line-width",
            "4",
            "--group-pattern",
            r"^(P\d+)_",
            "--workers",
            "1",
            "--no-progress",
            "--set",
            "split.val=1",
            "--set",
            "split.test=1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "6 prepared of 6 found" in result.output
    assert "4.0 px" in result.output
    records = read_manifest(out)
    assert len(records) == 6 and {(r.height, r.width) for r in records} == {(48, 48)}
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["raster"]["line_width_px"] == 4.0
    assert report["split"]["group_pattern"] == r"^(P\d+)_"


def test_prepare_refuses_a_non_empty_output_with_exit_code_2(tmp_path):
    src, out = tmp_path / "labelme", tmp_path / "data"
    write_labelme_dataset(src, 1, seed=1, sizes=(32,))
    out.mkdir()
    (out / "x.txt").write_text("x")
    result = runner.invoke(app, ["prepare", str(src), str(out), "--no-progress"])
    assert result.exit_code == 2
    assert "not empty" in result.stderr and "--overwrite" in result.stderr


def test_prepare_bad_annotation_exits_1_naming_the_file(tmp_path):
    src, out = tmp_path / "labelme", tmp_path / "data"
    write_labelme_dataset(src, 2, seed=1, sizes=(32,), embed_every=0)
    (src / "P001_img0001.json").write_text("{")
    result = runner.invoke(app, ["prepare", str(src), str(out), "--workers", "1"])
    assert result.exit_code == 1
    assert "P001_img0001.json" in result.stderr and "invalid JSON" in result.stderr


def test_prepare_rejects_bad_settings(tmp_path):
    result = runner.invoke(
        app,
        [
            "prepare",
            str(tmp_path),
            str(tmp_path / "o"),
            "--set",
            "split.val=0.7",
            "--set",
            "split.test=0.5",
        ],
    )
    assert result.exit_code == 2 and "sum to" in result.stderr
    result = runner.invoke(
        app, ["prepare", str(tmp_path), str(tmp_path / "o"), "--set", "labels.hole=[vessel]"]
    )
    assert result.exit_code == 2 and "give each label one role" in result.stderr


def test_help_and_config_listing():
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0 and "line/linestrip" in result.output
    result = runner.invoke(app, ["config", "prepare", "--yaml"])
    assert result.exit_code == 0
    keys = flat_yaml(result.output)
    for key in ("raster.line_width", "split.group_pattern", "labels.hole", "prompt.question"):
        assert key in keys
