"""`vesselctl inspect` through the CLI: tables and --json."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.model.official_fixtures import make_training_delta, tiny_model, write_iter_checkpoint
from vesselctl.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def iter_file(tmp_path_factory):
    model, _ = tiny_model("internvl")
    trained, _ = make_training_delta(model, "internvl", r=4, alpha=8.0)
    path = tmp_path_factory.mktemp("cli-inspect") / "iter_3672.pth"
    write_iter_checkpoint(path, trained, 4, 8.0)
    return path


def test_inspect_table_and_json(iter_file):
    table = runner.invoke(app, ["inspect", str(iter_file)])
    assert table.exit_code == 0, table.output
    assert "official_iter" in table.output and "rank 4, alpha 8.0" in table.output
    as_json = runner.invoke(app, ["inspect", str(iter_file), "--json"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.output)
    assert data["family"] == "internvl" and data["lora"]["rank"] == 4
    assert data["metadata"]["iter"] == 3672


def test_inspect_refuses_unknown_pickled_class(tmp_path):
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "meta": {"opt": _Opaque()}}, tmp_path / "odd.pth"
    )
    result = runner.invoke(app, ["inspect", str(tmp_path / "odd.pth")])
    assert result.exit_code == 1
    assert "_Opaque" in result.stderr and "--trust-checkpoint" in result.stderr
    trusted = runner.invoke(app, ["inspect", str(tmp_path / "odd.pth"), "--trust-checkpoint"])
    assert trusted.exit_code == 0, trusted.output


class _Opaque:
    pass
