"""`vesselctl report`: turn one or more training runs into report.md, a self-contained
report.html, PNG plots and report.json.

Reads top to bottom: check the output folder, read every run, compute the numbers, draw the plots,
lay the report out once as blocks (report/document.py), render it twice (Markdown, HTML), then
write the machine-readable files. Works on finished, crashed and still-running runs; says plainly
what it could not find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vesselctl import __version__
from vesselctl.errors import ReportError
from vesselctl.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    run_provenance,
    to_jsonable,
)
from vesselctl.report.analysis import (
    epoch_table,
    find_anomalies,
    loss_table,
    run_summary,
)
from vesselctl.report.document import (
    RunReport,
    build_document,
    gpu_memory,
    refine_status,
    report_title,
)
from vesselctl.report.plots import Curve, all_plots
from vesselctl.report.render import to_html, to_markdown
from vesselctl.report.runs import Evaluation, RunData, read_evaluation, read_run
from vesselctl.settings.base import write_resolved_settings
from vesselctl.settings.report import ReportSettings


@dataclass
class ReportResult:
    """What `vesselctl report` wrote and the headline of each run."""

    out_dir: Path
    report_md: Path
    report_html: Path
    report_json: Path
    plots: list[Path]
    runs: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _unique_names(runs: list[RunData], names: list[str]) -> None:
    if names:
        for run, name in zip(runs, names, strict=True):
            run.name = name
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({count + 1})"


def _check_out_dir(out: Path, settings: ReportSettings) -> None:
    """Refuse to write into a folder being reported (a run's or an evaluation's): its
    settings.yaml, result.json and run_info.json would be overwritten by the report's own, and a
    re-run would delete the evaluation's overlay PNGs as stale report images."""
    out_resolved = out.resolve()
    inputs = [(item, "run") for item in settings.runs]
    inputs += [(item, "evaluation") for item in settings.evaluations]
    for item, what in inputs:
        folder = item.resolve() if item.is_dir() else item.resolve().parent
        if out_resolved == folder:
            raise ReportError(
                f"--out {out} is the folder of the input {item}; the report would overwrite that "
                f"{what}'s own files. Choose another folder, e.g. --out {out / 'report'}"
            )


def run(settings: ReportSettings) -> ReportResult:
    """Read the runs, compute, plot, render and write the report into ``settings.out``."""
    # 1. The output folder must not be one of the inputs (the report writes settings.yaml,
    #    result.json and run_info.json, which run and evaluation folders already have).
    if settings.out is None:
        raise ReportError("no output folder: pass --out DIR")
    out = Path(settings.out)
    for item in [*settings.runs, *settings.evaluations]:
        if not Path(item).exists():
            raise ReportError(
                f"{item}: no such file or folder; pass a vesselctl run folder, an mmengine "
                "work_dir, a training log file or an evaluation folder"
            )
    _check_out_dir(out, settings)
    out.mkdir(parents=True, exist_ok=True)

    # 2. Read every run; an explicit evaluation folder comes first (the summary's headline),
    #    before the others found in the run folder, also when that search found it too.
    runs = [read_run(path, exclude=out.resolve()) for path in settings.runs]
    for run_data, eval_dir in zip(runs, settings.evaluations, strict=False):
        evaluation: Evaluation = read_evaluation(eval_dir)
        named = evaluation.folder.resolve()
        others = [e for e in run_data.evaluations if e.folder.resolve() != named]
        run_data.evaluations = [evaluation, *others]
    _unique_names(runs, settings.names)

    # 3. Numbers: summary, loss table, epochs, anomalies.
    reports = [
        RunReport(
            data=r,
            summary=run_summary(
                r.log,
                iters_per_epoch=settings.iters_per_epoch,
                samples_per_step=settings.samples_per_step,
                gpu_memory_gib=gpu_memory(r),
            ),
            losses=loss_table(r.log, settings.smoothing_window),
            epochs=epoch_table(r.log, settings.iters_per_epoch),
            anomalies=find_anomalies(r.log, settings.anomalies, settings.ema),
        )
        for r in runs
    ]

    for report in reports:
        refine_status(report.summary, report.data)

    # 4. Plots (one figure per kind, all runs overlaid).
    figures = all_plots([Curve(r.data.name, r.data.log) for r in reports], settings.ema)

    # 5. Lay the report out once; it is rendered twice below.
    title = report_title(settings.title, reports)
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    blocks, plot_images, overlay_images = build_document(
        reports, figures, generated=generated, smoothing_window=settings.smoothing_window
    )

    # 6. Write: images first, then the documents, the numbers, and result.json last (its
    #    presence marks a complete report).
    written = {out / image.file_name for image in [*plot_images, *overlay_images]}
    for image in [*plot_images, *overlay_images]:
        atomic_write_bytes(out / image.file_name, image.data)
    if (out / "report.json").is_file():
        # Re-reporting into the same folder: drop images of the previous report that this one
        # no longer has (only PNGs in the two image folders a report writes).
        for stale in [*out.glob("plots/*.png"), *out.glob("overlays/*.png")]:
            if stale not in written:
                stale.unlink()
    report_md = out / "report.md"
    report_html = out / "report.html"
    atomic_write_text(report_md, to_markdown(title, blocks))
    atomic_write_text(report_html, to_html(title, blocks))
    report_json = out / "report.json"
    atomic_write_json(report_json, _report_numbers(title, generated, settings, reports, figures))
    write_resolved_settings(settings, out)
    atomic_write_json(out / "run_info.json", run_provenance())
    missing = [f"{r.data.name}: {m}" for r in reports for m in r.data.missing]
    missing += [f"{r.data.name}: evaluation" for r in reports if not r.data.evaluations]
    result = ReportResult(
        out_dir=out,
        report_md=report_md,
        report_html=report_html,
        report_json=report_json,
        plots=[out / image.file_name for image in plot_images],
        runs=[_headline(r) for r in reports],
        missing=missing,
    )
    atomic_write_json(out / "result.json", to_jsonable(result))
    return result


def _headline(report: RunReport) -> dict[str, Any]:
    """One run's row of result.json and of the command's summary table."""
    problems, warnings = report.problem_counts()
    return {
        "name": report.data.name,
        "status": report.summary.status,
        "steps_done": report.summary.steps_done,
        "max_steps": report.summary.max_steps,
        "final_loss": report.losses[0].last if report.losses else None,
        "problems": problems,
        "warnings": warnings,
        "evaluations": len(report.data.evaluations),
    }


def _report_numbers(
    title: str,
    generated: str,
    settings: ReportSettings,
    reports: list[RunReport],
    figures: dict[str, tuple[str, bytes]],
) -> dict[str, Any]:
    runs = []
    for report in reports:
        run = report.data
        runs.append(
            {
                "name": run.name,
                "path": str(run.path),
                "format": run.log.format,
                "log_files": run.log_sha256,
                "summary": report.summary,
                "losses": report.losses,
                "epochs": report.epochs,
                "anomalies": report.anomalies,
                "checkpoints": [
                    {
                        "path": str(c.path),
                        "step": c.step,
                        "size_bytes": c.size_bytes,
                        "is_dir": c.is_dir,
                        "link_target": c.link_target,
                    }
                    for c in run.checkpoints
                ],
                "evaluations": [
                    {
                        "folder": str(e.folder),
                        "metrics": e.metrics,
                        "overlays": [str(p) for p in e.overlays],
                    }
                    for e in run.evaluations
                ],
                "settings_path": str(run.settings_path) if run.settings_path else None,
                "run_info": run.run_info,
                "missing": run.missing,
            }
        )
    return to_jsonable(
        {
            "title": title,
            "generated": generated,
            "vesselctl": __version__,
            "ema": settings.ema,
            "smoothing_window": settings.smoothing_window,
            "plots": sorted(f"plots/{name}" for name in figures),
            "runs": runs,
        }
    )
