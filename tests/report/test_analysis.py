"""Loss tables, summaries, epochs and anomaly detection on generated logs with planted faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vesselctl.report.analysis import (
    ema,
    epoch_table,
    find_anomalies,
    format_duration,
    loss_table,
    run_summary,
)
from vesselctl.report.logs import TrainingLog, read_log_file
from vesselctl.report.synthetic import SyntheticRun, write_metrics_jsonl, write_mmengine_log
from vesselctl.settings.report import AnomalySettings


def _log(**columns: list[float]) -> TrainingLog:
    log = TrainingLog(sources=[Path("x")], format="vesselctl-jsonl")
    log.train = {k: np.asarray(v, dtype=float) for k, v in columns.items()}
    return log


@pytest.mark.parametrize("writer", [write_mmengine_log, write_metrics_jsonl])
def test_user_numbers_give_the_user_table(tmp_path: Path, writer) -> None:
    """The user's hand-written table: Total 13.76 -> 1.08 (down 92.2%), mask 4.84 -> 0.48,
    dice 1.00 -> 0.31, LLM 7.92 -> 0.28."""
    log = read_log_file(writer(tmp_path / "log", SyntheticRun(total_iters=3672, log_interval=10)))
    rows = {row.name: row for row in loss_table(log)}
    assert list(rows) == ["loss", "loss_mask", "loss_dice", "llm_loss"]
    expected = {
        "loss": (13.76, 1.08),
        "loss_mask": (4.84, 0.48),
        "loss_dice": (1.00, 0.31),
        "llm_loss": (7.92, 0.28),
    }
    for name, (first, last) in expected.items():
        assert round(rows[name].first, 2) == first
        assert round(rows[name].last, 2) == last
        assert rows[name].first_step == 10 and rows[name].last_step == 3670
    assert round(rows["loss"].drop_pct, 1) == 92.2
    # Smoothed columns average the first / last 10 values: between the raw ends, same direction.
    assert rows["loss"].first_smoothed < rows["loss"].first
    assert rows["loss"].last_smoothed > rows["loss"].last
    assert 0 < rows["loss"].drop_smoothed_pct < rows["loss"].drop_pct


def test_ema_is_bias_corrected_and_skips_nan() -> None:
    values = np.array([10.0, 10.0, np.nan, 10.0, 0.0])
    smooth = ema(values, 0.9)
    assert smooth[0] == pytest.approx(10.0) and smooth[1] == pytest.approx(10.0)
    assert np.isnan(smooth[2]) and smooth[3] == pytest.approx(10.0)
    # Last: (1-a) weights with debiasing over the 4 finite values.
    weights = 0.1 * 0.9 ** np.arange(3, -1, -1)
    assert smooth[4] == pytest.approx((weights * [10, 10, 10, 0]).sum() / (1 - 0.9**4))
    assert np.array_equal(ema(np.array([1.0, 2.0]), 0.0), [1.0, 2.0])


def test_planted_nan_spike_restart_are_found(tmp_path: Path) -> None:
    run = SyntheticRun(
        total_iters=600,
        log_interval=10,
        nan_at=[300],
        spike_at=[400],
        crash_at=500,
        restart_from=450,
    )
    log = read_log_file(write_mmengine_log(tmp_path / "a.log", run))
    found = find_anomalies(log)
    kinds = {a.kind for a in found}
    assert {"nonfinite", "spike", "restart", "crash", "superseded"} <= kinds
    nonfinite = [a for a in found if a.kind == "nonfinite"]
    assert {a.message.split()[0] for a in nonfinite} == {
        "loss",
        "loss_mask",
        "loss_dice",
        "llm_loss",
    }
    assert all(a.step == 300 for a in nonfinite)
    spikes = [a for a in found if a.kind == "spike"]
    assert [a.step for a in spikes] == [400] and spikes[0].message.startswith("loss jumped")
    assert next(a for a in found if a.kind == "restart").step == 460
    assert next(a for a in found if a.kind == "crash").message.startswith(
        "traceback: torch.OutOfMemoryError"
    )
    assert found[0].severity == "error"  # errors sort first


def test_healthy_run_has_no_anomalies(tmp_path: Path) -> None:
    log = read_log_file(write_mmengine_log(tmp_path / "ok.log", SyntheticRun(total_iters=600)))
    found = [a for a in find_anomalies(log) if a.severity != "info"]
    assert found == []
    summary = run_summary(log)
    assert summary.status == "finished" and summary.max_steps == 600
    assert summary.time_per_step_median_s == pytest.approx(16.2, rel=0.05)


def test_divergence_stuck_and_stall() -> None:
    steps = np.arange(1, 101, dtype=float)
    rising = np.concatenate([np.linspace(5, 1, 50), np.linspace(1, 4, 50)])
    stuck = np.concatenate([np.linspace(2, 1, 40), np.full(60, 1.0)])
    stamps = steps * 10.0
    stamps[70:] += 7200  # two hours without a line after step 70
    log = _log(
        step=steps,
        loss=rising,
        loss_dice=stuck,
        timestamp=stamps,
        time_per_step_s=np.full(100, 10.0),
    )
    found = find_anomalies(log, AnomalySettings(stuck_records=20), ema_alpha=0.5)
    by_kind = {a.kind: a for a in found}
    assert by_kind["divergence"].message.startswith("loss (EMA) rose")
    assert "loss_dice stayed exactly 1 for 61 records (steps 40-100)" in by_kind["stuck"].message
    assert by_kind["stall"].step == 70 and "02:00:10" in by_kind["stall"].message


def test_slow_steps_and_validation_decline() -> None:
    steps = np.arange(1, 41, dtype=float)
    times = np.full(40, 2.0)
    times[25] = 30.0
    log = _log(step=steps, loss=np.linspace(3, 1, 40), time_per_step_s=times)
    log.val = {"step": np.array([10.0, 20, 30, 40]), "val_dice": np.array([0.5, 0.8, 0.7, 0.6])}
    found = {a.kind: a for a in find_anomalies(log)}
    assert found["slow_steps"].step == 26
    assert "peaked at 0.8 (step 20)" in found["val_decline"].message
    summary = run_summary(log)
    assert summary.val_best["val_dice"]["best"] == 0.8
    assert summary.val_best["val_dice"]["best_step"] == 20


def test_epoch_table_from_epoch_column_and_from_iters_per_epoch(tmp_path: Path) -> None:
    run = SyntheticRun(total_iters=90, log_interval=10, iters_per_epoch=30, val_every=30)
    log = read_log_file(write_metrics_jsonl(tmp_path / "metrics.jsonl", run))
    rows = epoch_table(log)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["records"] for r in rows] == [3, 3, 3]
    assert rows[0]["val_dice"] == pytest.approx(0.3 + 0.6 * 30 / 90)
    text_log = read_log_file(write_mmengine_log(tmp_path / "i.log", SyntheticRun(total_iters=90)))
    assert epoch_table(text_log) is None
    rows = epoch_table(text_log, iters_per_epoch=30)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[1]["first_step"] == 40 and rows[1]["last_step"] == 60
    assert rows[0]["wall_time_s"] == pytest.approx(2 * 162, abs=2)


def test_status_crashed_and_incomplete(tmp_path: Path) -> None:
    crashed = read_log_file(
        write_mmengine_log(tmp_path / "c.log", SyntheticRun(total_iters=200, crash_at=80))
    )
    summary = run_summary(crashed)
    assert summary.status == "crashed" and "OutOfMemoryError" in summary.status_detail
    running = read_log_file(
        write_mmengine_log(
            tmp_path / "r.log", SyntheticRun(total_iters=200, crash_at=80, truncate_last_line=True)
        )
    )
    # Cutting the file mid-traceback keeps the crash; cut a clean log instead.
    clean = tmp_path / "clean.log"
    text = write_mmengine_log(tmp_path / "x.log", SyntheticRun(total_iters=200)).read_text()
    clean.write_text(text[: len(text) // 2])
    summary = run_summary(read_log_file(clean))
    assert summary.status == "incomplete" and "cut off" in summary.status_detail
    assert running.n_train == 8


def test_format_duration() -> None:
    assert format_duration(3723) == "01:02:03"
    assert format_duration(90000) == "1d 01:00:00"
    assert format_duration(None) == "-"


@pytest.mark.parametrize("alpha", [0.1, 0.9, 0.999])
def test_ema_matches_scipy_linear_filter(alpha: float) -> None:
    from scipy.signal import lfilter

    x = np.random.default_rng(1).random(5000) * 10
    reference = lfilter([1 - alpha], [1, -alpha], x) / (1 - alpha ** np.arange(1, x.size + 1))
    np.testing.assert_allclose(ema(x, alpha), reference, rtol=1e-12)
