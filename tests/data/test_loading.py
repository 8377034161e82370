"""Default DataLoader worker counts: none on the CPU, the machine's CPUs shared among its GPU
processes on a GPU machine."""

from __future__ import annotations

import pytest

from vesselctl.data import loading


@pytest.fixture
def cpus(monkeypatch):
    for name in (
        "LOCAL_WORLD_SIZE",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_CPUS_PER_TASK",
        "SLURM_NTASKS",
        "SLURM_PROCID",
    ):
        monkeypatch.delenv(name, raising=False)

    def set_cpus(count: int) -> None:
        monkeypatch.setattr(loading, "usable_cpus", lambda: count)

    return set_cpus


def test_no_workers_on_the_cpu(cpus) -> None:
    cpus(64)
    assert loading.default_loader_workers(False, 1) == 0


def test_gpu_processes_share_the_machine(cpus) -> None:
    cpus(16)
    assert loading.default_loader_workers(True, 1) == 8  # capped
    assert loading.default_loader_workers(True, 4) == 3  # 16 // 4 - 1
    cpus(2)
    assert loading.default_loader_workers(True, 4) == 1  # never none on a GPU


def test_local_process_count_comes_from_the_launcher(cpus, monkeypatch) -> None:
    cpus(32)
    # 4 machines x 4 GPUs: each machine's 32 CPUs serve its own 4 processes, not all 16.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loading.default_loader_workers(True, 16) == 7
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x4)")
    assert loading.processes_on_this_machine(8) == 2
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "")
    assert loading.processes_on_this_machine(8) == 8


def test_srun_tasks_bound_to_their_cpus_are_not_divided_again(cpus, monkeypatch) -> None:
    """srun --ntasks-per-node 4 --cpus-per-task 8: each task's affinity mask is its own 8 CPUs
    (already its share), so it keeps 7 workers instead of 8 // 4 - 1 = 1."""
    cpus(8)
    for name, value in {
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_CPUS_PER_TASK": "8",
    }.items():
        monkeypatch.setenv(name, value)
    assert loading.default_loader_workers(True, 8) == 7
    cpus(32)  # not bound: the task may run anywhere on the node, its share is still 8
    assert loading.default_loader_workers(True, 8) == 7
    # torchrun inside the allocation (one srun task starting 4 processes): they share its CPUs.
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loading.default_loader_workers(True, 4) == 7  # 32 // 4 - 1


def test_usable_cpus_is_positive() -> None:
    assert loading.usable_cpus() >= 1
