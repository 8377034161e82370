"""`inspect` stage: describes every checkpoint kind without trusting it."""

from __future__ import annotations

import os

import pytest
import torch

from tests.model.official_fixtures import (
    make_training_delta,
    tiny_model,
    write_deepspeed_zero3,
    write_iter_checkpoint,
    write_official_hf_export,
)
from vesselctl.errors import CheckpointError
from vesselctl.settings.convert import InspectSettings
from vesselctl.stages import inspect


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    model, processor = tiny_model("internvl")
    root = tmp_path_factory.mktemp("inspect")
    write_official_hf_export(model, processor, root / "hf", "internvl")
    trained, _ = make_training_delta(model, "internvl", r=4, alpha=8.0)
    write_iter_checkpoint(root / "iter_3672.pth", trained, 4, 8.0)
    write_deepspeed_zero3(root / "iter_99.pth", trained, world_size=2, r=4, alpha=8.0)
    return root, trained


def _run(path, **kwargs):
    return inspect.run(InspectSettings(checkpoint=path, **kwargs))


def test_official_iter_file(files):
    root, trained = files
    result = _run(root / "iter_3672.pth")
    assert result.format.startswith("official_iter")
    assert result.family == "internvl"
    assert result.tensors == len(trained)
    assert result.parameters == sum(t.numel() for t in trained.values())
    assert result.lora == {"rank": 4, "modules": 14, "alpha": 8.0, "rslora": False, "scale": 2.0}
    assert result.metadata["iter"] == 3672 and result.metadata["epoch"] == 3
    groups = {g.name: g for g in result.groups}
    assert groups["LoRA A"].tensors == 14 and groups["modules_to_save copies"].tensors == 2
    assert groups["SAM2 mask decoder"].tensors > 0 and "LLM layers" not in groups
    assert result.size_bytes == (root / "iter_3672.pth").stat().st_size


def test_deepspeed_folder_and_hf_export(files):
    root, trained = files
    ds = _run(root / "iter_99.pth")
    assert ds.format == "DeepSpeed checkpoint folder" and ds.metadata["zero_stage"] == 3
    assert ds.tensors == len(trained) and ds.lora["alpha"] == 8.0
    hf = _run(root / "hf")
    assert hf.format == "official_hf" and hf.family == "internvl" and hf.files >= 4
    names = {g.name for g in hf.groups}
    assert {"vision encoder", "LLM layers", "SAM2 memory (video)", "SAM2 image encoder"} <= names


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _Boom(marker)}}, tmp_path / "iter_1.pth"
    )
    with pytest.raises(CheckpointError, match="refused to load"):
        _run(tmp_path / "iter_1.pth")
    assert not marker.exists()
