"""Integration: a smaller copy of examples/quickstart.py runs every stage and each leaves its files.

Same code path as the quickstart (its ``pipeline`` function and YAML config), with fewer images
and training steps, and the commands run in-process through the Typer app instead of one
process each. It does not check the Dice bar (too few steps); the full quickstart does that.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner

from vesselctl.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples/quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_pipeline_small(tmp_path: Path, capsys) -> None:
    quickstart = _load_quickstart()
    runner = CliRunner()
    ran: list[str] = []

    def run_in_process(args: Sequence[str]) -> None:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, f"vesselctl {args[0]} failed:\n{result.output}"
        ran.append(args[0])

    out = tmp_path / "qs"
    paths = quickstart.pipeline(out, seed=0, images=16, steps=2, run=run_in_process)
    assert ran == ["prepare", "validate", "train", "convert", "predict", "evaluate", "report"]
    printed = capsys.readouterr().out
    assert "$ vesselctl train --config" in printed and "$ vesselctl evaluate --ckpt" in printed

    # prepare / validate
    assert len(list(paths["labelme"].glob("*.json"))) == 16
    manifest = (paths["data"] / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in manifest]
    test_ids = sorted(r["id"] for r in records if r["split"] == "test")
    assert len(records) == 16 and test_ids
    assert (paths["validation"] / "validation.json").is_file()
    # train: final checkpoint, logs, and the random start weights that convert needs
    run = paths["run"]
    train_result = json.loads((run / "result.json").read_text())
    assert train_result["status"] == "completed" and train_result["steps"] == 2
    assert (run / "metrics.jsonl").is_file() and (run / "base_model" / "config.json").is_file()
    # convert / predict
    assert (paths["model"] / "config.json").is_file()
    assert json.loads((paths["model"] / "result.json").read_text())["verify"]["passed"]
    predicted = sorted(p.stem for p in (paths["predictions"] / "masks").glob("*.png"))
    assert predicted == test_ids
    # evaluate --ckpt: one folder with the model, predictions, metrics and the empty baseline
    evaluation = paths["eval"]
    for name in ("per_image.csv", "summary.json", "result.json", "model/config.json"):
        assert (evaluation / name).is_file(), name
    dice, empty = quickstart.headline(evaluation)
    assert 0.0 <= dice <= 1.0 and empty == 0.0
    # report: finds the evaluation inside the run folder and shows it beside the baseline
    report = (paths["report"] / "report.md").read_text()
    assert str(evaluation) in report
    assert "macro.dice" in report
    assert "Compared with" in report and "baseline-empty" in report
    assert (paths["report"] / "report.html").is_file()
