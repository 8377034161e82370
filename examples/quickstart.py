"""Quickstart: the whole vesselctl pipeline on a generated synthetic vessel dataset, on a CPU.

Usage: python examples/quickstart.py OUT_DIR [--seed 0] [--images 64] [--steps N]

Writes synthetic LabelMe annotations, then runs prepare -> validate -> train (tiny preset) ->
convert -> predict -> evaluate -> report, printing each step as the command you would type.
At the end it prints the test-split Dice next to the empty-mask baseline and where the report is.
Everything lands in OUT_DIR: labelme/, data/, run/ (checkpoints, logs, eval-test/), model/,
predictions/ and report/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"
#: Side of the images the quickstart annotates and trains on (the tiny preset's SAM2 input).
IMAGE_SIZE = 128
#: The synthetic generator draws vessels for 512-pixel images; the quickstart annotates
#: 128-pixel windows of them, so vessels are 2-10 pixels wide: visible to the tiny model, whose
#: SAM2 decoder predicts masks at a quarter of the image size (32 x 32 logits).
SOURCE_SIZE = 512

Runner = Callable[[Sequence[str]], None]


def run_cli(args: Sequence[str]) -> None:
    """Run one vesselctl command in a fresh process, as a user would; stop when it fails."""
    subprocess.run([sys.executable, "-m", "vesselctl", *args], check=True)


def write_dataset(labelme: Path, count: int, seed: int, patients: int = 12) -> None:
    """``count`` LabelMe files of IMAGE_SIZE-pixel windows cut from synthetic angiograms.

    Each window is the most vessel-rich of four candidate positions; its annotation is traced
    from the window's own mask (vessel polygons plus hole polygons inside loops), as an annotator
    would draw it on that image. The same arguments always give the same files.
    """
    from vesselctl.data.images import encode_png
    from vesselctl.data.synthetic import (
        labelme_document,
        make_sample,
        mask_to_labelme_shapes,
        sample_name,
    )

    labelme.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sample = make_sample(seed, index, SOURCE_SIZE, SOURCE_SIZE)
        rng = np.random.default_rng([seed, index, 7])
        corners = rng.integers(0, SOURCE_SIZE - IMAGE_SIZE, size=(4, 2))
        y, x = max(
            corners,
            key=lambda c: sample.mask[c[0] : c[0] + IMAGE_SIZE, c[1] : c[1] + IMAGE_SIZE].sum(),
        )
        mask = sample.mask[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE]
        image = sample.image[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE]
        shapes = mask_to_labelme_shapes(mask, tolerance=0.3)
        stem = sample_name(index, patients)
        (labelme / f"{stem}.png").write_bytes(encode_png(np.ascontiguousarray(image)))
        document = labelme_document(shapes, f"{stem}.png", IMAGE_SIZE, IMAGE_SIZE, None)
        (labelme / f"{stem}.json").write_text(json.dumps(document), encoding="utf-8")


def _relative(arg: str) -> str:
    """A path argument as typed from the current folder (absolute when it lies outside)."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return arg


def pipeline(
    out: Path, seed: int, images: int, steps: int | None, run: Runner, config: Path = CONFIG
) -> dict[str, Path]:
    """Run every stage into ``out``; return the folders it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "labelme": out / "labelme",
        "data": out / "data",
        "validation": out / "validation",
        "run": out / "run",
        "model": out / "model",
        "predictions": out / "predictions",
        "eval": out / "run" / "eval-test",
        "report": out / "report",
    }

    def step(args: list[str]) -> None:
        print("\n$ vesselctl " + shlex.join(_relative(a) for a in args), flush=True)
        run(args)

    print(f"# writing {images} synthetic LabelMe files to {paths['labelme']}", flush=True)
    write_dataset(paths["labelme"], images, seed)
    step(
        [
            "prepare", str(paths["labelme"]), str(paths["data"]), "--no-progress",
            "--size", str(IMAGE_SIZE), "--group-pattern", r"^(P\d+)_", "--seed", str(seed),
        ]
    )  # fmt: skip
    step(["validate", str(paths["data"]), "--out", str(paths["validation"])])
    train = ["train", "--config", str(config), "--data", str(paths["data"])]
    train += ["--out", str(paths["run"]), "--no-progress", "--set", f"seed={seed}"]
    if steps is not None:
        train += ["--max-steps", str(steps)]
    step(train)
    result = json.loads((paths["run"] / "result.json").read_text(encoding="utf-8"))
    checkpoint = Path(result["last_checkpoint"])
    step(["convert", str(checkpoint), "--out", str(paths["model"])])
    step(
        [
            "predict", "--model", str(paths["model"]), "--input", str(paths["data"]),
            "--split", "test", "--out", str(paths["predictions"]), "--device", "cpu",
            "--no-progress",
        ]
    )  # fmt: skip
    step(
        [
            "evaluate", "--ckpt", str(checkpoint), "--data", str(paths["data"]),
            "--split", "test", "--compare-empty", "--device", "cpu",
            "--out", str(paths["eval"]),
        ]
    )  # fmt: skip
    step(["report", str(paths["run"]), "--out", str(paths["report"])])
    return paths


def headline(eval_dir: Path) -> tuple[float, float]:
    """Mean test Dice of the model and of the all-empty prediction, from summary.json."""
    summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    dice = float(summary["macro"]["dice"]["mean"])
    empty = float(summary["compare"]["other_macro_mean"]["dice"])
    return dice, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for everything the quickstart writes")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, split and training")
    parser.add_argument("--images", type=int, default=64, help="synthetic images to generate")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the config's)"
    )
    args = parser.parse_args()
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        sys.exit(
            f"error: {args.out_dir} is not empty; the quickstart starts from scratch: "
            "choose a new folder or delete this one"
        )
    started = time.perf_counter()
    paths = pipeline(args.out_dir, args.seed, args.images, args.steps, run_cli)
    dice, empty = headline(paths["eval"])
    minutes = (time.perf_counter() - started) / 60
    print(f"\nquickstart finished in {minutes:.1f} min")
    print(f"test Dice {dice:.3f} (empty-mask baseline {empty:.3f})")
    print(f"report: {paths['report'] / 'report.md'} and report.html")


if __name__ == "__main__":
    main()
