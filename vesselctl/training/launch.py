"""Processes and strategies: relaunch under torchrun, read launcher environments, pick a strategy.

``vesselctl train --gpus N`` with N > 1 (or ``--nnodes M``) starts itself again under torchrun
(``python -m torch.distributed.run``) with the resolved settings file, so one command works on a
laptop, a workstation and every node of a cluster. When RANK/WORLD_SIZE are already set (torchrun,
``deepspeed``, or Slurm's ``srun`` whose SLURM_* variables are mapped here) it runs in place.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vesselctl.errors import ConfigError
from vesselctl.settings.train import DistributedSettings

Strategy = Literal["single", "ddp", "zero2", "zero3"]

# The frozen model "fits" one card when its weights take at most this share of the card's memory;
# the rest is for activations, LoRA/optimiser state, the CUDA context and fragmentation.
FIT_FRACTION = 0.5


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, rank on its machine, and how many processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(env: dict[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {name}={env[name]!r} is not an integer; "
            "check the launcher's environment"
        ) from exc


def launcher_env(environ: dict[str, str] | None = None) -> DistEnv | None:
    """The DistEnv set by a launcher (torchrun/deepspeed: RANK..., Slurm srun: SLURM_PROCID...).

    Returns None when no launcher started this process. Slurm is used only when it started more
    than one task (``srun --ntasks N``); a batch script's single task relaunches itself instead.
    """
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=_int_env(env, "RANK"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            world_size=_int_env(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
        )
    slurm_tasks = _int_env(env, "SLURM_NTASKS") if "SLURM_NTASKS" in env else 1
    if "SLURM_PROCID" in env and slurm_tasks > 1:
        if "MASTER_ADDR" not in env:
            raise ConfigError(
                "running under srun with several tasks but MASTER_ADDR is not set; export "
                "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) and "
                "MASTER_PORT in the batch script"
            )
        return DistEnv(
            rank=_int_env(env, "SLURM_PROCID"),
            local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            world_size=slurm_tasks,
            master_addr=env["MASTER_ADDR"],
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
        )
    return None


def export_dist_env(dist: DistEnv) -> None:
    """Set the variables torch.distributed's env:// init reads (needed after the Slurm mapping)."""
    os.environ.update(
        {
            "RANK": str(dist.rank),
            "LOCAL_RANK": str(dist.local_rank),
            "WORLD_SIZE": str(dist.world_size),
            "MASTER_ADDR": dist.master_addr,
            "MASTER_PORT": str(dist.master_port),
        }
    )


def needs_relaunch(settings: DistributedSettings, environ: dict[str, str] | None = None) -> bool:
    """True when more than one process is asked for and no launcher started this one."""
    return settings.world_size > 1 and launcher_env(environ) is None


def torchrun_command(
    settings: DistributedSettings, settings_file: Path, command: str = "train"
) -> list[str]:
    """The torchrun command that runs `vesselctl COMMAND --config settings_file` on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={settings.gpus}",
        f"--nnodes={settings.nnodes}",
        f"--node-rank={settings.node_rank}",
        f"--master-addr={settings.master_addr}",
        f"--master-port={settings.master_port}",
        "-m",
        "vesselctl",
        command,
        "--config",
        str(settings_file),
    ]


def relaunch(settings: DistributedSettings, settings_file: Path, command: str = "train") -> int:
    """Run this node's share of `vesselctl COMMAND` under torchrun and return its exit code."""
    argv = torchrun_command(settings, settings_file, command)
    env = dict(os.environ)
    # Each worker uses its own threads; torchrun's default of 1 OpenMP thread is what we want on
    # GPUs, and on CPU it keeps N processes from fighting over the same cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // settings.gpus)))
    process = subprocess.Popen(argv, env=env)

    # A scheduler may signal only this process: pass SIGTERM on so the workers save and stop
    # (torchrun gives them about 30 s before it kills them).
    def forward(signum: int, frame: object) -> None:
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def choose_strategy(
    requested: str,
    world_size: int,
    cuda: bool,
    frozen_model_bytes: int,
    gpu_memory_bytes: int | None,
) -> Strategy:
    """Resolve ``auto``: ZeRO-3 only when the model does not fit one card, else ZeRO-2 or single.

    ZeRO-3 shards the weights but gathers them for every layer of every micro-batch; for LoRA on a
    model that fits, that is pure overhead (3.5x slower than ZeRO-2 measured on an H200, see
    shared/device/README.md). On CPU there is no DeepSpeed: several processes use torch DDP.
    """
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if cuda and gpu_memory_bytes and frozen_model_bytes > FIT_FRACTION * gpu_memory_bytes:
        return "zero3"
    if world_size > 1:
        return "zero2" if cuda else "ddp"
    return "single"


def check_environment(strategy: Strategy, cuda: bool, offload: bool) -> None:
    """Refuse strategies this machine cannot run, naming the fix."""
    if strategy in ("zero2", "zero3"):
        if not cuda:
            raise ConfigError(
                f"distributed.strategy '{strategy}' (DeepSpeed ZeRO) needs CUDA GPUs and none is "
                "visible; on CPU use strategy ddp (several processes) or single"
            )
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"distributed.strategy '{strategy}' needs the deepspeed package, which is not "
                "installed; `pip install deepspeed` (DS_BUILD_OPS=0 is enough) or use strategy ddp"
            )
    elif offload:
        raise ConfigError(
            f"distributed.offload needs DeepSpeed but the strategy resolved to '{strategy}'; "
            "set distributed.strategy to zero2 or zero3"
        )
