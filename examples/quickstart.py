"""Quickstart: run the vesselctl pipeline on a generated synthetic vessel dataset.

Usage: python examples/quickstart.py OUT_DIR
Each step is printed as the command a user would type, then run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def run(args: list[str]) -> None:
    """Print and run one vesselctl command; stop the quickstart when it fails."""
    command = [sys.executable, "-m", "vesselctl", *args]
    print("$ vesselctl " + shlex.join(args), flush=True)
    subprocess.run(command, check=True)


def generate(out: Path) -> Path:
    """Write 40 synthetic LabelMe files (512 and 800 pixels, some with embedded images)."""
    labelme = out / "labelme"
    if not labelme.exists():
        script = Path(__file__).with_name("make_synthetic_dataset.py")
        args = [str(labelme), "--count", "40", "--seed", "0"]
        print("$ python examples/make_synthetic_dataset.py " + shlex.join(args), flush=True)
        subprocess.run([sys.executable, str(script), *args], check=True)
    return labelme


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/quickstart.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    run(["env"])
    labelme = generate(out)
    data = out / "data"
    run(
        [
            "prepare",
            str(labelme),
            str(data),
            "--overwrite",
            "--no-progress",
            "--group-pattern",
            r"^(P\d+)_",
        ]
    )
    run(["validate", str(data)])


if __name__ == "__main__":
    main()
