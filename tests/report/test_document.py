"""Report layout: titles, status refinement and the blocks built for one run."""

from __future__ import annotations

from pathlib import Path

from vesselctl.report.analysis import find_anomalies, loss_table, run_summary
from vesselctl.report.document import RunReport, build_document, refine_status, report_title
from vesselctl.report.logs import read_log_file
from vesselctl.report.render import Heading, Notice, Table
from vesselctl.report.runs import read_run
from vesselctl.report.synthetic import SyntheticRun, write_metrics_jsonl, write_run_folder


def _report(run) -> RunReport:
    return RunReport(run, run_summary(run.log), loss_table(run.log), None, find_anomalies(run.log))


def test_titles() -> None:
    assert report_title("Mine", []) == "Mine"


def test_result_json_marks_a_run_finished(tmp_path: Path) -> None:
    folder = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=100, crash_at=50))
    run = read_run(folder)
    report = _report(run)
    assert report.summary.status == "unknown"
    refine_status(report.summary, run)
    assert report.summary.status == "unknown"  # no result.json, last ETA not 0
    run.run_result = {"status": "finished"}
    refine_status(report.summary, run)
    assert report.summary.status == "finished"
    assert report_title(None, [report]) == "Training report: run"


def test_blocks_for_a_log_without_extras(tmp_path: Path) -> None:
    log_path = write_metrics_jsonl(tmp_path / "m.jsonl", SyntheticRun(total_iters=60))
    log = read_log_file(log_path)
    run = read_run(log_path)
    assert run.log.n_train == log.n_train
    blocks, plots, overlays = build_document(
        [_report(run)], {}, generated="now", smoothing_window=5
    )
    headings = [b.text for b in blocks if isinstance(b, Heading)]
    assert headings[:2] == ["At a glance", "Curves"]
    assert {"Losses", "Per epoch", "Anomalies", "Checkpoints", "Evaluation", "Provenance"} <= set(
        headings
    )
    notices = [b.text for b in blocks if isinstance(b, Notice)]
    assert any("no evaluation found" in text for text in notices)
    assert plots == [] and overlays == []
    assert any(isinstance(b, Table) for b in blocks)


def test_comparison_from_evaluate_compare_is_shown_side_by_side() -> None:
    from vesselctl.report.document import _comparison_blocks
    from vesselctl.report.render import Paragraph

    summary = {
        "macro": {"dice": {"mean": 0.66}, "iou": {"mean": 0.5}},
        "compare": {
            "other_pred": "eval/baseline-empty",
            "other_macro_mean": {"dice": 0.0, "iou": 0.0},
            "paired": {
                "dice": {"mean_difference": 0.66, "ci_low": 0.6, "ci_high": 0.7, "a_better": 6,
                         "b_better": 0, "ties": 0},
            },
        },
    }  # fmt: skip
    paragraph, table = _comparison_blocks(summary, "95% CI")
    assert isinstance(paragraph, Paragraph) and "eval/baseline-empty" in paragraph.text
    assert isinstance(table, Table)
    assert table.rows == [["dice", "0.66", "0", "0.66", "[0.6, 0.7]", "6 / 0 / 0"]]
    assert _comparison_blocks({"macro": {}}, "95% CI") == []
