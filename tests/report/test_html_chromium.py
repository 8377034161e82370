"""Open report.html in headless Chromium: every image decodes and the plots are drawn."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vesselctl.report.synthetic import SyntheticRun, write_run_folder
from vesselctl.settings.base import load_settings
from vesselctl.settings.report import ReportSettings
from vesselctl.stages import report as stage

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_html_renders_plots_in_chromium(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run", SyntheticRun(total_iters=400, val_every=100))
    result = stage.run(
        load_settings(ReportSettings, None, [], {"runs": [run], "out": tmp_path / "out"})
    )
    url = result.report_html.resolve().as_uri()

    # 1. The page script marks <body> once every <img> decoded (naturalWidth > 0).
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path)
    expected = len(result.plots) + 2  # plots + the two overlays of the evaluation
    assert f'data-images="{expected} decoded"' in dom.stdout, dom.stderr[-2000:]

    # 2. The screenshot shows drawn curves: matplotlib's first colour (the run's lines) covers
    #    many pixels, and the plot area is not blank.
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,3000", url], tmp_path)
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (3000, 1200)
    line_colour = np.array([31, 119, 180])  # matplotlib "C0"
    near = np.abs(pixels - line_colour).sum(axis=2) < 60
    assert near.sum() > 2000, f"only {near.sum()} pixels in the curve colour"
    rows_with_curves = np.flatnonzero(near.any(axis=1))
    band = pixels[rows_with_curves.min() : rows_with_curves.max() + 1]
    assert band.std() > 20  # drawn axes, ticks and curves, not an empty area
    non_white = (band.min(axis=2) < 200).mean()
    assert non_white > 0.02
