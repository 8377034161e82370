"""How many DataLoader worker processes a stage starts when the user does not say."""

from __future__ import annotations

import os

#: Most workers per GPU process: beyond this the workers' memory grows faster than they help.
MAX_WORKERS_PER_GPU = 8


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers and SLURM restrict;
    ``os.cpu_count`` counts the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 2


def processes_on_this_machine(world_size: int) -> int:
    """Training/prediction processes sharing this machine's CPUs: torchrun's LOCAL_WORLD_SIZE
    or SLURM's tasks per node when set, else the whole world (one machine)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "").split("(")[0]  # SLURM may write "4(x2)"
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(world_size, 1)


def cpus_per_process(world_size: int) -> int:
    """CPUs one training/prediction process may give its loader workers.

    Processes that srun started as separate tasks (no torchrun in between) get
    SLURM_CPUS_PER_TASK when set: srun often binds each task to its own CPUs, so its affinity
    mask is already its share and dividing it among the node's tasks again would leave each
    with one worker. Otherwise this process's CPUs shared among the processes on the machine.
    """
    srun_tasks = os.environ.get("SLURM_NTASKS", "")
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if (
        "LOCAL_WORLD_SIZE" not in os.environ
        and "SLURM_PROCID" in os.environ
        and srun_tasks.isdigit()
        and int(srun_tasks) > 1
        and per_task.isdigit()
        and int(per_task) > 0
    ):
        return min(int(per_task), usable_cpus())
    return usable_cpus() // processes_on_this_machine(world_size)


def default_loader_workers(on_gpu: bool, world_size: int) -> int:
    """Workers per process when the setting is left empty: none on the CPU (the model needs
    the cores), else the machine's CPUs shared among its GPU processes, one left for each
    process itself, between 1 and ``MAX_WORKERS_PER_GPU``.

    Measured need (BENCHMARKS.md, issue 10): one worker prepared 24.2 training samples/s on the
    H200 machine's CPU, and the fastest Sa2VA-1B configuration takes 166.5 samples/s.
    """
    if not on_gpu:
        return 0
    return max(1, min(MAX_WORKERS_PER_GPU, cpus_per_process(world_size) - 1))
