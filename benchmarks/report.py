"""Benchmark of `vesselctl report` on a long training log (target: 100,000 lines in < 5 s).

Generates an mmengine text log with ``--lines`` train lines (plus validation, checkpoint,
warning and traceback lines, a restart and a NaN) and a metrics.jsonl run folder of the same
length, then times, each ``--repeat`` times (median reported):

1. parsing the text log alone (``read_log_file``);
2. the whole report stage in-process: parse, analysis, plots, Markdown + HTML, JSON;
3. the same for the metrics.jsonl run folder;
4. the command a user runs, ``python -m vesselctl report LOG --out DIR``, as a fresh process
   (includes Python start-up and imports).

Prints a table and writes JSON (``--out``); exits 1 when the target is missed.

    python benchmarks/report.py --lines 100000 --out bench_report.json
    python benchmarks/report.py --lines 2000 --repeat 1              # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vesselctl.report.logs import read_log_file
from vesselctl.report.synthetic import SyntheticRun, write_mmengine_log, write_run_folder
from vesselctl.settings.base import load_settings
from vesselctl.settings.report import ReportSettings
from vesselctl.stages import report as stage


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (robust to a busy machine)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _time(function, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each of ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - start_cpu)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000, help="train lines in the log")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_report_"))
    run = SyntheticRun(
        total_iters=args.lines,
        log_interval=1,
        val_every=max(args.lines // 20, 1),
        checkpoint_every=max(args.lines // 10, 1),
        nan_at=(args.lines // 3,),
        spike_at=(args.lines // 2,),
        crash_at=args.lines * 3 // 4,
        restart_from=args.lines * 3 // 4 - 100,
    )
    log_path = write_mmengine_log(work / "work_dir" / "20251123_051220.log", run)
    total_lines = sum(1 for _ in log_path.open(encoding="utf-8"))
    folder = write_run_folder(
        work / "run",
        SyntheticRun(total_iters=args.lines, log_interval=1, val_every=max(args.lines // 20, 1)),
    )

    def report(source: Path, out: Path) -> None:
        stage.run(load_settings(ReportSettings, None, [], {"runs": [source], "out": out}))

    rows = []
    rows.append(("parse mmengine text log", _time(lambda: read_log_file(log_path), args.repeat)))
    rows.append(
        (
            "report mmengine text log (in-process)",
            _time(lambda: report(log_path, work / "out_log"), args.repeat),
        )
    )
    rows.append(
        (
            "report metrics.jsonl run folder (in-process)",
            _time(lambda: report(folder, work / "out_run"), args.repeat),
        )
    )
    command = [
        sys.executable,
        "-m",
        "vesselctl",
        "report",
        str(log_path),
        "--out",
        str(work / "out_cli"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    rows.append(
        (
            "`python -m vesselctl report LOG` (fresh process)",
            _time(
                lambda: subprocess.run(command, check=True, capture_output=True, env=env),
                args.repeat,
            ),
        )
    )

    size_mib = log_path.stat().st_size / 2**20
    shutil.rmtree(work)  # the logs and reports (tens of MiB at 100,000 lines) are not kept
    print(f"log: {total_lines} lines ({args.lines} train lines), {size_mib:.1f} MiB")
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
    print(f"{'what':<52} {'wall median s':>13} {'wall min s':>10} {'CPU median s':>12}")
    results = []
    for name, (wall, cpu) in rows:
        median = statistics.median(wall)
        print(f"{name:<52} {median:>13.2f} {min(wall):>10.2f} {statistics.median(cpu):>12.2f}")
        results.append(
            {
                "what": name,
                "wall_median_s": median,
                "wall_min_s": min(wall),
                "cpu_median_s": statistics.median(cpu),
                "wall_s": wall,
                "cpu_s": cpu,
            }
        )
    worst = max(statistics.median(w) for name, (w, _) in rows if "fresh process" in name)
    verdict = "met" if worst < args.target_s else "MISSED"
    print(f"target: fresh-process report under {args.target_s:g} s: {verdict} ({worst:.2f} s)")
    if args.out:
        payload = {
            "benchmark": "report",
            "date": date.today().isoformat(),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores",
            "python": sys.version.split()[0],
            "log_lines": total_lines,
            "train_lines": args.lines,
            "target_s": args.target_s,
            "target_met": worst < args.target_s,
            "load_average_1min": load,
            "results": results,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if worst < args.target_s else 1


if __name__ == "__main__":
    raise SystemExit(main())
