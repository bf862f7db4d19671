"""Runtime tests run torch on one thread: tiny models gain nothing from more, and on a busy shared
machine OpenMP barriers across descheduled threads make each tiny op cost milliseconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
