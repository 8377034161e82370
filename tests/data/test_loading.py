"""Default DataLoader worker counts: none on the CPU, the machine's CPUs shared among its GPU
processes on a GPU machine."""

from __future__ import annotations

import pytest

from vesselctl.data import loading


@pytest.fixture
def cpus(monkeypatch):
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
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


def test_usable_cpus_is_positive() -> None:
    assert loading.usable_cpus() >= 1
