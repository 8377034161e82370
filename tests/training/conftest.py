"""Training tests run torch on one thread: on a busy 2-core machine, multi-threaded CPU kernels
spin against each other and a tiny model's step gets ~20x slower (measured)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
