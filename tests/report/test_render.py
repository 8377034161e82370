"""Markdown and HTML rendering: same content, HTML self-contained and escaped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vesselctl.report.logs import TrainingLog
from vesselctl.report.plots import Curve, all_plots
from vesselctl.report.render import (
    Code,
    Details,
    Heading,
    Image,
    Notice,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _blocks():
    return [
        Heading("Section <1>"),
        Paragraph("Run `vesselctl evaluate` & report | again"),
        Notice("no evaluation", "warning"),
        Table(["a", "b|c"], [["1", "<b>x</b>"]], caption="cap"),
        Image("plots/x.png", PNG, "a plot"),
        Details("settings", [Code("lr: 1\n", "yaml")]),
    ]


def test_markdown_mentions_everything() -> None:
    text = to_markdown("T", _blocks())
    assert text.startswith("# T\n")
    assert "## Section <1>" in text
    assert "| a | b\\|c |" in text
    assert "![a plot](plots/x.png)" in text
    assert "> **Warning:** no evaluation" in text
    assert "```yaml\nlr: 1\n```" in text


def test_html_is_self_contained_and_escaped() -> None:
    page = to_html("T <x>", _blocks())
    assert "<title>T &lt;x&gt;</title>" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "<code>vesselctl evaluate</code> &amp; report" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page


def test_plots_for_one_and_several_runs() -> None:
    steps = np.arange(1, 5001, dtype=float)
    log = TrainingLog(sources=[Path("a")], format="mmengine")
    log.train = {
        "step": steps,
        "loss": 5 * np.exp(-steps / 1000) + 0.1,
        "loss_dice": np.where(steps == 2500, np.nan, 1 / (1 + steps / 500)),
        "lr": np.full(steps.size, 2e-5),
        "memory_gib": np.full(steps.size, 14.5),
    }
    log.restart_steps = [3000]
    single = all_plots([Curve("a", log)], smooth=0.9)
    assert set(single) == {"losses.png", "learning_rate.png", "memory.png"}
    assert all(png.startswith(b"\x89PNG") for _, png in single.values())
    pair = all_plots([Curve("a", log), Curve("b", log)], smooth=0.9)
    assert set(pair) == set(single)
