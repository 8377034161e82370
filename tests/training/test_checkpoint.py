"""Checkpoint folder rules: complete folders only, never a silent restart, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vesselctl.errors import CheckpointError, TrainingError
from vesselctl.training import checkpoint as ckpt


def _complete(run, step):
    folder = ckpt.final_dir(run, step)
    folder.mkdir(parents=True)
    (folder / ckpt.PROGRESS_NAME).write_text("{}")
    return folder


def test_resume_rules(tmp_path) -> None:
    run = tmp_path / "run"
    assert ckpt.resolve_resume(run, None) is None  # fresh folder: start
    assert ckpt.resolve_resume(run, "auto") is None  # auto with nothing to resume: start
    _complete(run, 2)
    last = _complete(run, 10)
    ckpt.temp_dir(run, 12).mkdir()  # a save killed half-way: ignored
    with pytest.raises(TrainingError, match="--resume auto"):
        ckpt.resolve_resume(run, None)
    assert ckpt.resolve_resume(run, "auto") == last
    assert ckpt.resolve_resume(run, str(ckpt.final_dir(run, 2))) == ckpt.final_dir(run, 2)
    with pytest.raises(TrainingError, match="not a complete vesselctl checkpoint"):
        ckpt.resolve_resume(run, str(tmp_path / "nowhere"))


def test_prune_keeps_last_and_best(tmp_path) -> None:
    for step in (1, 2, 3, 4, 5):
        _complete(tmp_path, step)
    ckpt.write_best(tmp_path, 2, 0.9)
    ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 5]


def test_publish_is_a_rename_of_a_complete_folder(tmp_path) -> None:
    tmp = ckpt.prepare_temp(tmp_path, 7)
    (tmp / "x.bin").write_bytes(b"1")
    assert ckpt.list_checkpoints(tmp_path) == []  # not visible until published
    final = ckpt.publish(tmp_path, 7, {"global_step": 7})
    assert (final / "x.bin").is_file() and not tmp.exists()
    assert ckpt.read_progress(final)["global_step"] == 7


def test_rng_round_trip(tmp_path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_rng(tmp_path, 0)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert ckpt.load_rng(tmp_path, 0)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not ckpt.load_rng(tmp_path, 1)  # no file for a rank that did not exist


def test_trainable_weights_must_match(tmp_path) -> None:
    model = torch.nn.Linear(2, 2)
    ckpt.write_trainable_export(tmp_path, ckpt.trainable_state(model), {"step": 1})
    other = torch.nn.Linear(2, 2)
    ckpt.load_trainable_weights(other, tmp_path)
    assert torch.equal(other.weight, model.weight)
    other.bias.requires_grad_(False)
    with pytest.raises(CheckpointError, match="unexpected"):
        ckpt.load_trainable_weights(other, tmp_path)
