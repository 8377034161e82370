"""The report's content, laid out once as blocks (see render.py) from the computed numbers of
each run: headline notices, the side-by-side summary, plots, loss, epoch, anomaly, checkpoint,
evaluation and provenance sections. render.py turns the blocks into Markdown and HTML."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vesselctl import __version__
from vesselctl.files import to_jsonable
from vesselctl.report.analysis import (
    Anomaly,
    LossRow,
    RunSummary,
    format_duration,
)
from vesselctl.report.render import (
    Block,
    Code,
    Details,
    Heading,
    Image,
    Notice,
    Paragraph,
    Table,
)
from vesselctl.report.runs import RunData

_OVERLAY_MAX_WIDTH = 720


@dataclass
class RunReport:
    """One run with everything computed from it."""

    data: RunData
    summary: RunSummary
    losses: list[LossRow]
    epochs: list[dict[str, Any]] | None
    anomalies: list[Anomaly]

    def problem_counts(self) -> tuple[int, int]:
        """How many anomalies are errors (problems) and how many are warnings."""
        errors = sum(a.severity == "error" for a in self.anomalies)
        warnings = sum(a.severity == "warning" for a in self.anomalies)
        return errors, warnings


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def _loss_value(value: float) -> str:
    """Two decimals, as people write loss tables (13.76, 0.48); small values keep 3 digits."""
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3g}"


def _pct(drop: float | None) -> str:
    """A drop in percent as words: positive drops read "down", negative ones "up"."""
    if drop is None:
        return "-"
    return f"down {drop:.1f}%" if drop >= 0 else f"up {-drop:.1f}%"


def _size(num_bytes: int) -> str:
    size = float(num_bytes)
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def gpu_memory(run: RunData) -> float | None:
    gpus = (run.run_info or {}).get("gpus") or []
    sizes = [g.get("memory_gib") for g in gpus if isinstance(g, dict)]
    sizes = [float(s) for s in sizes if isinstance(s, int | float)]
    return min(sizes) if sizes else None


def refine_status(summary: RunSummary, run: RunData) -> None:
    """A log without a total step count cannot show that training ended; the train stage's
    result.json (written last) or an ETA of zero on the last record can."""
    if summary.status not in ("incomplete", "unknown"):
        return
    if run.run_result is not None:
        stated = run.run_result.get("status")
        summary.status = str(stated) if isinstance(stated, str) else "finished"
        summary.status_detail = f"result.json of the run says so (last step {summary.steps_done})"
    elif summary.last_eta_s == 0:
        summary.status = "finished"
        summary.status_detail = f"the last record (step {summary.steps_done}) has an ETA of 0"


def _status_notice(report: RunReport) -> Notice:
    s = report.summary
    kind = {"finished": "ok", "crashed": "error", "empty": "error"}.get(s.status, "warning")
    return Notice(f"{report.data.name}: {s.status}: {s.status_detail}.", kind)


def _missing_notices(report: RunReport) -> list[Notice]:
    run = report.data
    notices = []
    if not run.evaluations:
        notices.append(
            Notice(
                f"{run.name}: no evaluation found. A falling loss says nothing about segmentation "
                "quality; run `vesselctl evaluate` on held-out images and report again (pass "
                "`--eval EVAL_DIR`, or keep the evaluation in a sub-folder of the run).",
                "warning",
            )
        )
    if not report.summary.val_best:
        notices.append(
            Notice(
                f"{run.name}: no validation metrics in the log, so over-fitting cannot be seen "
                "and the best checkpoint cannot be chosen on a real metric.",
                "warning",
            )
        )
    others = [m for m in run.missing if not m.startswith("training log lines")]
    if others:
        notices.append(Notice(f"{run.name}: not found: " + "; ".join(others) + ".", "info"))
    errors, warnings = report.problem_counts()
    if errors or warnings:
        notices.append(
            Notice(
                f"{run.name}: {errors} problem(s) and {warnings} warning(s) in the log; see "
                "Anomalies.",
                "error" if errors else "warning",
            )
        )
    return notices


def _eval_headline(run: RunData) -> str:
    if not run.evaluations:
        return "none found"
    rows = run.evaluations[0].metrics
    preferred = [r for name in ("macro.dice", "macro.cldice") for r in rows if r.name == name]
    picked = preferred or [r for r in rows if r.ci_low is not None][:2] or rows[:2]
    parts = []
    for row in picked:
        ci = f" [{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]" if row.ci_low is not None else ""
        parts.append(f"{row.name} {_fmt(row.value)}{ci}")
    return "; ".join(parts) or "summary without numbers"


def _summary_table(reports: list[RunReport]) -> Table:
    headers = ["", *[r.data.name for r in reports]]
    loss_names: list[str] = []
    for report in reports:
        for row in report.losses:
            if row.name not in loss_names:
                loss_names.append(row.name)
    rows: list[list[str]] = []

    def add(label: str, cells: list[str]) -> None:
        rows.append([label, *cells])

    add("status", [r.summary.status for r in reports])
    add("log format", [r.data.log.format for r in reports])
    add(
        "steps",
        [
            f"{r.summary.steps_done if r.summary.steps_done is not None else '-'}"
            + (f" / {r.summary.max_steps}" if r.summary.max_steps else "")
            for r in reports
        ],
    )
    add("epochs reached", [_fmt(r.summary.epochs_done) for r in reports])
    add("train records", [str(r.summary.records) for r in reports])
    add("wall time", [format_duration(r.summary.wall_time_s) for r in reports])
    add("time per step (median)", [f"{_fmt(r.summary.time_per_step_median_s)} s" for r in reports])
    add(
        "data loading share",
        [
            "-" if r.summary.data_time_share is None else f"{r.summary.data_time_share * 100:.1f}%"
            for r in reports
        ],
    )
    add("samples / s (median)", [_fmt(r.summary.samples_per_s_median) for r in reports])
    add(
        "seconds per sample",
        [
            _fmt(1 / r.summary.samples_per_s_median) if r.summary.samples_per_s_median else "-"
            for r in reports
        ],
    )
    add(
        "peak GPU memory",
        [
            "-"
            if r.summary.peak_memory_gib is None
            else f"{r.summary.peak_memory_gib:.1f} GiB"
            + (f" of {r.summary.gpu_memory_gib:.0f} GiB" if r.summary.gpu_memory_gib else "")
            for r in reports
        ],
    )
    add("last ETA in log", [format_duration(r.summary.last_eta_s) for r in reports])
    for name in loss_names:
        cells = []
        for report in reports:
            row = next((x for x in report.losses if x.name == name), None)
            cells.append(
                "-"
                if row is None
                else f"{_loss_value(row.first)} -> {_loss_value(row.last)} ({_pct(row.drop_pct)})"
            )
        add(f"{'total loss' if name == 'loss' else name}: first -> last", cells)
    val_names: list[str] = []
    for report in reports:
        val_names += [n for n in report.summary.val_best if n not in val_names]
    for name in val_names:
        cells = []
        for report in reports:
            best = report.summary.val_best.get(name)
            cells.append(
                "-"
                if best is None
                else f"best {best['best']:.4g} @ {int(best['best_step'])}, last {best['last']:.4g}"
            )
        add(name if name.startswith("val") else f"val {name}", cells)
    add("evaluation", [_eval_headline(r.data) for r in reports])
    add(
        "checkpoints",
        [
            f"{len(r.data.checkpoints)} ({_size(sum(c.size_bytes for c in r.data.checkpoints))})"
            for r in reports
        ],
    )
    add(
        "anomalies (problems / warnings)",
        ["{} / {}".format(*r.problem_counts()) for r in reports],
    )
    return Table(headers, rows)


def _loss_blocks(report: RunReport, window: int) -> list[Block]:
    if not report.losses:
        return [Notice(f"{report.data.name}: no loss values were logged.", "error")]
    rows = [
        [
            row.name,
            f"{row.first:.4f} (step {row.first_step})",
            f"{row.last:.4f} (step {row.last_step})",
            _pct(row.drop_pct),
            f"{row.first_smoothed:.4f}",
            f"{row.last_smoothed:.4f}",
            _pct(row.drop_smoothed_pct),
            f"{row.minimum:.4f} (step {row.minimum_step})",
            str(row.records) + (f" ({row.nonfinite} NaN/inf)" if row.nonfinite else ""),
        ]
        for row in report.losses
    ]
    headers = [
        "loss",
        "first",
        "last",
        "change",
        "first (smoothed)",
        "last (smoothed)",
        "change (smoothed)",
        "minimum",
        "records",
    ]
    caption = (
        "first/last: the first and last finite value logged; smoothed: the mean of the first/"
        f"last {window} logged values; change: (first - last) / first."
    )
    if report.data.log.format == "mmengine":
        caption += " mmengine logs the mean over each logging interval, not single steps."
    return [Table(headers, rows, caption)]


def _epoch_blocks(report: RunReport) -> list[Block]:
    if report.epochs is None:
        return [
            Paragraph(
                "The log counts iterations only, so epochs are unknown; set `iters_per_epoch` "
                "(`--set iters_per_epoch=N`) for a per-epoch table."
            )
        ]
    losses = [row.name for row in report.losses]
    val_names = report.data.log.val_metrics()
    headers = ["epoch", "steps", "records"]
    headers += [f"{name} mean" for name in losses]
    if losses:
        headers.append(f"{losses[0]} last")
    headers += ["s / step", "peak GiB", "wall time"]
    headers += [v if v.startswith("val") else f"val {v}" for v in val_names]
    rows = []
    for epoch in report.epochs:
        row = [
            str(epoch["epoch"]),
            f"{epoch['first_step']}-{epoch['last_step']}",
            str(epoch["records"]),
        ]
        row += [_fmt(epoch.get(f"{name}_mean")) for name in losses]
        if losses:
            row.append(_fmt(epoch.get(f"{losses[0]}_last")))
        row += [
            _fmt(epoch.get("time_per_step_s_mean")),
            _fmt(epoch.get("memory_gib_peak"), 3),
            format_duration(epoch.get("wall_time_s")),
            *[_fmt(epoch.get(v)) for v in val_names],
        ]
        rows.append(row)
    return [Table(headers, rows)]


def _anomaly_blocks(report: RunReport) -> list[Block]:
    if not report.anomalies:
        return [
            Notice("No anomalies found: no NaN/inf, spikes, divergence, stalls or restarts.", "ok")
        ]
    rows = [
        [a.severity, a.kind, "-" if a.step is None else str(a.step), a.where or "-", a.message]
        for a in report.anomalies[:200]
    ]
    blocks: list[Block] = [Table(["severity", "kind", "step", "where", "what"], rows)]
    if len(report.anomalies) > 200:
        blocks.append(Paragraph(f"{len(report.anomalies) - 200} more in report.json."))
    return blocks


def _checkpoint_blocks(report: RunReport) -> list[Block]:
    checkpoints = report.data.checkpoints
    saved = [e.step for e in report.data.log.events if e.kind == "checkpoint" and e.step]
    blocks: list[Block] = []
    if saved:
        steps = ", ".join(str(step) for step in saved[:30]) + (" ..." if len(saved) > 30 else "")
        blocks.append(Paragraph(f"The log reports checkpoints saved at steps {steps}."))
    if not checkpoints:
        return [*blocks, Paragraph("No checkpoint files found on disk.")]
    rows = [
        [
            c.path.name + (f" ({', '.join(c.aliases)})" if c.aliases else ""),
            "-" if c.step is None else str(c.step),
            _size(c.size_bytes) if c.link_target is None else f"link to {c.link_target}",
            "folder" if c.is_dir else "file",
            str(c.path),
        ]
        for c in checkpoints
    ]
    total = sum(c.size_bytes for c in checkpoints)
    return [
        *blocks,
        Table(
            ["checkpoint", "step", "size on disk", "type", "path"],
            rows,
            f"{len(checkpoints)} checkpoint(s), {_size(total)} in all",
        ),
    ]


def _overlay_image(path: Path, file_name: str, caption: str | None = None) -> Image:
    """An overlay PNG, scaled down for the page when it is wide."""
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        image.load()
        if image.width > _OVERLAY_MAX_WIDTH:
            height = round(image.height * _OVERLAY_MAX_WIDTH / image.width)
            image = image.resize((_OVERLAY_MAX_WIDTH, height))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return Image(file_name, buffer.getvalue(), caption or f"{path.name} (from {path.parent})")


_COMPARED_METRICS = ("dice", "cldice", "iou", "auc_roc", "auc_pr")


def _comparison_blocks(summary: dict[str, Any], ci_header: str) -> list[Block]:
    """The paired comparison `vesselctl evaluate --compare` wrote (e.g. with the all-empty
    prediction as the floor): both means side by side, the per-image difference and wins."""
    compare = summary.get("compare")
    paired = compare.get("paired") if isinstance(compare, dict) else None
    if not isinstance(paired, dict):
        return []
    macro = summary.get("macro") if isinstance(summary.get("macro"), dict) else {}
    other_means = compare.get("other_macro_mean")
    other_means = other_means if isinstance(other_means, dict) else {}
    rows = []
    for metric in _COMPARED_METRICS:
        stats = paired.get(metric)
        if not isinstance(stats, dict):
            continue
        this = macro.get(metric, {}).get("mean") if isinstance(macro.get(metric), dict) else None
        low, high = stats.get("ci_low"), stats.get("ci_high")
        rows.append(
            [
                metric,
                _fmt(this),
                _fmt(other_means.get(metric)),
                _fmt(stats.get("mean_difference")),
                "-" if low is None or high is None else f"[{_fmt(low)}, {_fmt(high)}]",
                f"{stats.get('a_better', '-')} / {stats.get('b_better', '-')} / "
                f"{stats.get('ties', '-')}",
            ]
        )
    if not rows:
        return []
    return [
        Paragraph(
            f"Compared with `{compare.get('other_pred')}` on the same images (per-image "
            "difference, this minus other):"
        ),
        Table(
            ["metric", "this", "other", "difference", ci_header, "this better / other / ties"],
            rows,
        ),
    ]


def _evaluation_blocks(report: RunReport, index: int) -> tuple[list[Block], list[Image]]:
    blocks: list[Block] = []
    images: list[Image] = []
    for evaluation in report.data.evaluations:
        blocks.append(Paragraph(f"Evaluation folder: `{evaluation.folder}`"))
        rows = [
            [
                row.name,
                _fmt(row.value),
                "-" if row.ci_low is None else f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]",
                ", ".join(f"{k} {_fmt(v)}" for k, v in row.extra.items()) or "-",
            ]
            for row in evaluation.metrics
        ]
        bootstrap = evaluation.summary.get("bootstrap")
        confidence = bootstrap.get("confidence") if isinstance(bootstrap, dict) else None
        ci_header = (
            f"{confidence * 100:g}% CI" if isinstance(confidence, int | float) else "CI (as given)"
        )
        if rows:
            blocks.append(Table(["metric", "value", ci_header, "other"], rows))
        else:
            blocks.append(Paragraph("The summary holds no numbers this report can read."))
        blocks.extend(_comparison_blocks(evaluation.summary, ci_header))
        for overlay in evaluation.overlays:
            # Numbered across the run's evaluations: theirs often share file names.
            file_name = f"overlays/run{index}_{len(images):02d}_{overlay.name}"
            images.append(
                _overlay_image(overlay, file_name, evaluation.overlay_captions.get(overlay))
            )
        if evaluation.overlays:
            blocks.append(Paragraph("Worst cases (overlays from the evaluation):"))
            blocks.extend(images[-len(evaluation.overlays) :])
    return blocks, images


def _provenance_blocks(report: RunReport) -> list[Block]:
    run = report.data
    blocks: list[Block] = []
    rows = [[str(path), digest, run.log.format] for path, digest in run.log_sha256.items()]
    blocks.append(Table(["log file", "sha256", "format"], rows, f"{run.log.lines_read} lines read"))
    info = run.run_info or {}
    if info:
        env_rows = [
            [key, str(info[key])]
            for key in ("created", "host", "platform", "python", "git_revision")
            if key in info
        ]
        for name, version in (info.get("packages") or {}).items():
            env_rows.append([name, str(version)])
        for gpu in info.get("gpus") or []:
            if isinstance(gpu, dict):
                env_rows.append(
                    [
                        f"GPU {gpu.get('index', '?')}",
                        f"{gpu.get('name', '?')}, {gpu.get('memory_gib', '?')} GiB",
                    ]
                )
        blocks.append(Table(["environment", "value"], env_rows))
    if run.log.environment:
        # mmengine's own "System environment" / "Runtime environment" block.
        env_rows = [[key, value[:200]] for key, value in run.log.environment.items()]
        blocks.append(Table(["environment (from the log)", "value"], env_rows))
    if run.settings_text is not None:
        blocks.append(Details(f"settings ({run.settings_path})", [Code(run.settings_text, "yaml")]))
    if run.log.config_text and not run.config_files:
        blocks.append(
            Details(
                "training config (printed at the start of the log)",
                [Code(run.log.config_text, "python")],
            )
        )
    for config in run.config_files:
        lines = config.read_text(encoding="utf-8", errors="replace").splitlines()
        shown = "\n".join(lines[:300]) + ("\n# ... (cut at 300 lines)" if len(lines) > 300 else "")
        blocks.append(Details(f"training config ({config})", [Code(shown, "python")]))
    if run.run_result:
        blocks.append(Details("train result.json", [Code(_json_text(run.run_result), "json")]))
    return blocks


def _json_text(data: Any) -> str:
    return json.dumps(to_jsonable(data), indent=2)


def report_title(title: str | None, reports: list[RunReport]) -> str:
    """The given title, or one built from the run names."""
    if title:
        return title
    names = [r.data.name for r in reports]
    if len(names) == 1:
        return f"Training report: {names[0]}"
    return "Training comparison: " + " vs ".join(names)


def build_document(
    reports: list[RunReport],
    figures: dict[str, tuple[str, bytes]],
    *,
    generated: str,
    smoothing_window: int,
) -> tuple[list[Block], list[Image], list[Image]]:
    """The whole report as blocks, plus the plot and overlay images it shows (to write beside
    report.md, which links them by file name)."""
    blocks: list[Block] = [
        Paragraph(
            f"Generated {generated} by vesselctl {__version__} from: "
            + ", ".join(f"`{r.data.path}`" for r in reports)
            + "."
        )
    ]
    blocks.append(Heading("At a glance"))
    for report in reports:
        blocks.append(_status_notice(report))
        blocks.extend(_missing_notices(report))
    blocks.append(_summary_table(reports))
    blocks.append(Heading("Curves"))
    plot_images = [Image(f"plots/{name}", png, caption) for name, (caption, png) in figures.items()]
    blocks.extend(plot_images or [Paragraph("Nothing to plot: no numeric train records.")])
    overlay_images: list[Image] = []
    for index, report in enumerate(reports):
        prefix = f"{report.data.name}: " if len(reports) > 1 else ""
        blocks.append(Heading(f"{prefix}Losses"))
        blocks.extend(_loss_blocks(report, smoothing_window))
        blocks.append(Heading(f"{prefix}Per epoch"))
        blocks.extend(_epoch_blocks(report))
        blocks.append(Heading(f"{prefix}Anomalies"))
        blocks.extend(_anomaly_blocks(report))
        blocks.append(Heading(f"{prefix}Checkpoints"))
        blocks.extend(_checkpoint_blocks(report))
        blocks.append(Heading(f"{prefix}Evaluation"))
        if report.data.evaluations:
            eval_blocks, images = _evaluation_blocks(report, index)
            blocks.extend(eval_blocks)
            overlay_images.extend(images)
        else:
            blocks.append(
                Notice(
                    "No evaluation found: a falling loss says nothing about segmentation "
                    "quality; run `vesselctl evaluate` and report again.",
                    "warning",
                )
            )
        blocks.append(Heading(f"{prefix}Provenance"))
        blocks.extend(_provenance_blocks(report))

    return blocks, plot_images, overlay_images
