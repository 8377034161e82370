"""Atomic writes: content, permissions like a plain open(), no temp files left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vesselctl.files import atomic_write_bytes, atomic_write_json


def test_atomic_write_mode_follows_umask(tmp_path: Path) -> None:
    target = tmp_path / "a" / "f.bin"
    atomic_write_bytes(target, b"x")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert os.listdir(tmp_path) == []
