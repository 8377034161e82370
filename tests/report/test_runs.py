"""Finding logs, settings, checkpoints and evaluations in run folders and work_dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vesselctl.errors import ReportError
from vesselctl.report.runs import (
    disk_size,
    find_checkpoints,
    read_evaluation,
    read_run,
    summary_metric_rows,
)
from vesselctl.report.synthetic import (
    SyntheticRun,
    write_evaluation,
    write_mmengine_log,
    write_run_folder,
)


def test_vesselctl_run_folder(tmp_path: Path) -> None:
    folder = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100), checkpoints=(50,))
    (folder / "checkpoints" / "best").symlink_to(folder / "checkpoints" / "step_000050")
    run = read_run(folder)
    assert run.name == "run" and run.log.format == "vesselctl-jsonl"
    assert run.settings_text is not None and "lora" in run.settings_text
    assert run.run_info["gpus"][0]["memory_gib"] == 24.0
    assert [c.step for c in run.checkpoints] == [50]  # the link resolves to the same folder
    assert run.checkpoints[0].size_bytes == 1050 and run.checkpoints[0].is_dir
    assert run.checkpoints[0].aliases == ["best"]
    assert len(run.evaluations) == 1 and len(run.evaluations[0].overlays) == 2
    assert run.missing == []
    assert list(run.log_sha256) == [str(folder / "metrics.jsonl")]


def test_mmengine_work_dir_with_iter_checkpoints(tmp_path: Path) -> None:
    work = tmp_path / "work_dirs" / "sa2va"
    write_mmengine_log(
        work / "20251123_051220" / "20251123_051220.log", SyntheticRun(total_iters=100, crash_at=50)
    )
    write_mmengine_log(
        work / "20251123_091220" / "20251123_091220.log", SyntheticRun(total_iters=100)
    )
    (work / "sa2va_config.py").write_text("lr = 2e-5\n")
    (work / "iter_50.pth").write_bytes(b"x" * 300)
    deepspeed = work / "iter_100.pth"
    (deepspeed / "checkpoint").mkdir(parents=True)
    (deepspeed / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"y" * 700)
    (work / "last_checkpoint").write_text(str(deepspeed))
    (work / "20251123_091220" / "vis_data").mkdir()
    (work / "20251123_091220" / "vis_data" / "config.py").write_text("lr = 2e-5\n")
    run = read_run(work)
    assert run.log.format == "mmengine" and len(run.log.sources) == 2
    assert run.log.restart_steps == [10]
    assert [(c.step, c.size_bytes, c.is_dir) for c in run.checkpoints] == [
        (50, 300, False),
        (100, 700, True),
    ]
    assert run.config_files == [
        work / "sa2va_config.py",
        work / "20251123_091220" / "vis_data" / "config.py",
    ]
    assert run.missing == []  # environment and config are printed in the log itself
    assert run.log.environment["MMEngine"] == "0.10.3"


def test_single_log_file_looks_beside_it(tmp_path: Path) -> None:
    log = write_mmengine_log(tmp_path / "w" / "20251123_051220" / "20251123_051220.log")
    (tmp_path / "w" / "iter_200.pth").write_bytes(b"z" * 10)
    run = read_run(log)
    assert run.name == "20251123_051220" and run.folder is None
    assert [c.step for c in run.checkpoints] == [200]
    assert run.config_files == [] and run.log.config_text is not None
    assert not any("training config" in m for m in run.missing)
    bare = tmp_path / "bare.log"
    bare.write_text(
        "\n".join(line for line in log.read_text().splitlines() if "(train)" in line) + "\n"
    )
    missing = read_run(bare).missing
    assert any("training config" in m for m in missing)
    assert any("environment provenance" in m for m in missing)


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such file or folder"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"no metrics.jsonl and no \*.log file"):
        read_run(tmp_path / "empty")
    with pytest.raises(ReportError, match=r"no summary\.json found"):
        read_evaluation(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="expected a JSON object, found list"):
        read_evaluation(tmp_path / "bad")


def test_summary_rows_read_any_layout() -> None:
    summary = {
        "n_images": 12,
        "settings": {"threshold": 0.5},
        "macro": {
            "dice": {"mean": 0.8, "ci95": [0.7, 0.9], "median": 0.81},
            "iou": {"mean": 0.6, "ci_low": 0.5, "ci_high": 0.7},
            "hd95": {"value": 3.0, "ci": {"low": 2.0, "high": 4.0}},
        },
        "micro": {"dice": 0.79},
        "per_image": [{"id": "a", "dice": 0.1}],
        "flag": True,
    }
    rows = {r.name: r for r in summary_metric_rows(summary)}
    assert list(rows) == ["n_images", "macro.dice", "macro.iou", "macro.hd95", "micro.dice"]
    assert (rows["macro.dice"].ci_low, rows["macro.dice"].ci_high) == (0.7, 0.9)
    assert rows["macro.dice"].extra == {"median": 0.81}
    assert (rows["macro.iou"].ci_low, rows["macro.iou"].ci_high) == (0.5, 0.7)
    assert (rows["macro.hd95"].value, rows["macro.hd95"].ci_high) == (3.0, 4.0)


def test_evaluation_prefers_worst_overlays(tmp_path: Path) -> None:
    folder = write_evaluation(tmp_path / "eval", n_overlays=3)
    (folder / "overlays" / "best_00.png").write_bytes(
        (folder / "overlays").glob("*.png").__next__().read_bytes()
    )
    evaluation = read_evaluation(folder)
    assert len(evaluation.overlays) == 3
    assert all("worst" in p.name for p in evaluation.overlays)
    assert evaluation.overlay_captions[evaluation.overlays[0]] == "worst 1: img_0000 (dice 0.52)"
    rows = {r.name: r for r in evaluation.metrics}
    assert (rows["macro.dice"].ci_low, rows["macro.dice"].ci_high) == (0.752, 0.807)
    assert rows["micro.dice"].value == 0.79 and rows["threshold"].value == 0.5
    assert "per_case" not in str(list(rows)) and "settings.threshold" not in rows
    assert json.loads((folder / "summary.json").read_text())["n_images"] == 20


def test_disk_size_and_tmp_checkpoints_skipped(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_10").mkdir(parents=True)
    (ckpts / "step_10" / "a.bin").write_bytes(b"1" * 10)
    (ckpts / "step_10" / "sub").mkdir()
    (ckpts / "step_10" / "sub" / "b.bin").write_bytes(b"1" * 5)
    (ckpts / "step_20.tmp").mkdir()
    assert disk_size(ckpts / "step_10") == 15
    assert [c.step for c in find_checkpoints([ckpts])] == [10]
