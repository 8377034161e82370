"""`vesselctl convert` through the CLI: exit codes, summary, errors on one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.model.official_fixtures import (
    make_training_delta,
    tiny_model,
    write_iter_checkpoint,
    write_official_hf_export,
)
from vesselctl.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    model, processor = tiny_model("internvl")
    root = tmp_path_factory.mktemp("cli-convert")
    write_official_hf_export(model, processor, root / "hf", "internvl")
    trained, _ = make_training_delta(model, "internvl", r=4, alpha=8.0)
    write_iter_checkpoint(root / "iter_3672.pth", trained, 4, 8.0)
    return root


def test_convert_iter_checkpoint(official, tmp_path):
    out = tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "convert",
            str(official / "iter_3672.pth"),
            "--base",
            str(official / "hf"),
            "--out",
            str(out),
            "--dtype",
            "fp32",
            "--set",
            "verify.image_size=32",
        ],
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "verification" in result.output and "passed" in result.output
    assert (out / "config.json").is_file() and (out / "README.md").is_file()


def test_convert_errors_are_one_line_with_exit_codes(official, tmp_path):
    missing_base = runner.invoke(
        app, ["convert", str(official / "iter_3672.pth"), "--out", str(tmp_path / "a")]
    )
    assert missing_base.exit_code == 1
    assert "--base DIR" in missing_base.stderr and "Traceback" not in missing_base.stderr
    half = runner.invoke(
        app,
        [
            "convert",
            str(official / "iter_3672.pth"),
            "--mllm",
            str(official / "hf"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert half.exit_code == 2 and "mllm and sam2 go together" in half.stderr
    no_source = runner.invoke(app, ["convert", "--out", str(tmp_path / "c")])
    assert no_source.exit_code == 2 and "source is required" in no_source.stderr
