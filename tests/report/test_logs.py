"""Log readers on generated and hand-written mmengine text logs and metrics.jsonl files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vesselctl.errors import ReportError
from vesselctl.report.logs import read_log_file, read_metrics_jsonl, read_mmengine_logs
from vesselctl.report.synthetic import SyntheticRun, write_metrics_jsonl, write_mmengine_log

# Lines as mmengine / xtuner print them (LogProcessor.get_log_after_iter / _after_epoch).
HAND_WRITTEN = """\
2025/11/23 05:12:20 - mmengine - INFO - Checkpoints will be saved to /nowhere/work_dir.
2025/11/23 05:15:02 - mmengine - INFO - Iter(train) [  10/3672]  lr: 2.0000e-05  eta: 16:23:45  time: 16.2039  data_time: 0.0123  memory: 15234  loss: 13.7612  loss_mask: 4.8412  loss_dice: 1.0000  llm_loss: 7.9200
2025/11/23 05:17:44 - mmengine - WARNING - something odd happened
not a log line at all [1/2] with: colons
2025/11/24 05:17:45 - mmengine - INFO - Iter(train) [  20/3672]  base_lr: 1.0000e-05 lr: 2.0000e-05  eta: 1 day, 2:03:04  time: 15.0000  data_time: 0.0100  memory: 16384  loss: 9.5000  loss_new_term: 0.5000  grad_norm: 3.2500  mode: text
2025/11/24 05:18:00 - mmengine - INFO - Iter(val) [ 5/10]    eta: 0:00:10  time: 1.0000  data_time: 0.0100  memory: 9000
2025/11/24 05:18:05 - mmengine - INFO - Iter(val) [10/10]    accuracy/top1: 0.7500  val/dice: 0.6100  data_time: 0.0100  time: 1.0000
2025/11/24 05:18:06 - mmengine - INFO - Saving checkpoint at 20 iterations
"""  # noqa: E501


def test_hand_written_mmengine_lines(tmp_path: Path) -> None:
    path = tmp_path / "20251123_051220.log"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    log = read_log_file(path)
    assert log.format == "mmengine"
    assert log.train["step"].tolist() == [10.0, 20.0]
    assert log.max_steps == 3672
    assert log.train["loss"].tolist() == [13.7612, 9.5]
    assert log.train["loss_mask"][0] == 4.8412 and math.isnan(log.train["loss_mask"][1])
    assert not log.nonfinite("loss_mask").any()  # absent from line 2, not a NaN loss
    # Unknown keys pass through; mmengine's MB memory becomes GiB; eta becomes seconds.
    assert log.train["loss_new_term"][1] == 0.5 and log.train["grad_norm"][1] == 3.25
    assert log.train["base_lr"][1] == 1e-5 and log.train["lr"][1] == 2e-5
    assert log.train["memory_gib"].tolist() == [15234 / 1024, 16.0]
    assert log.train["eta_s"].tolist() == [16 * 3600 + 23 * 60 + 45, 86400 + 2 * 3600 + 3 * 60 + 4]
    assert log.train["time_per_step_s"][0] == 16.2039
    assert "mode" not in log.train  # not numeric
    assert log.train["timestamp"][1] - log.train["timestamp"][0] == 86400 + 163
    assert log.loss_columns() == ["loss", "loss_mask", "loss_dice", "llm_loss", "loss_new_term"]
    # Only the validation line after the loop carries metrics; it belongs to the last step.
    assert log.val["step"].tolist() == [20.0]
    assert log.val["accuracy/top1"][0] == 0.75 and log.val["val/dice"][0] == 0.61
    kinds = [e.kind for e in log.events]
    assert kinds == ["launch", "warning", "checkpoint"]
    assert log.events[2].step == 20 and log.events[1].where() == f"{path.name}:3"


def test_epoch_based_headers_give_global_steps(tmp_path: Path) -> None:
    run = SyntheticRun(total_iters=60, log_interval=5, iters_per_epoch=20)
    log = read_log_file(write_mmengine_log(tmp_path / "e.log", run))
    assert log.steps_per_epoch == 20
    assert log.train["step"].tolist() == list(range(5, 61, 5))
    assert log.train["epoch"].tolist() == [1.0] * 4 + [2.0] * 4 + [3.0] * 4


def test_restart_keeps_later_attempt_and_reports_crash(tmp_path: Path) -> None:
    run = SyntheticRun(total_iters=200, crash_at=150, restart_from=100, val_every=50)
    log = read_log_file(write_mmengine_log(tmp_path / "r.log", run))
    steps = log.train["step"]
    assert steps.tolist() == list(range(10, 201, 10))  # monotonic after dropping re-run steps
    assert log.superseded == 5  # 110..150 of the first attempt
    assert log.restart_steps == [110]
    assert log.train["attempt"][steps == 120][0] == 1.0
    kinds = [e.kind for e in log.events]
    assert "traceback" in kinds and "resume" in kinds and "restart" in kinds
    crash = next(e for e in log.events if e.kind == "traceback")
    assert crash.message.startswith("torch.OutOfMemoryError")
    # Validation at step 150 of the crashed attempt is superseded by the one after the restart.
    assert log.val["step"].tolist() == [50.0, 100.0, 150.0, 200.0]


def test_several_log_files_of_one_work_dir(tmp_path: Path) -> None:
    first = write_mmengine_log(tmp_path / "a.log", SyntheticRun(total_iters=100, crash_at=50))
    second_text = write_mmengine_log(tmp_path / "tmp.log", SyntheticRun(total_iters=100))
    second = tmp_path / "b.log"
    lines = second_text.read_text().splitlines()
    second.write_text("\n".join(line for line in lines if "[ 10/" not in line) + "\n")
    log = read_mmengine_logs([first, second])
    assert log.restart_steps == [20]
    assert log.train["step"].tolist() == list(range(10, 101, 10))
    assert any(e.kind == "restart" and e.source == "b.log" for e in log.events)


def test_truncated_text_log(tmp_path: Path) -> None:
    run = SyntheticRun(total_iters=50, truncate_last_line=True)
    log = read_log_file(write_mmengine_log(tmp_path / "t.log", run))
    assert any(e.kind == "truncated" for e in log.events)
    assert log.n_train >= 4


def test_metrics_jsonl_truncated_and_bad_lines(tmp_path: Path) -> None:
    run = SyntheticRun(total_iters=100, val_every=50, truncate_last_line=True, nan_at=[30])
    path = write_metrics_jsonl(tmp_path / "metrics.jsonl", run)
    text = path.read_text().splitlines(keepends=True)
    text.insert(2, "garbage line\n")
    text.insert(3, json.dumps({"no_step": 1}) + "\n")
    path.write_text("".join(text))
    log = read_metrics_jsonl(path)
    assert log.format == "vesselctl-jsonl"
    kinds = {e.kind for e in log.events}
    assert kinds == {"truncated", "error"}
    bad = next(e for e in log.events if e.kind == "error")
    assert "2 line(s)" in bad.message and "lines 3, 4" in bad.message
    assert math.isnan(log.train["loss"][log.train["step"] == 30][0])
    assert log.val["val_dice"].size == 1  # the line at step 100 was the truncated one
    assert "split" not in log.val


def test_metrics_jsonl_restart_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [
        {"step": 1, "loss": 3.0, "timestamp": "2025-01-01T00:00:00"},
        {"step": 2, "loss": 2.0, "timestamp": "2025-01-01T00:00:10"},
        {"step": 3, "loss": 1.5, "timestamp": "2025-01-01T00:00:20"},
        {"step": 2, "loss": 2.1, "timestamp": "2025-01-01T01:00:00"},
        {"step": 3, "loss": 1.4, "timestamp": "2025-01-01T01:00:10", "max_steps": 3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    log = read_log_file(path)
    assert log.train["step"].tolist() == [1.0, 2.0, 3.0]
    assert log.train["loss"].tolist() == [3.0, 2.1, 1.4]
    assert log.superseded == 2 and log.restart_steps == [2]
    assert log.max_steps == 3 and "max_steps" not in log.train
    assert np.diff(log.train["timestamp"]).tolist() == [3600.0, 10.0]


def test_unreadable_input_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a file"):
        read_log_file(tmp_path)


def test_console_capture_with_colours_and_rank_prefix(tmp_path: Path) -> None:
    """stdout saved to a file: "%m/%d" timestamps, ANSI colour codes, torchrun rank prefixes."""
    lines = [
        "[rank0]:11/23 05:15:02 - \x1b[4m\x1b[97mmmengine\x1b[0m - \x1b[4m\x1b[97mINFO\x1b[0m - "
        "Iter(train) [ 10/100]  lr: 2.0000e-05  eta: 0:10:00  time: 1.0000  data_time: 0.0100  "
        "memory: 1024  loss: 2.0000",
        "[rank0]:11/23 05:15:12 - \x1b[4m\x1b[97mmmengine\x1b[0m - \x1b[5m\x1b[4m\x1b[33mWARNING"
        "\x1b[0m - careful",
        "[rank0]:11/23 05:15:22 - mmengine - INFO - Iter(train) [ 20/100]  lr: 2.0000e-05  "
        "eta: 0:09:00  time: 1.0000  data_time: 0.0100  memory: 1024  loss: 1.5000",
    ]
    path = tmp_path / "20251123_console.log"
    path.write_text("\n".join(lines) + "\n")
    log = read_log_file(path)
    assert log.train["loss"].tolist() == [2.0, 1.5]
    assert log.train["memory_gib"].tolist() == [1.0, 1.0]
    assert log.train["timestamp"][1] - log.train["timestamp"][0] == 20
    assert [e.kind for e in log.events] == ["warning"] and log.events[0].message == "careful"


def test_json_null_and_absent_keys_are_not_nan_losses(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 1.0, "grad_norm": null, "is_best": true, "note": "x"}\n'
        '{"step": 2, "loss": NaN, "grad_norm": 2.5}\n'
        '{"step": 3, "loss": 0.5, "extra_loss": 0.1}\n'
    )
    log = read_log_file(path)
    assert "is_best" not in log.train and "note" not in log.train
    assert log.nonfinite("loss").tolist() == [False, True, False]
    assert not log.nonfinite("grad_norm").any() and not log.nonfinite("extra_loss").any()


def test_environment_and_config_blocks_are_read(tmp_path: Path) -> None:
    """mmengine prints its environment and the config at every launch; the first is kept and a
    changed config is reported."""
    run = SyntheticRun(total_iters=100, crash_at=50, restart_from=30)
    path = write_mmengine_log(tmp_path / "20251123_051220.log", run)
    log = read_log_file(path)
    assert log.environment["PyTorch"] == "2.1.2+cu121"
    assert log.environment["GPU number"] == "4"
    assert "PyTorch built with" in log.environment["PyTorch compiling details"]
    assert "- GCC 9.3" not in str(log.environment)
    assert log.config_text.startswith("model = dict(") and log.config_text.endswith("lr = 2e-05")
    assert not any("differs" in e.message for e in log.events)
    text = path.read_text().replace("lr = 2e-05", "lr = 1e-05", 2)
    text = text.replace("lr = 1e-05", "lr = 2e-05", 1)  # only the second launch changed
    path.write_text(text)
    changed = read_log_file(path)
    assert changed.config_text.endswith("lr = 2e-05")
    assert any("launch(es) 2 differs" in e.message for e in changed.events)
