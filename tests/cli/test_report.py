"""`vesselctl report` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.cli.flat_yaml import flat_yaml
from vesselctl.cli import app
from vesselctl.report.synthetic import SyntheticRun, write_mmengine_log, write_run_folder

runner = CliRunner()


def test_report_command(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100))
    log = write_mmengine_log(tmp_path / "w" / "x.log", SyntheticRun(total_iters=100))
    result = runner.invoke(
        app,
        [
            "report",
            str(run),
            str(log),
            "--out",
            str(tmp_path / "out"),
            "--ema",
            "0.5",
            "--title",
            "T",
            "--set",
            "anomalies.spike_factor=4",
        ],
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "report.html" in result.stdout and "x: evaluation" in result.stdout
    assert (tmp_path / "out" / "report.html").is_file()
    settings = (tmp_path / "out" / "settings.yaml").read_text()
    assert "ema: 0.5" in settings and "spike_factor: 4" in settings


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "no such file or folder" in result.stderr
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "'out' is required" in result.stderr


def test_config_lists_report_settings() -> None:
    result = runner.invoke(app, ["config", "report", "--yaml"])
    assert result.exit_code == 0
    assert flat_yaml(result.stdout)["anomalies.spike_factor"] == 3.0
