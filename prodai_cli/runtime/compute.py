"""One thread per process runs every forward pass, because torch's OpenMP teams belong to threads.

libgomp (torch's CPU thread pool on Linux) gives each thread that enters a parallel region a team of its own
workers and keeps that team until the thread exits. Once a process holds more OpenMP threads than CPUs,
libgomp stops spin-waiting at barriers (it "throttles" to ~1,000 spins whatever ``GOMP_SPINCOUNT`` says) and
puts its threads to sleep at nearly every barrier instead. A MiniLM forward pass has ~60 parallel regions, so
a server whose model was loaded and warmed on one thread and run on another (two teams on two cores) paid
~58 futex sleeps and wake-ups per request, a few hundred microseconds to milliseconds of pure waiting on
this machine's virtual CPUs, while the baseline that ran everything on its one thread paid ~1. Routing all
model work of the process through :func:`compute_thread` keeps one team; loading happens in
:func:`run_in_fresh_thread`, whose thread (and OpenMP team) is gone when the load returns.

The same holds for several models in one server (A/B variants): they share the one compute thread and take
turns, which on a CPU is also what keeps two forward passes from fighting over the same cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


_compute: concurrent.futures.ThreadPoolExecutor | None = None
_compute_lock = threading.Lock()


def compute_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The process's compute thread (a one-thread executor): every forward pass and warm-up goes here."""
    global _compute
    if _compute is None:
        with _compute_lock:
            if _compute is None:
                _compute = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodai-compute")
    return _compute


def _forget_after_fork() -> None:
    # A forked child has no copy of the parent's threads; it starts its own compute thread on first use.
    global _compute, _compute_lock
    _compute = None
    _compute_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


async def run_in_fresh_thread(fn: Callable[..., T], *args: Any) -> T:
    """Await ``fn(*args)`` run on a new thread that exits afterwards, taking its OpenMP team with it.

    For one-off torch work that must neither block the compute thread (loading a model while another one
    serves) nor leave a second OpenMP team behind, as a pooled executor thread would.
    """
    loader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prodai-loader")
    try:
        result = await asyncio.get_running_loop().run_in_executor(loader, fn, *args)
    except BaseException:
        loader.shutdown(wait=False)  # a failed or cancelled load must not hold up the caller
        raise
    # Joining the thread (off the event loop) means its team is gone before the compute thread's first passes.
    await asyncio.to_thread(loader.shutdown)
    return result
