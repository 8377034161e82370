"""Safe checkpoint loading: allowlisted metadata loads, code-running pickles never run."""

from __future__ import annotations

import enum
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from vesselctl.errors import CheckpointError
from vesselctl.model.safe_load import ForeignObject, load_torch_file


def _foreign_class(module_name: str, class_name: str, base: type = object) -> type:
    """A class that pickles under a foreign module name (mmengine/DeepSpeed are not installed)."""
    cls = type(class_name, (base,), {})
    cls.__module__ = module_name
    return cls


@pytest.fixture
def foreign_modules(monkeypatch):
    """Register fake mmengine/deepspeed modules only while the test file is being written."""

    def register(module_name: str, cls: type) -> None:
        # Fresh stand-in modules (a real deepspeed may be importable: never touch it).
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        setattr(sys.modules[module_name], cls.__name__, cls)

    return register


def test_mmengine_style_checkpoint_loads_with_metadata(
    tmp_path: Path, foreign_modules, monkeypatch
):
    history_cls = _foreign_class("mmengine.logging.history_buffer", "HistoryBuffer")
    foreign_modules("mmengine.logging.history_buffer", history_cls)
    scaler_cls = _foreign_class("deepspeed.runtime.fp16.loss_scaler", "LossScaler")
    foreign_modules("deepspeed.runtime.fp16.loss_scaler", scaler_cls)

    class ZeroStageEnum(int, enum.Enum):
        weights = 3

    ZeroStageEnum.__module__ = "deepspeed.runtime.zero.config"
    ZeroStageEnum.__qualname__ = "ZeroStageEnum"
    foreign_modules("deepspeed.runtime.zero.config", ZeroStageEnum)

    history = history_cls()
    history._log_history = np.array([1.5, 2.5])
    history.max_length = 10
    scaler = scaler_cls()
    scaler.cur_scale = 1.0
    checkpoint = {
        "state_dict": OrderedDict(w=torch.arange(4.0)),
        "meta": {
            "iter": 12,
            "epoch": 1,
            "seed": np.int64(7),
            "lr": np.float32(1e-5),
            "message_hub": {"log_scalars": {"train/loss": history}},
        },
        "param_schedulers": [{"last_step": 12, "base_values": [2e-5]}],
        "loss_scaler": scaler,
        "zero_stage": ZeroStageEnum.weights,
    }
    path = tmp_path / "iter_12.pth"
    torch.save(checkpoint, path)
    # The foreign modules are gone at load time, as on a user's machine without mmengine.
    for name in [n for n in sys.modules if n.startswith(("mmengine", "deepspeed"))]:
        monkeypatch.delitem(sys.modules, name)

    loaded = load_torch_file(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))
    assert loaded["meta"]["iter"] == 12 and int(loaded["meta"]["seed"]) == 7
    buffer = loaded["meta"]["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, ForeignObject)
    assert buffer.foreign_name == "mmengine.logging.history_buffer.HistoryBuffer"
    np.testing.assert_array_equal(buffer.state["_log_history"], [1.5, 2.5])
    assert loaded["loss_scaler"].state == {"cur_scale": 1.0}
    assert loaded["zero_stage"].args == (3,)


class _RunsCommand:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _RunsCommand(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_torch_file(path)
    message = str(info.value)
    assert "evil.pth" in message and "system" in message and "--trust-checkpoint" in message
    assert not marker.exists()


def test_unknown_class_is_refused_with_its_name(tmp_path: Path):
    path = tmp_path / "odd.pt"
    torch.save({"x": _Opaque()}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pt.*_Opaque.*--trust-checkpoint"):
        load_torch_file(path)
    # --trust-checkpoint is the explicit way through
    assert isinstance(load_torch_file(path, trust=True)["x"], _Opaque)


class _Opaque:
    pass


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_names_the_file(tmp_path: Path, keep: float):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated or corrupt"):
        load_torch_file(path)


def test_garbage_and_empty_files(tmp_path: Path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        load_torch_file(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth.*empty"):
        load_torch_file(empty)
    with pytest.raises(CheckpointError, match="not found"):
        load_torch_file(tmp_path / "missing.pth")
