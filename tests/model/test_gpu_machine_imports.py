"""The GPU machine has no OpenCV and no orjson: model, training and benchmark code must import
and run without them (data preparation and drawing may import them lazily)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MISSING = ("cv2", "orjson")
# Code that runs on the GPU machine: the model, training, and the benchmarks the lead runs there.
GPU_PATHS = [
    REPO / "vesselctl" / "model",
    REPO / "vesselctl" / "training",
    REPO / "vesselctl" / "stages" / "train.py",
    REPO / "benchmarks" / "model.py",
    REPO / "benchmarks" / "perf.py",
]


def _python_files() -> list[Path]:
    files: list[Path] = []
    for path in GPU_PATHS:
        if path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
        elif path.exists():
            files.append(path)
    return files


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_cv2_or_orjson_import_anywhere_in_gpu_code(path):
    """Also imports inside functions, which an import-time check would miss."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in MISSING]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in MISSING:
            found.append(node.module)
    assert not found, f"{path.relative_to(REPO)} imports {found}"


# Data preparation (LabelMe parsing, rasterising, validation, synthetic data) runs where the
# package's own dependencies are installed and may import OpenCV and orjson at the top.
DATA_PREPARATION = {
    "vesselctl.data.checks",
    "vesselctl.data.labelme",
    "vesselctl.data.masks",
    "vesselctl.data.samples",
    "vesselctl.data.sources",
    "vesselctl.data.stats",
    "vesselctl.data.synthetic",
    "vesselctl.stages.prepare",
    "vesselctl.stages.validate",
}


def test_every_gpu_side_module_imports_when_cv2_and_orjson_are_missing(tmp_path):
    for name in MISSING:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} is not installed')\n")
    code = (
        "import importlib, pkgutil, vesselctl\n"
        "failed = []\n"
        f"skip = {sorted(DATA_PREPARATION)!r}\n"
        "for m in pkgutil.walk_packages(vesselctl.__path__, 'vesselctl.'):\n"
        "    if m.name in skip:\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{m.name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "raise SystemExit(1 if failed else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
