"""`vesselctl predict` through the CLI: success summary, clear errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vesselctl.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from vesselctl.model.load import save_model_dir
    from vesselctl.model.presets import build_preset

    torch.manual_seed(0)
    model, processor = build_preset("tiny")
    return save_model_dir(model, processor, tmp_path_factory.mktemp("model") / "tiny")


def test_predict_writes_masks_and_exits_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    Image.fromarray(np.full((30, 40), 120, np.uint8)).save(image)
    out = tmp_path / "pred"
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tiny_model_dir),
            "--input",
            str(image),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "masks" / "one.png").is_file()
    assert (out / "settings.yaml").is_file() and (out / "result.json").is_file()


def test_unreadable_image_exits_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((30, 40), 120, np.uint8)).save(folder / "good.png")
    (folder / "bad.jpg").write_bytes(b"nope")
    result = runner.invoke(
        app,
        [
            "predict",
            "-m",
            str(tiny_model_dir),
            "-i",
            str(folder),
            "-o",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    assert "bad" in result.stderr
    assert (tmp_path / "o" / "masks" / "good.png").is_file()


def test_missing_arguments_are_a_config_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--input", str(tmp_path)])
    assert result.exit_code == 2
    assert "give --model, --input and --out" in result.stderr


def test_unknown_model_format(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    result = runner.invoke(
        app,
        [
            "predict",
            "-m",
            str(tmp_path / "x.txt"),
            "-i",
            str(image),
            "-o",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code != 0
    assert "x.txt" in result.stderr
