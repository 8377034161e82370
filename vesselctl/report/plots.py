"""Training curves as PNG bytes with matplotlib's Agg backend (no display needed).

Every figure takes several runs and overlays them in one colour per run, so a single run and a
comparison are drawn by the same code. Raw values are drawn thin and faint, the EMA solid; long
logs are reduced to a min/max envelope per pixel column before drawing so spikes stay visible and
long logs draw quickly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vesselctl.report.analysis import ema
from vesselctl.report.logs import TrainingLog

_MAX_POINTS = 2000  # buckets of the min/max envelope; about two per pixel of a 1000 px axis
_WIDTH_IN = 10.0
_DPI = 100


@dataclass
class Curve:
    """One run's log with its display name."""

    name: str
    log: TrainingLog


def _figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas; pyplot (and the import of its GUI backend
    machinery) is not needed to write PNGs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def envelope(x: np.ndarray, y: np.ndarray, buckets: int = _MAX_POINTS) -> tuple[np.ndarray, ...]:
    """Reduce a long series to the min and max of each bucket, in order (keeps spikes)."""
    mask = np.isfinite(y)
    x, y = x[mask], y[mask]
    if x.size <= 2 * buckets:
        return x, y
    edges = np.linspace(0, x.size, buckets + 1).astype(np.int64)
    starts = edges[:-1]
    low = np.minimum.reduceat(y, starts)
    high = np.maximum.reduceat(y, starts)
    arg_low = np.array([s + int(np.argmin(y[s:e])) for s, e in zip(starts, edges[1:], strict=True)])
    arg_high = np.array(
        [s + int(np.argmax(y[s:e])) for s, e in zip(starts, edges[1:], strict=True)]
    )
    first_is_low = arg_low <= arg_high
    xs = np.empty(2 * buckets)
    ys = np.empty(2 * buckets)
    xs[0::2] = np.where(first_is_low, x[arg_low], x[arg_high])
    xs[1::2] = np.where(first_is_low, x[arg_high], x[arg_low])
    ys[0::2] = np.where(first_is_low, low, high)
    ys[1::2] = np.where(first_is_low, high, low)
    return xs, ys


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evenly subsample a smooth curve (the EMA) to at most a few thousand points."""
    mask = np.isfinite(y)
    x, y = x[mask], y[mask]
    if x.size <= 2 * _MAX_POINTS:
        return x, y
    index = np.linspace(0, x.size - 1, 2 * _MAX_POINTS).astype(np.int64)
    return x[index], y[index]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    # Light PNG compression: level 1 encodes faster than the default 6 for somewhat larger
    # files, which matters more for a report made on every check.
    fig.savefig(buffer, format="png", dpi=_DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _colours(count: int) -> list:
    import matplotlib

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(count)]


def _mark_events(axis, curve: Curve, colour) -> None:
    """Restarts as dashed vertical lines."""
    for step in curve.log.restart_steps:
        axis.axvline(step, color=colour, linestyle="--", linewidth=0.8, alpha=0.7)


def _mark_nonfinite(axis, steps: np.ndarray, bad: np.ndarray) -> None:
    """Logged NaN/inf values as red crosses on the x axis."""
    if bad.any():
        axis.plot(
            steps[bad],
            np.zeros(int(bad.sum())),
            linestyle="none",
            marker="x",
            color="red",
            markersize=6,
            transform=axis.get_xaxis_transform(),
            clip_on=False,
            label=None,
        )


def _widen_flat_axis(axis, curves: Sequence[Curve], column: str) -> None:
    """A constant series (fixed learning rate, steady memory) gets a +-5% axis instead of
    matplotlib's tick labels at the 12th decimal."""
    finite = [v[np.isfinite(v)] for c in curves if (v := c.log.train.get(column)) is not None]
    finite = [v for v in finite if v.size]
    if not finite:
        return
    low = min(float(v.min()) for v in finite)
    high = max(float(v.max()) for v in finite)
    if high - low <= 1e-9 * max(abs(high), 1e-30):
        margin = abs(high) * 0.05 if high != 0 else 1.0
        axis.set_ylim(low - margin, high + margin)


def _grid(count: int, row_height: float = 2.6, columns: int = 2):
    columns = 1 if count == 1 else columns
    rows = (count + columns - 1) // columns
    fig = _figure(_WIDTH_IN, max(row_height * rows, 2.8))
    axes = fig.subplots(rows, columns, squeeze=False)
    flat = list(axes.ravel())
    for axis in flat[count:]:
        axis.set_visible(False)
    return fig, flat[:count]


def _finish(fig, axes, curves: Sequence[Curve], titled: bool = False) -> None:
    """Grid, labels, legend and margins. Fixed margins instead of tight_layout: measuring every
    label's extent took most of the drawing time of a report."""
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.set_xlabel("step", fontsize=9)
        axis.tick_params(labelsize=8)
    height = fig.get_size_inches()[1]
    top_room = 0.55 if len(curves) > 1 or titled else 0.35
    if len(curves) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8)
    fig.subplots_adjust(
        left=0.08,
        right=0.98,
        bottom=0.5 / height,
        top=1 - top_room / height,
        hspace=0.75,
        wspace=0.22,
    )


def plot_series(
    curves: Sequence[Curve],
    columns: Sequence[str],
    *,
    title: str,
    smooth: float | None,
    ylabels: dict[str, str] | None = None,
) -> bytes | None:
    """One subplot per column, every run overlaid; raw faint + EMA solid when ``smooth`` is set."""
    present = [c for c in columns if any(c in curve.log.train for curve in curves)]
    if not present:
        return None
    fig, axes = _grid(len(present))
    colours = _colours(len(curves))
    for axis, column in zip(axes, present, strict=True):
        for curve, colour in zip(curves, colours, strict=True):
            values = curve.log.train.get(column)
            if values is None or not np.isfinite(values).any():
                continue
            steps = curve.log.train["step"]
            xs, ys = envelope(steps, values)
            if smooth is not None:
                axis.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.45)
                sx, sy = _thin(steps, ema(values, smooth))
                axis.plot(sx, sy, color=colour, linewidth=1.6, label=curve.name)
            else:
                axis.plot(xs, ys, color=colour, linewidth=1.2, label=curve.name)
            _mark_events(axis, curve, colour)
            _mark_nonfinite(axis, steps, curve.log.nonfinite(column))
        label = (ylabels or {}).get(column, column)
        axis.set_title(label, fontsize=10)
        axis.ticklabel_format(axis="y", useOffset=False)
        _widen_flat_axis(axis, curves, column)
    titled = len(curves) == 1 and len(present) > 1
    if titled:
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    _finish(fig, axes, curves, titled)
    return _png(fig)


def plot_validation(curves: Sequence[Curve]) -> bytes | None:
    """Validation metrics against the step, one subplot per metric."""
    names: list[str] = []
    for curve in curves:
        names += [name for name in curve.log.val_metrics() if name not in names]
    if not names:
        return None
    fig, axes = _grid(len(names))
    colours = _colours(len(curves))
    for axis, name in zip(axes, names, strict=True):
        for curve, colour in zip(curves, colours, strict=True):
            values = curve.log.val.get(name)
            if values is None:
                continue
            mask = np.isfinite(values)
            axis.plot(
                curve.log.val["step"][mask],
                values[mask],
                marker="o",
                markersize=3,
                color=colour,
                label=curve.name,
            )
        axis.set_title(name, fontsize=10)
    _finish(fig, axes, curves)
    return _png(fig)


def all_plots(curves: Sequence[Curve], smooth: float) -> dict[str, tuple[str, bytes]]:
    """Every figure the report shows: file name -> (caption, PNG bytes); empty ones left out."""
    loss_columns: list[str] = []
    for curve in curves:
        for name in curve.log.loss_columns():
            if name not in loss_columns:
                loss_columns.append(name)
    lr_columns: list[str] = []
    for curve in curves:
        for name in curve.log.columns():
            if (name == "lr" or name.endswith("_lr")) and name not in lr_columns:
                lr_columns.append(name)
    figures = {
        "losses.png": (
            f"Every loss component: raw (faint) and EMA-smoothed (solid, weight {smooth:g}); "
            "dashed lines mark restarts, red crosses NaN/inf values",
            plot_series(curves, loss_columns, title="losses", smooth=smooth),
        ),
        "learning_rate.png": (
            "Learning rate",
            plot_series(curves, lr_columns, title="learning rate", smooth=None),
        ),
        "speed.png": (
            "Time per step (s), data-loading time (s) and samples per second",
            plot_series(
                curves,
                ["time_per_step_s", "data_time_s", "samples_per_s"],
                title="speed",
                smooth=smooth,
                ylabels={
                    "time_per_step_s": "time per step (s)",
                    "data_time_s": "data time (s)",
                    "samples_per_s": "samples / s",
                },
            ),
        ),
        "memory.png": (
            "Peak GPU memory (GiB) as logged",
            plot_series(
                curves,
                ["memory_gib"],
                title="memory",
                smooth=None,
                ylabels={"memory_gib": "GPU memory (GiB)"},
            ),
        ),
        "grad_norm.png": (
            "Gradient norm",
            plot_series(curves, ["grad_norm"], title="gradient norm", smooth=smooth),
        ),
        "validation.png": ("Validation metrics logged during training", plot_validation(curves)),
    }
    return {name: (caption, png) for name, (caption, png) in figures.items() if png is not None}
