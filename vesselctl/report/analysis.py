"""Numbers a report states about a training log: loss tables, epochs, speed, memory, status and
anomalies. Pure numpy on the columns of a :class:`~vesselctl.report.logs.TrainingLog`.

Definitions (also printed in the report):
- *first* / *last*: the first and the last finite value logged for the loss (mmengine logs the
  mean over its logging window, so "first" already averages the first ``interval`` iterations);
- *first (smoothed)* / *last (smoothed)*: the mean of the first / last ``window`` finite values;
- *drop %*: ``(first - last) / first * 100``; positive means the loss fell;
- *EMA*: exponential moving average ``s_t = a*s_(t-1) + (1-a)*x_t`` with bias correction (as
  TensorBoard's smoothing), computed over finite values only.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vesselctl.report.logs import TrainingLog
from vesselctl.settings.report import AnomalySettings


@dataclass
class Anomaly:
    """One finding, with where it is and what to do."""

    kind: str  # nonfinite | spike | divergence | stuck | slow_steps | stall | restart | crash ...
    severity: str  # error | warning | info
    message: str
    step: int | None = None
    where: str = ""


@dataclass
class LossRow:
    """Initial / final / drop of one loss column."""

    name: str
    first: float
    first_step: int
    last: float
    last_step: int
    drop_pct: float | None
    first_smoothed: float
    last_smoothed: float
    drop_smoothed_pct: float | None
    minimum: float
    minimum_step: int
    records: int
    nonfinite: int


@dataclass
class RunSummary:
    """Headline numbers of one run."""

    status: str
    status_detail: str
    steps_done: int | None
    max_steps: int | None
    epochs_done: float | None
    records: int
    wall_time_s: float | None
    wall_time_source: str
    time_per_step_median_s: float | None
    data_time_share: float | None
    samples_per_s_median: float | None
    samples_per_s_source: str
    peak_memory_gib: float | None
    median_memory_gib: float | None
    gpu_memory_gib: float | None
    last_eta_s: float | None
    val_best: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings_count: int = 0


def _finite(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values)


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    """Bias-corrected exponential moving average over the finite entries (others stay NaN).

    ``alpha`` is the weight of the past (0 = no smoothing). Written with numpy in blocks rather
    than scipy.signal.lfilter so a report does not import scipy.signal (a heavy import) for one
    filter: inside a block of length k,
    ``s_j = a^(j+1) s_prev + (1-a) a^j cumsum(x_i a^-i)``, with k chosen so a^-k stays <= 1e10.
    """
    out = np.full(values.shape, np.nan)
    mask = _finite(values)
    x = values[mask]
    if x.size == 0:
        return out
    if alpha <= 0:
        out[mask] = x
        return out
    block = max(1, int(math.log(1e10) / -math.log(alpha)))
    smoothed = np.empty(x.size)
    state = 0.0
    for start in range(0, x.size, block):
        part = x[start : start + block]
        powers = alpha ** np.arange(part.size)
        running = (1.0 - alpha) * powers * np.cumsum(part / powers) + alpha * powers * state
        smoothed[start : start + part.size] = running
        state = float(running[-1])
    out[mask] = smoothed / (1.0 - alpha ** np.arange(1, x.size + 1))
    return out


def _smoothing_window(count: int, window: int) -> int:
    return max(1, min(window, count // 2 if count >= 2 else 1))


def _drop(first: float, last: float) -> float | None:
    if first == 0 or not math.isfinite(first) or not math.isfinite(last):
        return None
    return (first - last) / abs(first) * 100.0


def loss_table(log: TrainingLog, window: int = 10) -> list[LossRow]:
    """Initial / final / drop per loss column (see the module docstring for the definitions)."""
    rows = []
    steps = log.train.get("step", np.array([]))
    for name in log.loss_columns():
        values = log.train[name]
        mask = _finite(values)
        if not mask.any():
            continue
        x, s = values[mask], steps[mask]
        k = _smoothing_window(x.size, window)
        first_smoothed, last_smoothed = float(x[:k].mean()), float(x[-k:].mean())
        low = int(np.argmin(x))
        rows.append(
            LossRow(
                name=name,
                first=float(x[0]),
                first_step=int(s[0]),
                last=float(x[-1]),
                last_step=int(s[-1]),
                drop_pct=_drop(float(x[0]), float(x[-1])),
                first_smoothed=first_smoothed,
                last_smoothed=last_smoothed,
                drop_smoothed_pct=_drop(first_smoothed, last_smoothed),
                minimum=float(x[low]),
                minimum_step=int(s[low]),
                records=int(x.size),
                nonfinite=int(log.nonfinite(name).sum()),
            )
        )
    return rows


def epoch_numbers(log: TrainingLog, iters_per_epoch: int | None) -> np.ndarray | None:
    """Epoch of each train record: logged, or derived from ``iters_per_epoch``; None if unknown."""
    if "epoch" in log.train and _finite(log.train["epoch"]).any():
        return np.floor(log.train["epoch"])
    per_epoch = iters_per_epoch or log.steps_per_epoch
    if per_epoch:
        return np.floor((log.train["step"] - 1) / per_epoch) + 1
    return None


def _wall_spans(log: TrainingLog) -> float | None:
    """Seconds spent training: the sum over attempts of last minus first timestamp."""
    stamps = log.train.get("timestamp")
    if stamps is None or not _finite(stamps).any():
        return None
    attempts = log.train.get("attempt", np.zeros_like(stamps))
    total = 0.0
    for attempt in np.unique(attempts):
        chosen = stamps[(attempts == attempt) & _finite(stamps)]
        if chosen.size >= 2:
            total += float(chosen.max() - chosen.min())
    return total


def _estimated_wall(log: TrainingLog, chosen: np.ndarray | None = None) -> float | None:
    """Seconds from the time per step times the steps each record covers, summed over the
    ``chosen`` records (default: all)."""
    times = log.train.get("time_per_step_s")
    if times is None or log.n_train == 0:
        return None
    deltas = np.diff(np.concatenate([[0.0], log.train["step"]]))
    usable = _finite(times) & (deltas > 0)
    if chosen is not None:
        usable &= chosen
    return float((times[usable] * deltas[usable]).sum()) if usable.any() else None


def epoch_table(
    log: TrainingLog, iters_per_epoch: int | None = None
) -> list[dict[str, Any]] | None:
    """One row per epoch: steps, records, mean and last of each loss, speed, memory, wall time,
    and the last validation numbers of the epoch. None when epochs cannot be known."""
    epochs = epoch_numbers(log, iters_per_epoch)
    if epochs is None:
        return None
    rows = []
    steps = log.train["step"]
    losses = log.loss_columns()
    val_epochs = None
    if log.val.get("step") is not None and log.val["step"].size:
        if "epoch" in log.val and _finite(log.val["epoch"]).all() and "epoch" in log.train:
            val_epochs = np.floor(log.val["epoch"])
        else:
            # A validation belongs to the epoch of the last train step logged before it.
            index = np.searchsorted(steps, log.val["step"], side="right") - 1
            val_epochs = np.where(index >= 0, epochs[np.clip(index, 0, None)], np.nan)
    stamps = log.train.get("timestamp")
    for epoch in np.unique(epochs[_finite(epochs)]):
        chosen = epochs == epoch
        row: dict[str, Any] = {
            "epoch": int(epoch),
            "first_step": int(steps[chosen][0]),
            "last_step": int(steps[chosen][-1]),
            "records": int(chosen.sum()),
        }
        for name in losses:
            values = log.train[name][chosen]
            finite = values[_finite(values)]
            row[f"{name}_mean"] = float(finite.mean()) if finite.size else None
            row[f"{name}_last"] = float(finite[-1]) if finite.size else None
        for column, key, reduce in (
            ("time_per_step_s", "time_per_step_s_mean", np.mean),
            ("memory_gib", "memory_gib_peak", np.max),
        ):
            if column in log.train:
                values = log.train[column][chosen]
                finite = values[_finite(values)]
                row[key] = float(reduce(finite)) if finite.size else None
        if stamps is not None and _finite(stamps[chosen]).sum() >= 2:
            chosen_stamps = stamps[chosen & _finite(stamps)]
            row["wall_time_s"] = float(chosen_stamps.max() - chosen_stamps.min())
        elif "time_per_step_s" in log.train:
            row["wall_time_s"] = _estimated_wall(log, chosen)  # no timestamps
        if val_epochs is not None:
            in_epoch = np.flatnonzero(val_epochs == epoch)
            if in_epoch.size:
                last = in_epoch[-1]
                for name in log.val_metrics():
                    if math.isfinite(log.val[name][last]):
                        row[name] = float(log.val[name][last])
        rows.append(row)
    return rows


def _median(log: TrainingLog, column: str) -> float | None:
    values = log.train.get(column)
    if values is None or not _finite(values).any():
        return None
    return float(np.median(values[_finite(values)]))


def higher_is_better(name: str) -> bool:
    """Validation metrics: losses and distances fall, overlap scores rise."""
    lowered = name.lower()
    return not any(word in lowered for word in ("loss", "hd95", "assd", "error", "distance"))


def run_summary(
    log: TrainingLog,
    *,
    iters_per_epoch: int | None = None,
    samples_per_step: int | None = None,
    gpu_memory_gib: float | None = None,
) -> RunSummary:
    """Status, progress, wall time, speed, memory and best validation numbers of a run."""
    steps = log.train.get("step", np.array([]))
    steps_done = int(steps.max()) if steps.size else None
    tracebacks = [e for e in log.events if e.kind == "traceback"]
    truncated = any(e.kind == "truncated" for e in log.events)
    max_steps = log.max_steps
    epochs = epoch_numbers(log, iters_per_epoch)
    epochs_done = float(np.nanmax(epochs)) if epochs is not None and epochs.size else None
    # Loggers write every N steps, so a finished run's last line may sit up to N steps short.
    interval = float(np.median(np.diff(steps))) if steps.size >= 2 else 1.0
    if steps_done is None:
        status, detail = "empty", "no training step was logged"
    elif max_steps is not None and steps_done + max(interval, 1.0) > max_steps:
        status, detail = "finished", f"reached step {steps_done} of {max_steps}"
    elif tracebacks:
        status = "crashed"
        detail = f"stopped at step {steps_done}: {tracebacks[-1].message}"
    elif max_steps is None:
        status = "unknown"
        detail = (
            f"last logged step {steps_done}; the log does not state how many steps were planned "
            "(epoch-based logs do not), so it cannot tell whether training ended"
            + (" (its last line is cut off)" if truncated else "")
        )
    else:
        status = "incomplete"
        detail = (
            f"last logged step {steps_done} of {max_steps}; the run is still going or stopped "
            "without a traceback in the log" + (" (its last line is cut off)" if truncated else "")
        )
    wall = _wall_spans(log)
    wall_source = "log timestamps (sum over attempts)"
    if wall is None:
        wall = _estimated_wall(log)
        wall_source = "time per step x steps (no timestamps in the log)"
    if wall is None:
        wall_source = "unknown"
    time_median = _median(log, "time_per_step_s")
    data_median = _median(log, "data_time_s")
    samples = _median(log, "samples_per_s")
    samples_source = "logged samples_per_s"
    if samples is None and samples_per_step and time_median:
        samples = samples_per_step / time_median
        samples_source = f"samples_per_step={samples_per_step} / median time per step"
    elif samples is None:
        samples_source = "not logged (set samples_per_step to derive it)"
    memory = log.train.get("memory_gib")
    peak = float(np.nanmax(memory)) if memory is not None and _finite(memory).any() else None
    eta = log.train.get("eta_s")
    last_eta = None
    if eta is not None and _finite(eta).any():
        last_eta = float(eta[_finite(eta)][-1])
    val_best: dict[str, dict[str, float]] = {}
    for name in log.val_metrics():
        values = log.val[name]
        if not _finite(values).any():
            continue
        finite = np.where(_finite(values), values, np.nan)
        best = int(np.nanargmax(finite) if higher_is_better(name) else np.nanargmin(finite))
        last = int(np.flatnonzero(_finite(values))[-1])
        val_best[name] = {
            "best": float(values[best]),
            "best_step": float(log.val["step"][best]),
            "last": float(values[last]),
            "last_step": float(log.val["step"][last]),
        }
    return RunSummary(
        status=status,
        status_detail=detail,
        steps_done=steps_done,
        max_steps=max_steps,
        epochs_done=epochs_done,
        records=log.n_train,
        wall_time_s=wall,
        wall_time_source=wall_source,
        time_per_step_median_s=time_median,
        data_time_share=(data_median / time_median) if data_median and time_median else None,
        samples_per_s_median=samples,
        samples_per_s_source=samples_source,
        peak_memory_gib=peak,
        median_memory_gib=_median(log, "memory_gib"),
        gpu_memory_gib=gpu_memory_gib,
        last_eta_s=last_eta,
        val_best=val_best,
        warnings_count=sum(1 for e in log.events if e.kind == "warning"),
    )


def _runs_of(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index ranges of consecutive True values."""
    if not flags.any():
        return []
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _spikes(
    name: str, values: np.ndarray, steps: np.ndarray, rules: AnomalySettings
) -> list[Anomaly]:
    window = rules.spike_window
    if values.size <= window:
        return []
    from numpy.lib.stride_tricks import sliding_window_view

    previous = sliding_window_view(values[:-1], window)  # row i: values[i : i + window]
    reference = np.median(previous, axis=1)
    holes = np.isnan(reference)
    if holes.any():  # windows holding a NaN: median of their finite values (slower, so only here)
        with np.errstate(all="ignore"):
            clean = np.where(np.isfinite(previous[holes]), previous[holes], np.nan)
            counts = np.isfinite(clean).sum(axis=1)
            medians = np.full(clean.shape[0], np.nan)
            enough = counts >= 3
            if enough.any():
                medians[enough] = np.nanmedian(clean[enough], axis=1)
        reference[holes] = medians
    current = values[window:]
    with np.errstate(invalid="ignore"):
        flags = (current > rules.spike_factor * reference) & (reference > 0)
    found = []
    for start, stop in _runs_of(flags):
        peak = start + int(np.argmax(current[start:stop]))
        found.append(
            Anomaly(
                "spike",
                "warning",
                f"{name} jumped to {current[peak]:.4g} at step {int(steps[peak + window])}, "
                f"{current[peak] / reference[peak]:.1f}x the median {reference[peak]:.4g} of the "
                f"previous {window} logged values"
                + (f" ({stop - start} consecutive records)" if stop - start > 1 else ""),
                step=int(steps[peak + window]),
            )
        )
    return found


def find_anomalies(
    log: TrainingLog, rules: AnomalySettings | None = None, ema_alpha: float = 0.9
) -> list[Anomaly]:
    """Non-finite values, spikes, divergence, stuck losses, slow steps, stalls, restarts,
    crashes, truncation and warnings; each with the step and a plain-language message."""
    rules = rules or AnomalySettings()
    found: list[Anomaly] = []
    steps = log.train.get("step", np.array([]))
    for name in [*log.loss_columns(), "grad_norm", "lr"]:
        values = log.train.get(name)
        if values is None or values.size == 0:
            continue
        bad = log.nonfinite(name)
        if bad.any():
            where = np.flatnonzero(bad)
            kinds = sorted({"nan" if math.isnan(v) else "inf" for v in values[bad]})
            found.append(
                Anomaly(
                    "nonfinite",
                    "error",
                    f"{name} is {'/'.join(kinds)} in {int(bad.sum())} record(s), first at step "
                    f"{int(steps[where[0]])}, last at step {int(steps[where[-1]])}",
                    step=int(steps[where[0]]),
                )
            )
        if name in ("grad_norm", "lr"):
            continue
        found.extend(_spikes(name, values, steps, rules))
        smooth = ema(values, ema_alpha)
        mask = _finite(smooth)
        if mask.sum() >= 10:
            s, x = steps[mask], smooth[mask]
            low = int(np.argmin(x))
            if x[-1] > (1 + rules.divergence_ratio) * x[low] and low < x.size - 1:
                found.append(
                    Anomaly(
                        "divergence",
                        "error",
                        f"{name} (EMA) rose from its minimum {x[low]:.4g} at step {int(s[low])} "
                        f"to {x[-1]:.4g} at step {int(s[-1])} "
                        f"(+{(x[-1] / x[low] - 1) * 100:.0f}%): training is diverging; lower "
                        "the learning rate or resume from the checkpoint before the rise",
                        step=int(s[low]),
                    )
                )
        finite_values = values[_finite(values)]
        finite_steps = steps[_finite(values)]
        if finite_values.size > rules.stuck_records:
            same = np.concatenate([[False], np.diff(finite_values) == 0])
            for start, stop in _runs_of(same):
                if stop - start + 1 >= rules.stuck_records:
                    found.append(
                        Anomaly(
                            "stuck",
                            "warning",
                            f"{name} stayed exactly {finite_values[start]:.4g} for "
                            f"{stop - start + 1} records (steps {int(finite_steps[start - 1])}-"
                            f"{int(finite_steps[stop - 1])}): that part of the model is not "
                            "learning (for Sa2VA mask losses: no [SEG] token matched a mask?)",
                            step=int(finite_steps[start - 1]),
                        )
                    )
    times = log.train.get("time_per_step_s")
    if times is not None and _finite(times).sum() >= 10:
        median = float(np.median(times[_finite(times)]))
        with np.errstate(invalid="ignore"):
            slow = times > rules.stall_factor * median
        if slow.any():
            where = np.flatnonzero(slow)
            found.append(
                Anomaly(
                    "slow_steps",
                    "warning",
                    f"{where.size} record(s) took more than {rules.stall_factor:g}x the median "
                    f"time per step ({median:.3g} s), the slowest {float(np.nanmax(times)):.3g} s "
                    f"at step {int(steps[int(np.nanargmax(times))])}",
                    step=int(steps[where[0]]),
                )
            )
    stamps = log.train.get("timestamp")
    if stamps is not None and _finite(stamps).sum() >= 3:
        attempts = log.train.get("attempt", np.zeros_like(stamps))
        gaps = np.diff(stamps)
        same_attempt = np.diff(attempts) == 0
        finite_gaps = gaps[_finite(gaps) & same_attempt]
        if finite_gaps.size:
            typical = float(np.median(finite_gaps))
            limit = max(rules.stall_factor * typical, rules.stall_min_seconds)
            with np.errstate(invalid="ignore"):
                stalls = np.flatnonzero((gaps > limit) & same_attempt)
            for index in stalls[:20]:
                found.append(
                    Anomaly(
                        "stall",
                        "warning",
                        f"no log line for {format_duration(float(gaps[index]))} between step "
                        f"{int(steps[index])} and step {int(steps[index + 1])} (typical gap "
                        f"{format_duration(typical)})",
                        step=int(steps[index]),
                    )
                )
    for name in log.val_metrics():
        if not higher_is_better(name):
            continue
        values = log.val[name]
        finite = values[_finite(values)]
        if finite.size >= 3:
            best = int(np.argmax(finite))
            if best < finite.size - 1 and finite[best] - finite[-1] > 0.02:
                val_steps = log.val["step"][_finite(values)]
                found.append(
                    Anomaly(
                        "val_decline",
                        "warning",
                        f"validation {name} peaked at {finite[best]:.4g} (step "
                        f"{int(val_steps[best])}) and ended at {finite[-1]:.4g}: use the best "
                        "checkpoint, not the last; the model may be over-fitting",
                        step=int(val_steps[best]),
                    )
                )
    for event in log.events:
        if event.kind == "restart":
            found.append(Anomaly("restart", "warning", event.message, event.step, event.where()))
        elif event.kind == "traceback":
            found.append(
                Anomaly("crash", "error", f"traceback: {event.message}", None, event.where())
            )
        elif event.kind == "error":
            found.append(Anomaly("error", "error", event.message, None, event.where()))
        elif event.kind == "truncated":
            found.append(Anomaly("truncated", "info", event.message, None, event.where()))
    if log.superseded:
        found.append(
            Anomaly(
                "superseded",
                "info",
                f"{log.superseded} record(s) of an earlier attempt were logged again after a "
                "restart; the curves and tables use the later attempt",
            )
        )
    warnings = Counter(e.message for e in log.events if e.kind == "warning")
    for message, count in warnings.most_common(5):
        times_text = f" ({count} times)" if count > 1 else ""
        found.append(Anomaly("log_warning", "info", f"{message}{times_text}"))
    if len(warnings) > 5:
        found.append(Anomaly("log_warning", "info", f"{len(warnings) - 5} other distinct warnings"))
    order = {"error": 0, "warning": 1, "info": 2}
    found.sort(key=lambda a: (order[a.severity], a.step if a.step is not None else -1))
    return found


def format_duration(seconds: float | None) -> str:
    """``3d 04:05:06`` / ``04:05:06`` style, or ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text
