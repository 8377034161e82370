"""Launcher environments, the torchrun relaunch command and the `auto` strategy rule."""

from __future__ import annotations

import pytest

from vesselctl.errors import ConfigError
from vesselctl.settings.train import DistributedSettings
from vesselctl.training.launch import (
    check_environment,
    choose_strategy,
    launcher_env,
    needs_relaunch,
    torchrun_command,
)

GIB = 2**30


def test_torchrun_env_is_read() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "n0",
        "MASTER_PORT": "1234",
    }
    dist = launcher_env(env)
    assert dist is not None
    assert (dist.rank, dist.world_size, dist.local_rank, dist.master_addr, dist.master_port) == (
        3, 8, 1, "n0", 1234,
    )  # fmt: skip
    assert not dist.is_main and dist.is_distributed


def test_slurm_tasks_are_mapped_and_single_task_is_not() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "h0"}
    dist = launcher_env(env)
    assert dist is not None and (dist.rank, dist.world_size, dist.local_rank) == (5, 8, 1)
    # one task of a batch script: not a launcher, vesselctl relaunches itself
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_bad_launcher_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="RANK='x'"):
        launcher_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_relaunch_only_without_a_launcher() -> None:
    two = DistributedSettings(gpus=2)
    assert needs_relaunch(two, {})
    assert not needs_relaunch(two, {"RANK": "0", "WORLD_SIZE": "2"})
    assert not needs_relaunch(DistributedSettings(), {})
    assert needs_relaunch(DistributedSettings(nnodes=2, node_rank=1, master_addr="a"), {})


def test_torchrun_command_carries_multi_node_flags(tmp_path) -> None:
    settings = DistributedSettings(
        gpus=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600
    )
    cmd = torchrun_command(settings, tmp_path / "s.yaml")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for flag in (
        "--nproc-per-node=4",
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29600",
    ):
        assert flag in cmd
    assert cmd[-5:] == ["-m", "vesselctl", "train", "--config", str(tmp_path / "s.yaml")]


@pytest.mark.parametrize(
    ("world", "cuda", "model_gib", "card_gib", "expected"),
    [
        (1, True, 2, 80, "single"),  # fits, one GPU
        (2, True, 2, 80, "zero2"),  # fits, several GPUs: ZeRO-2, not ZeRO-3
        (4, True, 9, 24, "zero2"),  # 4B in bf16 on 24 GB cards still fits
        (4, True, 16, 24, "zero3"),  # does not fit one card: shard the weights
        (2, False, 2, None, "ddp"),  # CPU processes
        (1, False, 2, None, "single"),
    ],
)
def test_auto_strategy(world, cuda, model_gib, card_gib, expected) -> None:
    card = card_gib * GIB if card_gib else None
    assert choose_strategy("auto", world, cuda, model_gib * GIB, card) == expected


def test_explicit_strategy_is_kept() -> None:
    assert choose_strategy("zero3", 2, True, GIB, 80 * GIB) == "zero3"


def test_deepspeed_strategies_need_cuda() -> None:
    with pytest.raises(ConfigError, match="needs CUDA"):
        check_environment("zero3", cuda=False, offload=False)
    with pytest.raises(ConfigError, match="offload"):
        check_environment("ddp", cuda=False, offload=True)
    check_environment("ddp", cuda=False, offload=False)
