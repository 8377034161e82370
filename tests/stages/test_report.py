"""The report stage end to end on generated runs: files written, numbers, comparison, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from vesselctl.errors import ConfigError, ReportError
from vesselctl.report.synthetic import (
    SyntheticRun,
    write_evaluation,
    write_mmengine_log,
    write_run_folder,
)
from vesselctl.settings.base import load_settings
from vesselctl.settings.report import ReportSettings
from vesselctl.stages import report as stage


def _settings(**flags) -> ReportSettings:
    return load_settings(ReportSettings, None, [], flags)


def test_run_folder_report(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=300, val_every=100))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = stage.run(_settings(runs=[run], out=tmp_path / "report", title="Vessels"))
    out = tmp_path / "report"
    names = {p.name for p in out.iterdir()}
    assert {
        "report.md",
        "report.html",
        "report.json",
        "settings.yaml",
        "run_info.json",
        "result.json",
        "plots",
        "overlays",
    } <= names
    assert {p.name for p in (out / "plots").iterdir()} >= {
        "losses.png",
        "learning_rate.png",
        "speed.png",
        "memory.png",
        "validation.png",
    }
    md = result.report_md.read_text()
    assert md.startswith("# Vessels\n")
    assert "| loss | 13.7612 (step 10) | 1.0760 (step 300) | down 92.2% |" in md
    # The user's hand-written table: Total 13.76 -> 1.08 (down 92.2%); mask 4.84 -> 0.48;
    # dice 1.00 -> 0.31; LLM 7.92 -> 0.28.
    assert "| total loss: first -> last | 13.76 -> 1.08 (down 92.2%) |" in md
    assert "| loss_mask: first -> last | 4.84 -> 0.48 (down 90.1%) |" in md
    assert "| loss_dice: first -> last | 1.00 -> 0.31 (down 69.0%) |" in md
    assert "| llm_loss: first -> last | 7.92 -> 0.28 (down 96.4%) |" in md
    assert "![" in md and "(plots/losses.png)" in md
    assert "macro.dice | 0.781 | [0.752, 0.807]" in md
    assert "no evaluation found" not in md.lower()
    numbers = json.loads(result.report_json.read_text())
    losses = {row["name"]: row for row in numbers["runs"][0]["losses"]}
    assert round(losses["loss"]["first"], 2) == 13.76 and round(losses["loss"]["last"], 2) == 1.08
    assert numbers["runs"][0]["summary"]["peak_memory_gib"] > 14
    assert numbers["runs"][0]["checkpoints"][0]["step"] == 100
    assert yaml.safe_load((out / "settings.yaml").read_text())["title"] == "Vessels"
    assert json.loads((out / "result.json").read_text())["runs"][0]["name"] == "run"
    # Inputs are never modified.
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    html = result.report_html.read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(result.plots) + 2


def test_log_without_evaluation_says_so(tmp_path: Path) -> None:
    log = write_mmengine_log(tmp_path / "w" / "20251123.log", SyntheticRun(total_iters=200))
    result = stage.run(_settings(runs=[log], out=tmp_path / "out"))
    md = result.report_md.read_text()
    assert "no evaluation found. A falling loss says nothing about segmentation quality" in md
    assert "run `vesselctl evaluate`" in md
    assert "no validation metrics in the log" in md
    assert any(m.endswith("evaluation") for m in result.missing)
    assert result.runs[0]["status"] == "finished"


def test_explicit_evaluation_and_comparison(tmp_path: Path) -> None:
    a = write_mmengine_log(tmp_path / "a" / "a.log", SyntheticRun(total_iters=200))
    b = write_mmengine_log(
        tmp_path / "b" / "b.log", SyntheticRun(total_iters=200, crash_at=120, seed=3)
    )
    eval_a = write_evaluation(tmp_path / "eval_a")
    eval_b = write_evaluation(tmp_path / "eval_b", n_overlays=1)
    result = stage.run(
        _settings(
            runs=[a, b],
            out=tmp_path / "cmp",
            evaluations=[eval_a, eval_b],
            names=["lr 2e-5", "lr 4e-5"],
        )
    )
    md = result.report_md.read_text()
    assert md.startswith("# Training comparison: lr 2e-5 vs lr 4e-5")
    assert "|  | lr 2e-5 | lr 4e-5 |" in md
    assert "| status | finished | crashed |" in md
    assert "## lr 4e-5: Anomalies" in md and "OutOfMemoryError" in md
    assert [r["status"] for r in result.runs] == ["finished", "crashed"]
    assert len(list((tmp_path / "cmp" / "overlays").iterdir())) == 3


def test_named_evaluation_leads_also_when_the_run_folder_holds_it(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100))  # holds run/eval
    later = write_evaluation(run / "eval2")
    result = stage.run(_settings(runs=[run], evaluations=[later], out=tmp_path / "out"))
    evaluations = json.loads(result.report_json.read_text())["runs"][0]["evaluations"]
    assert [Path(e["folder"]).name for e in evaluations] == ["eval2", "eval"]


def test_overlays_of_two_evaluations_keep_their_own_files(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100))  # holds run/eval
    write_evaluation(run / "eval2")  # the same overlay file names as run/eval
    result = stage.run(_settings(runs=[run], out=tmp_path / "out"))
    linked = re.findall(r"\]\((overlays/[^)]+)\)", result.report_md.read_text())
    assert len(linked) == 4 and len(set(linked)) == 4
    assert len(list((tmp_path / "out" / "overlays").iterdir())) == 4


def test_truncated_running_run_still_reports(tmp_path: Path) -> None:
    run = write_run_folder(
        tmp_path / "run",
        SyntheticRun(total_iters=300, crash_at=150, truncate_last_line=True),
        with_evaluation=False,
    )
    result = stage.run(_settings(runs=[run], out=tmp_path / "out"))
    assert result.runs[0]["status"] == "unknown"
    assert "last line is incomplete" in result.report_md.read_text()


def test_out_must_not_be_the_run_folder(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100))
    with pytest.raises(ReportError, match="would overwrite that run's own files"):
        stage.run(_settings(runs=[run], out=run))


def test_out_must_not_be_an_evaluation_folder(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100), with_evaluation=False)
    evaluation = write_evaluation(tmp_path / "eval")
    (evaluation / "result.json").write_text('{"from": "evaluate"}')
    before = {p: p.read_bytes() for p in evaluation.rglob("*") if p.is_file()}
    with pytest.raises(ReportError, match="would overwrite that evaluation's own files"):
        stage.run(_settings(runs=[run], evaluations=[evaluation], out=evaluation))
    assert {p: p.read_bytes() for p in evaluation.rglob("*") if p.is_file()} == before


def test_settings_errors() -> None:
    with pytest.raises(ConfigError, match="no run given"):
        _settings(out="x")
    with pytest.raises(ConfigError, match="'out' is required"):
        _settings(runs=["a"])
    with pytest.raises(ConfigError, match="'names' has 1 entries for 2 runs"):
        _settings(runs=["a", "b"], out="x", names=["n"])
    with pytest.raises(ConfigError, match="ema"):
        _settings(runs=["a"], out="x", ema=1.0)


def test_epoch_based_log_finishes_on_zero_eta(tmp_path: Path) -> None:
    log = write_mmengine_log(
        tmp_path / "e.log", SyntheticRun(total_iters=60, log_interval=5, iters_per_epoch=20)
    )
    result = stage.run(_settings(runs=[log], out=tmp_path / "out"))
    assert result.runs[0]["status"] == "finished"
    md = result.report_md.read_text()
    assert "| epoch | steps | records |" in md and "| 3 | 45-60 | 4 |" in md
