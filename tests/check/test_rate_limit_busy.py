"""The rate_limit item on a busy machine: the server's default limits (per_ip 50/s + 25) must still be shown
to end in a 429 while CPU-bound processes run beside it, and a server without limits must still fail."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from prodai_cli.checks import run_checks

pytestmark = pytest.mark.slow

# The embedded defaults, not the small limits of FULL_CONFIG: a busy server answers fewer than 75 + 50/s.
DEFAULT_LIMITS = {
    "per_key": {"rate": 100, "period_s": 1.0, "burst": 50},
    "per_ip": {"rate": 50, "period_s": 1.0, "burst": 25},
}
HOGS_PER_CPU = 4


def _busy(deadline: float) -> None:
    while time.monotonic() < deadline:
        pass


@contextlib.contextmanager
def cpu_hogs() -> Iterator[None]:
    """Four CPU-bound processes per CPU (eight on two cores, as beside a first install), for the test's length."""
    deadline = time.monotonic() + 300
    hogs = [
        multiprocessing.Process(target=_busy, args=(deadline,)) for _ in range(HOGS_PER_CPU * (os.cpu_count() or 1))
    ]
    for hog in hogs:
        hog.start()
    try:
        yield
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join(timeout=10)


def _server(configured_project: Any, serve_project: Any, *, enabled: bool) -> Any:
    return serve_project(configured_project({"rate_limit": {"enabled": enabled, **DEFAULT_LIMITS}}))


def test_rate_limit_item_reaches_429_with_default_limits_beside_cpu_hogs(
    configured_project: Any, serve_project: Any, checking: Any
) -> None:
    server = _server(configured_project, serve_project, enabled=True)
    with checking(server) as ctx, cpu_hogs():
        result = run_checks(ctx, ["rate_limit"]).results[0]
    assert result.status == "pass", result.evidence
    assert "429" in result.evidence and "Retry-After" in result.evidence


def test_rate_limit_item_fails_without_limits_beside_cpu_hogs(
    configured_project: Any, serve_project: Any, checking: Any
) -> None:
    server = _server(configured_project, serve_project, enabled=False)
    with checking(server) as ctx, cpu_hogs():
        result = run_checks(ctx, ["rate_limit"]).results[0]
    assert result.status == "fail", result.evidence
    assert "rate_limit.enabled: true" in result.fix_hint
