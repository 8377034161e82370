"""Find and read what a run left on disk: its log(s), settings, provenance, checkpoints and
evaluation results. Everything but the log is optional; what was looked for and not found is
recorded in ``missing`` so the report can say so plainly.

Accepted inputs: a vesselctl run folder (``metrics.jsonl``), an mmengine/xtuner work_dir (one
``*.log`` per launch, in ``<timestamp>/`` subfolders), or a single log file of either format.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vesselctl.errors import ReportError
from vesselctl.files import sha256_file
from vesselctl.report.logs import TrainingLog, read_log_file, read_metrics_jsonl, read_mmengine_logs

METRICS_NAME = "metrics.jsonl"
EVAL_SUMMARY_NAME = "summary.json"
_CHECKPOINT_NAME = re.compile(r"^(iter|epoch|step|checkpoint|global_step|ckpt)[_-]?\d+", re.I)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
_SKIP_SUBTREES = {
    "settings",
    "versions",
    "packages",
    "run_info",
    "provenance",
    "policy",
    "env",
    "conventions",
    "empty_policy",
    "legend",
}
_MAX_METRIC_ROWS = 80
_MAX_OVERLAYS = 6


@dataclass
class Checkpoint:
    """A saved checkpoint: a file or a folder (DeepSpeed, peft adapters), with its step."""

    path: Path
    step: int | None
    size_bytes: int
    is_dir: bool
    link_target: str | None = None
    aliases: list[str] = field(default_factory=list)  # links to it, e.g. "best", "last"


@dataclass
class MetricRow:
    """One number from an evaluation summary, with its confidence interval when one is given."""

    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """An evaluation folder: its summary.json (read generically) and overlay images."""

    folder: Path
    summary: dict[str, Any]
    metrics: list[MetricRow]
    overlays: list[Path]
    overlay_captions: dict[Path, str] = field(default_factory=dict)


@dataclass
class RunData:
    """Everything found for one input."""

    name: str
    path: Path
    log: TrainingLog
    folder: Path | None = None
    settings_path: Path | None = None
    settings_text: str | None = None
    run_info: dict[str, Any] | None = None
    run_result: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    config_files: list[Path] = field(default_factory=list)
    log_sha256: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def disk_size(path: Path) -> int:
    """Bytes on disk of a file or a folder tree; symbolic links are not followed."""
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            item = Path(root) / name
            if not item.is_symlink():
                total += item.stat().st_size
    return total


def _step_of(name: str) -> int | None:
    match = _LAST_NUMBER.search(name)
    return int(match.group(1)) if match else None


def find_checkpoints(folders: list[Path]) -> list[Checkpoint]:
    """Checkpoints in vesselctl ``checkpoints/`` folders (every entry) and mmengine work_dirs
    (``iter_N.pth`` / ``epoch_N.pth`` files or DeepSpeed folders), sorted by step."""
    found: dict[Path, Checkpoint] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        candidates: list[Path] = []
        if folder.name == "checkpoints":
            candidates = [p for p in folder.iterdir() if not p.name.startswith(".")]
        else:
            candidates = [p for p in folder.iterdir() if _CHECKPOINT_NAME.match(p.name)]
        # Real entries first, so a link such as "best" becomes an alias of what it points to.
        for item in sorted(candidates, key=lambda p: (p.is_symlink(), p.name)):
            resolved = item.resolve()
            if item.name.endswith((".tmp", ".partial")):
                continue
            if resolved in found:
                if item.is_symlink():
                    found[resolved].aliases.append(item.name)
                continue
            link = os.readlink(item) if item.is_symlink() else None
            found[resolved] = Checkpoint(
                path=item,
                step=_step_of(item.name) if link is None else _step_of(Path(link).name),
                size_bytes=disk_size(item) if link is None else 0,
                is_dir=item.is_dir(),
                link_target=link,
            )
    return sorted(found.values(), key=lambda c: (c.step is None, c.step or 0, c.path.name))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _interval(node: dict[str, Any]) -> tuple[float | None, float | None]:
    """A confidence interval in any of the usual spellings: [lo, hi] lists or lo/hi keys."""
    for key, value in node.items():
        lowered = key.lower()
        if "ci" in lowered or "interval" in lowered:
            if isinstance(value, list | tuple) and len(value) == 2:
                low, high = _number(value[0]), _number(value[1])
                if low is not None and high is not None:
                    return low, high
            if isinstance(value, dict):
                low = _number(value.get("low", value.get("lower")))
                high = _number(value.get("high", value.get("upper")))
                if low is not None and high is not None:
                    return low, high
    low_keys = [k for k in node if k.lower().endswith(("_low", "_lower", "lower", "low"))]
    high_keys = [k for k in node if k.lower().endswith(("_high", "_upper", "upper", "high"))]
    if low_keys and high_keys:
        return _number(node[low_keys[0]]), _number(node[high_keys[0]])
    return None, None


def summary_metric_rows(summary: Any, prefix: str = "") -> list[MetricRow]:
    """Flatten an evaluation summary of unknown layout into metric rows.

    A mapping with a numeric ``mean`` or ``value`` is one metric (its interval and other numbers
    such as ``std`` or ``median`` go with it); other numbers become rows under their dotted path;
    lists (per-image tables) and settings/version subtrees are left out.
    """
    rows: list[MetricRow] = []
    if not isinstance(summary, dict):
        return rows
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if str(key).lower() in _SKIP_SUBTREES:
            continue
        number = _number(value)
        if number is not None:
            rows.append(MetricRow(name, number))
        elif isinstance(value, dict):
            centre = _number(value.get("mean", value.get("value")))
            if centre is not None:
                low, high = _interval(value)
                extra = {
                    k: float(v)
                    for k, v in value.items()
                    if k not in ("mean", "value")
                    and _number(v) is not None
                    and not any(s in k.lower() for s in ("ci", "low", "high", "upper"))
                }
                rows.append(MetricRow(name, centre, low, high, extra))
            else:
                rows.extend(summary_metric_rows(value, f"{name}."))
        if len(rows) >= _MAX_METRIC_ROWS:
            break
    return rows[:_MAX_METRIC_ROWS]


def read_evaluation(folder: Path) -> Evaluation:
    """Read an evaluation folder written by `vesselctl evaluate`."""
    folder = Path(folder)
    summary_path = folder / EVAL_SUMMARY_NAME if folder.is_dir() else folder
    if summary_path.name != EVAL_SUMMARY_NAME or not summary_path.is_file():
        raise ReportError(
            f"{folder}: no {EVAL_SUMMARY_NAME} found; pass the --out folder of `vesselctl evaluate`"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{summary_path}: not readable JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise ReportError(f"{summary_path}: expected a JSON object, found {type(summary).__name__}")
    base = summary_path.parent
    overlays, captions = _listed_overlays(summary, base)
    if not overlays:
        pngs = sorted(p for p in base.rglob("*.png") if len(p.relative_to(base).parts) <= 3)
        worst = [p for p in pngs if "worst" in str(p.relative_to(base)).lower()]
        overlays = (worst or pngs)[:_MAX_OVERLAYS]
    return Evaluation(base, summary, summary_metric_rows(summary), overlays, captions)


def _listed_overlays(summary: dict[str, Any], base: Path) -> tuple[list[Path], dict[Path, str]]:
    """Worst-case overlays as `vesselctl evaluate` lists them in summary.json:
    ``"overlays": {"worst": [{"file": ..., "id": ..., "<metric>": value}, ...]}``."""
    listed = summary.get("overlays")
    worst = listed.get("worst") if isinstance(listed, dict) else None
    if not isinstance(worst, list):
        return [], {}
    paths: list[Path] = []
    captions: dict[Path, str] = {}
    for rank, entry in enumerate(worst, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        path = base / entry["file"]
        if not path.is_file() or not path.resolve().is_relative_to(base.resolve()):
            continue
        scores = ", ".join(
            f"{k} {v:.4g}" for k, v in entry.items() if _number(v) is not None and k != "rank"
        )
        captions[path] = f"worst {rank}: {entry.get('id', path.stem)}" + (
            f" ({scores})" if scores else ""
        )
        paths.append(path)
    return paths[:_MAX_OVERLAYS], captions


def _find_evaluations(folder: Path, exclude: Path | None) -> list[Evaluation]:
    found = []
    for depth in ("*", "*/*"):
        for summary in sorted(folder.glob(f"{depth}/{EVAL_SUMMARY_NAME}")):
            if exclude is not None and summary.resolve().is_relative_to(exclude):
                continue
            found.append(read_evaluation(summary.parent))
    return found


def _read_json(path: Path, missing: list[str], what: str) -> dict[str, Any] | None:
    if not path.is_file():
        missing.append(f"{what} ({path.name})")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from exc
    return data if isinstance(data, dict) else None


def _mmengine_logs_in(folder: Path) -> list[Path]:
    """Text logs of an mmengine work_dir, oldest launch first (their names are timestamps)."""
    logs = [p for p in folder.glob("*.log") if p.is_file()]
    logs += [p for p in folder.glob("*/*.log") if p.is_file()]
    return sorted(logs, key=lambda p: (p.name, str(p)))


def _work_dir_of(log_file: Path) -> Path | None:
    """The work_dir of an mmengine log at ``<work_dir>/<timestamp>/<timestamp>.log``, else None."""
    if log_file.parent.name == log_file.stem:
        return log_file.parent.parent
    return None


def read_run(path: Path, exclude: Path | None = None) -> RunData:
    """Read one input (run folder, work_dir or log file) into :class:`RunData`.

    ``exclude`` is a folder to ignore while searching (the report's own output folder).
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(
            f"{path}: no such file or folder; pass a vesselctl run folder, an mmengine work_dir "
            "or a training log file"
        )
    folder: Path | None
    if path.is_dir():
        folder = path
        if (path / METRICS_NAME).is_file():
            log = read_metrics_jsonl(path / METRICS_NAME)
        else:
            logs = _mmengine_logs_in(path)
            if not logs:
                raise ReportError(
                    f"{path}: no {METRICS_NAME} and no *.log file found (looked in the folder "
                    "and one level down); pass a vesselctl run folder, an mmengine work_dir or "
                    "a log file"
                )
            log = read_mmengine_logs(logs)
    else:
        log = read_log_file(path)
        folder = path.parent if path.name == METRICS_NAME else None
    name = (folder or path).name if folder else path.stem
    run = RunData(name=name or str(path), path=path, log=log, folder=folder)
    for source in log.sources:
        run.log_sha256[str(source)] = sha256_file(source)
    if log.n_train == 0:
        run.missing.append("training log lines (no train records were found in the log)")

    if folder is not None and log.format == "vesselctl-jsonl":
        settings = folder / "settings.yaml"
        if settings.is_file():
            run.settings_path = settings
            run.settings_text = settings.read_text(encoding="utf-8", errors="replace")
        else:
            run.missing.append("resolved settings (settings.yaml)")
        run.run_info = _read_json(folder / "run_info.json", run.missing, "environment provenance")
        result = folder / "result.json"
        if result.is_file():
            run.run_result = _read_json(result, [], "train result")
    else:
        # mmengine keeps the config it ran at the top of the work_dir and as
        # <timestamp>/vis_data/config.py; a log file sits in <work_dir>/<timestamp>/.
        work_dir = folder if folder is not None else _work_dir_of(path)
        candidates: list[Path] = []
        if work_dir is not None:
            candidates += sorted(work_dir.glob("*.py")) + sorted(work_dir.glob("*/vis_data/*.py"))
        if folder is None:
            candidates += sorted(path.parent.glob("vis_data/*.py"))
        run.config_files = list(dict.fromkeys(p for p in candidates if p.is_file()))[:3]
        if not run.config_files and log.config_text is None:
            run.missing.append("training config (none printed in the log, no *.py beside it)")
        if not log.environment:
            run.missing.append("environment provenance (no 'System environment' block in the log)")

    checkpoint_folders: list[Path] = []
    if folder is not None:
        checkpoint_folders += [folder / "checkpoints", folder]
    else:
        checkpoint_folders.append(path.parent)
        if (work_dir_of_log := _work_dir_of(path)) is not None:
            checkpoint_folders.append(work_dir_of_log)
    for event in log.events:
        if event.kind == "launch" and "saved to" in event.message:
            target = Path(event.message.split("saved to", 1)[1].strip().rstrip("."))
            checkpoint_folders.append(target)
    run.checkpoints = find_checkpoints(checkpoint_folders)
    if not run.checkpoints:
        looked = ", ".join(str(p) for p in checkpoint_folders[:3])
        run.missing.append(f"checkpoints (looked in {looked})")

    if folder is not None:
        run.evaluations = _find_evaluations(folder, exclude)
    return run
