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
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ComputeThread:
    """A daemon thread that runs submitted callables one at a time, in submission order.

    Args:
        name: Thread name (shows up in ``py-spy`` and ``/proc/PID/task/*/comm``).

    """

    def __init__(self, name: str = "prodai-compute") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args)`` for the compute thread (started on first use).

        Returns:
            A future with the call's result or exception.

        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._start()
        self._jobs.put((future, fn, args))
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Await ``fn(*args)`` run on the compute thread, leaving the event loop free meanwhile."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                thread.start()
                self._thread = thread

    def _serve(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            _complete(future, fn, args)  # the thread outlives any one job's exception


def _complete(future: concurrent.futures.Future[T], fn: Callable[..., T], args: tuple[Any, ...]) -> None:
    """Run ``fn(*args)`` into ``future`` (unless it was cancelled before it started)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


_compute: ComputeThread | None = None
_compute_lock = threading.Lock()


def compute_thread() -> ComputeThread:
    """The process's compute thread: every forward pass (and warm-up) of a long-lived process goes here."""
    global _compute
    if _compute is None:
        with _compute_lock:
            if _compute is None:
                _compute = ComputeThread()
    return _compute


def _forget_after_fork() -> None:
    # A forked child has no copy of the parent's threads; it starts its own compute thread on first use.
    global _compute, _compute_lock
    _compute = None
    _compute_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


async def run_in_fresh_thread(fn: Callable[..., T], *args: Any, name: str = "prodai-loader") -> T:
    """Await ``fn(*args)`` run on a new thread that exits afterwards, taking its OpenMP team with it.

    For one-off torch work that must neither block the compute thread (loading a model while another one
    serves) nor leave a second OpenMP team behind, as a pooled executor thread would.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    thread = threading.Thread(target=_complete, args=(future, fn, args), name=name, daemon=True)
    thread.start()
    result = await asyncio.wrap_future(future)
    # The team is released as the thread exits, just after the result; wait for it (off the event loop)
    # so the first forward passes on the compute thread are not throttled by it.
    await asyncio.to_thread(thread.join)
    return result
