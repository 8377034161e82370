"""`vesselctl train` command line: help, settings listing, clear errors before any heavy work."""

from __future__ import annotations

from typer.testing import CliRunner

from tests.cli.flat_yaml import flat_yaml
from vesselctl.cli import app

runner = CliRunner()


def test_help_shows_the_distributed_flags() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for flag in ("--gpus", "--nnodes", "--node-rank", "--master-addr", "--resume", "--no-progress"):
        assert flag in result.stdout


def test_config_lists_train_settings() -> None:
    result = runner.invoke(app, ["config", "train", "--yaml"])
    assert result.exit_code == 0
    keys = flat_yaml(result.stdout)
    assert (keys["lora.r"], keys["optim.lr"], keys["distributed.strategy"]) == (64, 2e-05, "auto")


def test_missing_dataset_is_a_config_error(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "data.dataset" in result.stderr and "--data" in result.stderr


def test_unknown_setting_is_named(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--set", "optim.learning_rate=1"])
    assert result.exit_code == 2 and "optim.learning_rate" in result.stderr


def test_run_folder_with_checkpoints_needs_resume(tmp_path) -> None:
    step = tmp_path / "run" / "checkpoints" / "step_5"
    step.mkdir(parents=True)
    (step / "progress.json").write_text("{}")
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--gpus", "2"]
    )
    assert result.exit_code == 1
    assert "--resume auto" in result.stderr and "step_5" in result.stderr
