"""The CLI shell: help, version, env and config commands through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from vesselctl.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "env" in result.stdout


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from vesselctl.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.stdout\n"
        "heavy = [m for m in ('torch', 'transformers', 'cv2', 'deepspeed') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "vesselctl" in result.stdout


def test_env_json() -> None:
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["packages"]["vesselctl"] is not None
    assert isinstance(info["gpus"], list)


def test_config_unknown_stage_is_clear_error() -> None:
    result = runner.invoke(app, ["config", "nosuchstage"])
    assert result.exit_code == 2
    assert "unknown stage 'nosuchstage'" in result.stderr


def test_config_yaml_of_every_stage_reads_back_as_a_config() -> None:
    """`vesselctl config STAGE --yaml` is a file --config accepts: no unknown keys."""
    import yaml

    from vesselctl.cli.config import STAGE_SETTINGS, load_stage_settings_class
    from vesselctl.settings.base import _check_unknown_keys

    assert {"prepare", "train", "predict", "evaluate", "report"} <= set(STAGE_SETTINGS)
    for stage in STAGE_SETTINGS:
        result = runner.invoke(app, ["config", stage, "--yaml"])
        assert result.exit_code == 0, result.output
        data = yaml.safe_load(result.stdout) or {}
        cls = load_stage_settings_class(stage)
        _check_unknown_keys(cls, data, "", f"{stage} --yaml")
        assert set(data) == set(cls.model_fields), stage
