"""Wall time, CPU time and test Dice of examples/quickstart.py for several seeds (issue 9).

Targets: the quickstart finishes in <= 10 minutes on 2 CPU cores, and the tiny model learns:
test-split Dice >= 0.5 and above the empty-mask baseline, for every seed tried. Each seed runs
the quickstart as a user would (`python examples/quickstart.py OUT --seed N`, one process per
command); CPU time is the user + system time of all its child processes (rusage), which stays
meaningful when other work shares the machine. The load average before and after each run is
recorded because wall time is not.

    python benchmarks/quickstart.py --seeds 0 1 2 --out quickstart_bench.json
    python benchmarks/quickstart.py --seeds 0 --images 16 --steps 2 --out /tmp/q.json  # check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL_LIMIT_S = 600.0
DICE_BAR = 0.5


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_seed(workdir: Path, seed: int, images: int | None, steps: int | None) -> dict:
    """Run the quickstart once; its numbers come from the evaluation it wrote."""
    out = workdir / f"seed{seed}"
    command = [
        sys.executable,
        str(ROOT / "examples" / "quickstart.py"),
        str(out),
        "--seed",
        str(seed),
    ]
    if images is not None:
        command += ["--images", str(images)]
    if steps is not None:
        command += ["--steps", str(steps)]
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    cpu = _children_cpu_s() - cpu_before
    summary = json.loads((out / "run" / "eval-test" / "summary.json").read_text(encoding="utf-8"))
    dice = float(summary["macro"]["dice"]["mean"])
    empty = float(summary["compare"]["other_macro_mean"]["dice"])
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "test_images": int(summary["n_images"]),
        "test_dice": round(dice, 4),
        "empty_baseline_dice": round(empty, 4),
        "dice_ci": [
            summary["macro"]["dice"].get("ci_low"),
            summary["macro"]["dice"].get("ci_high"),
        ],
        "meets_dice_bar": dice >= DICE_BAR and dice > empty,
        "meets_time_bar": wall <= WALL_LIMIT_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=None, help="default: the quickstart's")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        rows = [run_seed(workdir, seed, args.images, args.steps) for seed in args.seeds]
    header = f"{'seed':>4} {'wall s':>8} {'cpu s':>8} {'load':>11} {'test Dice':>10} {'empty':>6}"
    print(header)
    for r in rows:
        load = f"{r['load_before']:.1f}->{r['load_after']:.1f}"
        print(
            f"{r['seed']:>4} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {load:>11} "
            f"{r['test_dice']:>10.4f} {r['empty_baseline_dice']:>6.3f}"
        )
    result = {
        "what": "examples/quickstart.py end to end",
        "cpu_count": os.cpu_count(),
        "targets": {"wall_s_max": WALL_LIMIT_S, "test_dice_min": DICE_BAR},
        "runs": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
