"""Readers of training logs: official Sa2VA / mmengine text logs and vesselctl ``metrics.jsonl``.

Both turn into one :class:`TrainingLog`: numeric columns keyed by name (every ``key: value`` pair
is kept, so unknown losses and metrics pass through), validation records, and the events a report
needs (restarts, resumes, checkpoint saves, warnings, tracebacks, a truncated last line).
Canonical column names: ``step``, ``epoch``, ``timestamp`` (seconds), ``time_per_step_s``,
``data_time_s``, ``memory_gib``, ``eta_s``, ``lr``; losses keep the names the log uses.

Also read from text logs: the environment block and the config mmengine prints at each launch.

Parsing is hand-written because no library reads these text logs (mmengine only writes them): a
single pass with a cheap substring test per line, train lines split in C and converted per column
at the end (1.27-1.28 s of CPU to parse 100,000 lines on the 2-core dev machine; BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vesselctl.errors import ReportError

# mmengine's LogProcessor: "Iter(train) [  10/3672]", "Epoch(train)  [1][ 10/1220]",
# "Epoch(val) [1][100/100]", "Iter(val) [100/100]"; the epoch bracket is right-aligned.
_HEADER = re.compile(
    r"\b(Epoch|Iter|Iteration)\((train|val|test)\)\s*(?:\[\s*(\d+)\]\s*)?\[\s*(\d+)\s*/\s*(\d+)\s*\]"
)
# mmengine's file handler writes "%Y/%m/%d %H:%M:%S", its console handler "%m/%d %H:%M:%S".
_TIMESTAMP = re.compile(r"^(?:(\d{4})/)?(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})")
# ``key: value`` pairs; eta is ``str(timedelta)`` so it may read "1 day, 2:03:04".
_PAIR = re.compile(r"([A-Za-z_][\w./-]*): (-?\d+ days?, \d+:\d\d:\d\d|\S+)")
# Console output saved to a file keeps mmengine's colour codes; torchrun may prefix "[rank0]:".
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?", re.MULTILINE)
_MAX_CONFIG_LINES = 2000
_KEY = re.compile(r"[A-Za-z_][\w./-]*")
_RESUMED = re.compile(r"resumed epoch: (\d+), iter: (\d+)")
_SAVING = re.compile(r"Saving checkpoint at (\d+) (iterations|epochs)")
_LEVEL = re.compile(r" - (WARNING|ERROR|CRITICAL) - (.*)")
_EPOCH0 = datetime(1970, 1, 1)

# mmengine key -> canonical column; memory is MB (max_memory_allocated / 2**20).
_MMENGINE_RENAME = {"time": "time_per_step_s", "data_time": "data_time_s", "eta": "eta_s"}
_NOT_VAL_METRICS = {"time", "data_time", "eta", "memory", "lr"}


@dataclass
class LogEvent:
    """Something a report should mention: a restart, a saved checkpoint, a warning, an error."""

    kind: str  # restart | resume | launch | checkpoint | warning | error | traceback | truncated
    message: str
    line: int | None = None  # 1-based line in the source file
    step: int | None = None
    source: str | None = None  # file name the line is in

    def where(self) -> str:
        """``file:line`` (or what of it is known) for messages and tables."""
        if self.source and self.line:
            return f"{self.source}:{self.line}"
        return self.source or (f"line {self.line}" if self.line else "")


@dataclass
class TrainingLog:
    """Everything read from one run's log(s), as numeric columns of equal length."""

    sources: list[Path]
    format: str  # "mmengine" or "vesselctl-jsonl"
    train: dict[str, np.ndarray] = field(default_factory=dict)
    val: dict[str, np.ndarray] = field(default_factory=dict)
    events: list[LogEvent] = field(default_factory=list)
    max_steps: int | None = None
    steps_per_epoch: int | None = None
    # Per train column, which records logged it: a key absent from a line (or null in JSON) is
    # NaN in the column but not a NaN loss.
    logged: dict[str, np.ndarray] = field(default_factory=dict)
    superseded: int = 0  # train records re-run after a restart and dropped from the curves
    environment: dict[str, str] = field(default_factory=dict)  # mmengine's environment block
    config_text: str | None = None  # the config mmengine prints at start ("Config:")
    restart_steps: list[int] = field(default_factory=list)  # step each later attempt resumed at
    lines_read: int = 0

    @property
    def n_train(self) -> int:
        return len(self.train.get("step", ()))

    def nonfinite(self, name: str) -> np.ndarray:
        """Records where ``name`` was logged as NaN or inf (absent values do not count)."""
        values = self.train[name]
        logged = self.logged.get(name)
        bad = ~np.isfinite(values)
        return bad if logged is None else bad & logged

    def columns(self) -> list[str]:
        """Train columns other than the bookkeeping ones, in first-seen order."""
        return [c for c in self.train if c not in ("step", "epoch", "timestamp", "attempt")]

    def val_metrics(self) -> list[str]:
        """Validation columns other than the bookkeeping ones, in first-seen order."""
        return [c for c in self.val if c not in ("step", "epoch", "attempt")]

    def loss_columns(self) -> list[str]:
        """Columns that are losses: the total ``loss`` first, then components as logged."""
        names = [c for c in self.columns() if "loss" in c.lower()]
        return sorted(names, key=lambda c: (c != "loss", names.index(c)))


def _to_float(text: str) -> float | None:
    """A logged value as float; eta strings (``H:MM:SS``) in seconds; None if not numeric."""
    try:
        return float(text)
    except ValueError:
        pass
    if ":" in text:
        days = 0
        if "day" in text:
            head, _, text = text.partition(",")
            days = int(head.split()[0])
        parts = text.strip().split(":")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            h, m, s = (int(p) for p in parts)
            return float(days * 86400 + h * 3600 + m * 60 + s)
    return None


def _slow_pairs(item: str) -> list[tuple[str, float]]:
    """Pairs of an item the fast path could not read: an eta ("1 day, 2:03:04"), several pairs
    joined by one space (mmengine does that for several learning rates), non-numeric values."""
    pairs = []
    for key, raw in _PAIR.findall(item):
        value = _to_float(raw)
        if value is not None:
            pairs.append((key, value))
    return pairs


def _pairs(line: str, start: int) -> list[tuple[str, float]]:
    """The numeric ``key: value`` pairs after a header (mmengine joins items with two spaces)."""
    pairs: list[tuple[str, float]] = []
    for item in line[start:].split("  "):
        key, sep, raw = item.partition(": ")
        if not sep:
            continue
        try:
            pairs.append((key.lstrip(), float(raw)))
        except ValueError:
            hms = raw.rstrip().split(":")
            if len(hms) == 3 and all(part.isdigit() for part in hms):
                seconds = int(hms[0]) * 3600 + int(hms[1]) * 60 + int(hms[2])
                pairs.append((key.lstrip(), float(seconds)))
            else:
                pairs.extend(_slow_pairs(item))
    return pairs


def _timestamp(line: str, year_hint: int, day_cache: dict[str, float]) -> float | None:
    """Seconds since 1970 (naive, as logged) of a line's leading timestamp, or None.

    Dates repeat across thousands of lines, so the date part is converted once and cached.
    """
    if len(line) >= 19 and line[4] == "/" and line[13] == ":" and line[16] == ":":
        date_text, time_text = line[:10], line[11:19]
    elif len(line) >= 14 and line[2] == "/" and line[8] == ":" and line[11] == ":":
        date_text, time_text = f"{year_hint:04d}/{line[:5]}", line[6:14]
    else:
        return None
    day = day_cache.get(date_text)
    if day is None:
        match = _TIMESTAMP.match(f"{date_text} {time_text}")
        if match is None:
            return None
        year, month, day_of_month = match.group(1, 2, 3)
        try:
            day = (datetime(int(year), int(month), int(day_of_month)) - _EPOCH0).total_seconds()
        except ValueError:
            return None
        day_cache[date_text] = day
    try:
        return day + int(time_text[:2]) * 3600 + int(time_text[3:5]) * 60 + int(time_text[6:8])
    except ValueError:
        return None


class _ColumnBuilder:
    """Collects records with varying keys into equal-length columns (missing values are NaN).

    Records are grouped by their key tuple (a log repeats the same few layouts), so each line
    costs one tuple and one append and the columns are filled per group with numpy at the end.
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], tuple[list[int], list[tuple[float, ...]]]] = {}
        self.count = 0

    def add(self, record: dict[str, float]) -> None:
        keys = tuple(record)
        group = self.groups.get(keys)
        if group is None:
            group = self.groups[keys] = ([], [])
        group[0].append(self.count)
        group[1].append(tuple(record.values()))
        self.count += 1

    def arrays(self) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {}
        for keys, (indices, rows) in self.groups.items():
            block = np.array(rows, dtype=float).reshape(len(rows), len(keys))
            where = np.array(indices, dtype=np.int64)
            for position, key in enumerate(keys):
                if key not in columns:
                    columns[key] = np.full(self.count, np.nan)
                columns[key][where] = block[:, position]
        return columns


_DURATION = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d)$", re.MULTILINE)


def _durations_or_nan(texts: tuple[str, ...]) -> np.ndarray:
    """Seconds of ``str(timedelta)`` texts in one regular-expression pass; anything else that
    is not a number becomes NaN (one value at a time, the slow path)."""
    found = _DURATION.findall("\n".join(texts))
    if len(found) == len(texts):
        if not found:
            return np.array([], dtype=float)
        d, h, m, sec = (
            np.fromiter(map(int, (t or "0" for t in column)), dtype=np.int64, count=len(found))
            for column in zip(*found, strict=True)
        )
        return (d * 86400 + h * 3600 + m * 60 + sec).astype(float)
    parsed = [_to_float(text) for text in texts]
    return np.array([np.nan if v is None else v for v in parsed], dtype=float)


class _TrainLines:
    """Train lines of a text log, parsed in bulk.

    Per line only the key sequence (its layout) and the value strings are taken, with C-level
    string splitting; lines are grouped by layout and each group's columns are converted
    in C (``map(float, ...)``, one regular expression for eta texts) at the end, instead of
    converting value by value in Python.
    """

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epochs: list[float] = []
        self.attempts: list[float] = []
        self.stamp_text: list[str] = []  # "YYYY/MM/DD HH:MM:SS" or "" (then see stamp_other)
        self.stamp_other: dict[int, float] = {}
        self.layouts: dict[tuple[str, ...], tuple[list[int], list]] = {}
        self.logged: dict[str, np.ndarray] = {}
        self.checked: dict[tuple[str, ...], bool] = {}

    @property
    def count(self) -> int:
        return len(self.steps)

    def _layout_ok(self, keys: tuple[str, ...]) -> bool:
        known = self.checked.get(keys)
        if known is None:
            known = self.checked[keys] = all(_KEY.fullmatch(key) for key in keys)
        return known

    def add(
        self,
        step: float,
        epoch: float,
        attempt: float,
        rest: str,
        line: str,
        year_hint: int,
        day_cache: dict[str, float],
    ) -> None:
        index = len(self.steps)
        self.steps.append(step)
        self.epochs.append(epoch)
        self.attempts.append(attempt)
        # Fast path: mmengine writes "  key: value  key: value"; turning ": " into the two-space
        # separator and splitting alternates keys and values. A layout (key tuple) is checked
        # once; lines that do not fit (several pairs joined by one space, odd spacing) go
        # through the regular expression.
        parts = rest.rstrip().replace(": ", "  ").split("  ")
        keys: tuple[str, ...] = tuple(parts[1::2])
        values: tuple[str, ...] | list[str] = parts[2::2]
        group = self.layouts.get(keys)
        if group is None or parts[0] or len(parts) % 2 == 0:
            if parts[0] or len(parts) % 2 == 0 or not self._layout_ok(keys):
                pairs = _PAIR.findall(rest)
                keys, values = tuple(zip(*pairs, strict=True)) if pairs else ((), ())
            group = self.layouts.get(keys)
        if group is None:
            group = self.layouts[keys] = ([], [])
        group[0].append(index)
        group[1].append(values)
        if len(line) >= 19 and line[4] == "/" and line[13] == ":" and line[16] == ":":
            self.stamp_text.append(line[:19])
        else:
            self.stamp_text.append("")
            stamp = _timestamp(line, year_hint, day_cache)
            if stamp is not None:
                self.stamp_other[index] = stamp

    def _timestamps(self) -> np.ndarray:
        out = np.full(self.count, np.nan)
        fast = np.array([bool(t) for t in self.stamp_text])
        if fast.any():
            text = "".join(t for t in self.stamp_text if t).encode("ascii", errors="replace")
            digits = np.frombuffer(text, dtype=np.uint8).reshape(-1, 19).astype(np.int64) - 48

            def number(first: int, stop: int) -> np.ndarray:
                value = np.zeros(digits.shape[0], dtype=np.int64)
                for column in range(first, stop):
                    value = value * 10 + digits[:, column]
                return value

            positions = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            valid = ((digits[:, positions] >= 0) & (digits[:, positions] <= 9)).all(axis=1)
            year, month, day = number(0, 4), number(5, 7), number(8, 10)
            valid &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
            year, month, day = (
                np.where(valid, v, d) for v, d in ((year, 1970), (month, 1), (day, 1))
            )
            days = (
                (
                    (year - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (month - 1)
                ).astype("datetime64[D]")
                + (day - 1)
            ).astype(np.int64)
            seconds = days * 86400 + number(11, 13) * 3600 + number(14, 16) * 60 + number(17, 19)
            out[fast] = np.where(valid, seconds.astype(float), np.nan)
        for index, stamp in self.stamp_other.items():
            out[index] = stamp
        return out

    def columns(self) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {"step": np.asarray(self.steps, dtype=float)}
        epochs = np.asarray(self.epochs, dtype=float)
        if np.isfinite(epochs).any():
            columns["epoch"] = epochs
        for keys, (indices, rows) in self.layouts.items():
            if not keys:
                continue
            where = np.asarray(indices, dtype=np.int64)
            # Transposing with zip and converting with map(float) runs in C, without building a
            # numpy string array to astype.
            for key, texts in zip(keys, zip(*rows, strict=True), strict=True):
                try:
                    values = np.fromiter(map(float, texts), dtype=float, count=len(texts))
                except ValueError:  # eta ("1 day, 2:03:04") or text
                    values = _durations_or_nan(texts)
                    if np.isnan(values).all():
                        continue  # a text-valued key such as "mode: text"
                if key == "memory":
                    key, values = "memory_gib", values / 1024.0
                key = _MMENGINE_RENAME.get(key, key)
                if key not in columns:
                    columns[key] = np.full(self.count, np.nan)
                    self.logged[key] = np.zeros(self.count, dtype=bool)
                columns[key][where] = values
                self.logged[key][where] = True
        stamps = self._timestamps()
        if np.isfinite(stamps).any():
            columns["timestamp"] = stamps
        columns["attempt"] = np.asarray(self.attempts, dtype=float)
        return columns


def _drop_superseded(log: TrainingLog, columns: dict[str, np.ndarray], count: bool) -> None:
    """After a restart the steps from the resume point on are logged twice; keep the later run.

    A record is superseded when a record of a later attempt has a step at or before its own.
    """
    steps = columns.get("step")
    if steps is None or steps.size == 0:
        return
    attempts = columns.get("attempt", np.zeros_like(steps))
    keep = np.ones(steps.size, dtype=bool)
    for attempt in np.unique(attempts)[:-1]:
        later = attempts > attempt
        if later.any():
            keep &= ~((attempts == attempt) & (steps >= steps[later].min()))
    if count:
        log.superseded = int((~keep).sum())
    if not keep.all():
        for key in columns:
            columns[key] = columns[key][keep]
        if count:
            for key in log.logged:
                log.logged[key] = log.logged[key][keep]


def _note_restart(
    log: TrainingLog, line: int, previous: float, step: float, source: str | None
) -> None:
    log.restart_steps.append(int(step))
    if step <= previous:
        message = (
            f"step went back from {int(previous)} to {int(step)}: training restarted or resumed "
            "from an earlier checkpoint; the curves keep the later attempt for repeated steps"
        )
    else:
        message = (
            f"training was launched again and continued at step {int(step)} "
            f"(last step before: {int(previous)})"
        )
    log.events.append(LogEvent("restart", message, line=line, step=int(step), source=source))


def read_mmengine_logs(paths: Iterable[Path]) -> TrainingLog:
    """Parse one or more mmengine text logs of one run (several launches: oldest first)."""
    paths = [Path(p) for p in paths]
    log = TrainingLog(sources=paths, format="mmengine")
    train, val = _TrainLines(), _ColumnBuilder()
    last_step = -math.inf
    day_cache: dict[str, float] = {}
    in_traceback = False
    relaunched = False
    block: str | None = None  # "environment" or "config" while reading those multi-line dumps
    first_launch_env = True
    configs: list[list[str]] = []  # the config printed by each launch
    for path in paths:
        year_hint = int(m.group(1)) if (m := re.search(r"(20\d\d)", path.name)) else 2000
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ReportError(f"{path}: cannot read the log ({exc.strerror})") from exc
        if "\x1b[" in text:
            text = _ANSI.sub("", text)
        if "[rank" in text:
            text = _RANK_PREFIX.sub("", text)
        if text and not text.endswith("\n"):
            log.events.append(
                LogEvent(
                    "truncated",
                    "the last line is incomplete (the run is still writing or was killed "
                    "mid-line); it was read as far as it goes",
                    source=path.name,
                )
            )
        for number, line in enumerate(text.splitlines(), start=1):
            if block is not None:
                # Inside the environment block or the config dump mmengine prints at start:
                # it ends at the dash line or the next timestamped log line.
                if line.startswith("-----") or _TIMESTAMP.match(line):
                    block = None
                    if line.startswith("-----"):
                        continue
                elif block == "config":
                    if len(configs[-1]) < _MAX_CONFIG_LINES:
                        configs[-1].append(line)
                    continue
                else:
                    if line.startswith("    ") and not line.startswith("     "):
                        key, sep, value = line.strip().partition(": ")
                        if sep and first_launch_env:
                            log.environment.setdefault(key, value.strip())
                    elif line.strip() in ("System environment:", "Runtime environment:"):
                        pass
                    continue
            if in_traceback:
                if line[:1] in (" ", "\t") or not line.strip() or line.startswith("Traceback"):
                    continue
                if line.startswith(("During handling", "The above exception")):
                    continue
                in_traceback = False
                log.events.append(
                    LogEvent("traceback", line.strip()[:300], line=number, source=path.name)
                )
                continue
            if "(train)" in line:
                header = _HEADER.search(line)
                if header is None or header.group(2) != "train":
                    continue
                _, _, epoch_text, current, total = header.groups()
                if epoch_text is not None:
                    step = (int(epoch_text) - 1) * int(total) + int(current)
                    log.steps_per_epoch = int(total)
                    epoch = float(epoch_text)
                else:
                    step = int(current)
                    log.max_steps = int(total)
                    epoch = math.nan
                if step <= last_step or relaunched:
                    _note_restart(log, number, last_step, step, path.name)
                    relaunched = False
                last_step = step
                train.add(
                    float(step),
                    epoch,
                    float(len(log.restart_steps)),
                    line[header.end() :],
                    line,
                    year_hint,
                    day_cache,
                )
                continue
            if "(val)" in line:
                header = _HEADER.search(line)
                if header is None or header.group(2) != "val":
                    continue
                _, _, epoch_text, current, total = header.groups()
                metrics: dict[str, float] = {}
                for key, value in _pairs(line, header.end()):
                    if key not in _NOT_VAL_METRICS:
                        metrics[key] = value
                # mmengine also logs progress lines inside the val loop; only the line after
                # the loop carries metrics.
                if metrics and current == total:
                    record = {"step": float(max(last_step, 0))}
                    if epoch_text is not None:
                        record["epoch"] = float(epoch_text)
                    record.update(metrics)
                    record["attempt"] = float(len(log.restart_steps))
                    val.add(record)
                continue
            if line.startswith("Traceback (most recent call last)"):
                in_traceback = True
                continue
            if line.strip() in ("System environment:", "Runtime environment:"):
                block = "environment"
                first_launch_env = not train.count
                continue
            if line.endswith(" - INFO - Config:"):
                block = "config"
                configs.append([])
                continue
            if "Checkpoints will be saved to" in line:
                relaunched = train.count > 0
                message = line.split(" - ")[-1].strip()[:300]
                log.events.append(LogEvent("launch", message, line=number, source=path.name))
                continue
            if (match := _RESUMED.search(line)) is not None:
                log.events.append(
                    LogEvent(
                        "resume",
                        match.group(0),
                        line=number,
                        step=int(match.group(2)),
                        source=path.name,
                    )
                )
                continue
            if (match := _SAVING.search(line)) is not None:
                step = int(match.group(1)) if match.group(2) == "iterations" else None
                log.events.append(
                    LogEvent("checkpoint", match.group(0), line=number, step=step, source=path.name)
                )
                continue
            if " - WARNING - " in line or " - ERROR - " in line or " - CRITICAL - " in line:
                match = _LEVEL.search(line)
                if match:
                    kind = "warning" if match.group(1) == "WARNING" else "error"
                    log.events.append(
                        LogEvent(kind, match.group(2)[:300], line=number, source=path.name)
                    )
                continue
            if "out of memory" in line.lower() or "ChildFailedError" in line:
                log.events.append(
                    LogEvent("error", line.strip()[:300], line=number, source=path.name)
                )
        log.lines_read += number if text else 0
    if in_traceback:
        log.events.append(LogEvent("traceback", "traceback without a final exception line"))
    if configs:
        log.config_text = "\n".join(configs[0]).rstrip() + (
            f"\n# ... (cut at {_MAX_CONFIG_LINES} lines)"
            if len(configs[0]) >= _MAX_CONFIG_LINES
            else ""
        )
        changed = [i + 1 for i, c in enumerate(configs) if c != configs[0]]
        if changed:
            log.events.append(
                LogEvent(
                    "warning",
                    f"the config printed by launch(es) {', '.join(map(str, changed))} differs "
                    "from the first launch's; the report shows the first",
                )
            )
    log.train = train.columns()
    log.logged = train.logged
    log.val = val.arrays()
    _drop_superseded(log, log.train, count=True)
    _drop_superseded(log, log.val, count=False)
    return log


_TIME_KEYS = ("timestamp", "wall_time", "unix_time", "time_unix")


def _iso_seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is not None:
            return moment.timestamp()
        return (moment - _EPOCH0).total_seconds()
    return None


class _JsonRecords:
    """metrics.jsonl records grouped by key tuple and converted per column at the end (C-level
    ``map(float, ...)``), instead of a Python loop over every value of every line."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], tuple[list[int], list[tuple[Any, ...]]]] = {}
        self.attempts: list[float] = []
        self.logged: dict[str, np.ndarray] = {}

    def add(self, item: dict[str, Any], attempt: int) -> None:
        keys = tuple(item)
        group = self.groups.get(keys)
        if group is None:
            group = self.groups[keys] = ([], [])
        group[0].append(len(self.attempts))
        group[1].append(tuple(item.values()))
        self.attempts.append(float(attempt))

    def columns(self) -> dict[str, np.ndarray]:
        count = len(self.attempts)
        columns: dict[str, np.ndarray] = {}
        for keys, (indices, rows) in self.groups.items():
            where = np.asarray(indices, dtype=np.int64)
            for key, values in zip(keys, zip(*rows, strict=True), strict=True):
                if key in ("split", "max_steps"):
                    continue
                if key in _TIME_KEYS:
                    seconds = [_iso_seconds(v) for v in values]
                    key = "timestamp"
                    converted = np.array([np.nan if v is None else v for v in seconds])
                elif set(map(type, values)) <= {int, float}:
                    converted = np.fromiter(map(float, values), dtype=float, count=len(values))
                else:  # text, booleans, nulls: keep the numbers, NaN elsewhere
                    converted = np.array(
                        [float(v) if type(v) in (int, float) else np.nan for v in values]
                    )
                    if np.isnan(converted).all():
                        continue
                if key not in columns:
                    columns[key] = np.full(count, np.nan)
                    self.logged[key] = np.zeros(count, dtype=bool)
                columns[key][where] = converted
                # JSON null is "not logged"; a NaN token is a logged NaN.
                self.logged[key][where] = [v is not None for v in values]
        if count:
            columns["attempt"] = np.asarray(self.attempts, dtype=float)
        return columns


def read_metrics_jsonl(path: Path) -> TrainingLog:
    """Parse vesselctl's ``metrics.jsonl``: one JSON object per line, ``"split": "val"`` for
    validation. Lines that are not JSON objects are skipped and reported (a crashed or running
    run often ends in a half-written line); numeric fields are kept whatever their names."""
    path = Path(path)
    log = TrainingLog(sources=[path], format="vesselctl-jsonl")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the metrics file ({exc.strerror})") from exc
    lines = text.splitlines()
    log.lines_read = len(lines)
    train, val = _JsonRecords(), _JsonRecords()
    bad_lines: list[int] = []
    last_step = -math.inf
    for number, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = None
        if not isinstance(item, dict):
            if number == len(lines) and not text.endswith("\n"):
                log.events.append(
                    LogEvent(
                        "truncated",
                        "the last line is incomplete (the run is still writing or was killed "
                        "mid-line); it was skipped",
                        line=number,
                        source=path.name,
                    )
                )
            else:
                bad_lines.append(number)
            continue
        step = item.get("step")
        if type(step) not in (int, float):  # also rejects booleans and missing steps
            bad_lines.append(number)
            continue
        if type(item.get("max_steps")) is int:
            log.max_steps = int(item["max_steps"])
        split = item.get("split", "train")
        if split == "train":
            if step <= last_step:
                _note_restart(log, number, last_step, step, path.name)
            last_step = step
            train.add(item, len(log.restart_steps))
        elif split == "val":
            val.add(item, len(log.restart_steps))
    if bad_lines:
        shown = ", ".join(str(n) for n in bad_lines[:10])
        more = f" and {len(bad_lines) - 10} more" if len(bad_lines) > 10 else ""
        log.events.append(
            LogEvent(
                "error",
                f"{len(bad_lines)} line(s) are not JSON objects with a numeric 'step' and were "
                f"skipped: lines {shown}{more}",
                source=path.name,
            )
        )
    log.train = train.columns()
    log.logged = train.logged
    log.val = val.columns()
    _drop_superseded(log, log.train, count=True)
    _drop_superseded(log, log.val, count=False)
    return log


def looks_like_jsonl(path: Path) -> bool:
    """True when the first non-empty line of ``path`` starts a JSON object."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def read_log_file(path: Path) -> TrainingLog:
    """Read a single log file, choosing the format from its content."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: not a file")
    if looks_like_jsonl(path):
        return read_metrics_jsonl(path)
    return read_mmengine_logs([path])
