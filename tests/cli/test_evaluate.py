"""`vesselctl evaluate` through typer's CliRunner: table, exit codes and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.cli.flat_yaml import flat_yaml
from tests.metrics.evaluate_data import noisy_prob, save_mask, save_prob, vessel_mask
from vesselctl.cli import app

runner = CliRunner()


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(3):
        mask = vessel_mask(rng, 24, 24)
        save_mask(tmp_path / "gt" / f"c{i}.png", mask)
        save_prob(tmp_path / "pred" / f"c{i}.png", noisy_prob(rng, mask))
    return tmp_path


def test_evaluate_prints_table_and_writes_folder(folders) -> None:
    out = folders / "out"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(folders / "pred"),
            "--gt",
            str(folders / "gt"),
            "--out",
            str(out),
            "--threshold",
            "0.4",
            "--workers",
            "1",
            "--set",
            "aggregation.bootstrap_resamples=200",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert (
        "dice" in result.stdout and "95% CI" in result.stdout and "threshold 0.4" in result.stdout
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"]["value"] == 0.4
    assert summary["bootstrap"]["resamples"] == 200


def test_missing_predictions_stop_unless_allowed(folders) -> None:
    (folders / "pred" / "c1.png").unlink()
    args = [
        "evaluate",
        "--pred",
        str(folders / "pred"),
        "--gt",
        str(folders / "gt"),
        "--out",
        str(folders / "out"),
        "--workers",
        "1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "1 ground-truth image(s) have no prediction" in result.stderr and "c1" in result.stderr
    assert not (folders / "out").exists()
    allowed = runner.invoke(app, [*args, "--allow-missing"])
    assert allowed.exit_code == 0, allowed.stderr
    assert "scored as empty" in allowed.stdout


def test_missing_required_option_is_a_config_error(folders) -> None:
    result = runner.invoke(app, ["evaluate", "--gt", str(folders / "gt")])
    assert result.exit_code == 2
    assert "pass --pred" in result.stderr


def test_config_lists_evaluate_settings() -> None:
    result = runner.invoke(app, ["config", "evaluate", "--yaml"])
    assert result.exit_code == 0
    keys = flat_yaml(result.stdout)
    assert keys["threshold.sweep_split"] == "val"
    assert keys["aggregation.bootstrap_resamples"] == 1000
