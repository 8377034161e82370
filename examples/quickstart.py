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


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/quickstart.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    run(["env"])


if __name__ == "__main__":
    main()
