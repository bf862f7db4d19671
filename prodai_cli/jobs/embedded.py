"""The embedded backend: the server runs jobs itself, one at a time, each in a low-priority child process.

Why a child process and not a thread of the server: every forward pass of the server runs on its one
compute thread (:mod:`prodai_cli.runtime.compute`) so that torch keeps one OpenMP team; a job's forward
passes on a second thread would add a second team, and with more OpenMP threads than cores libgomp puts
its threads to sleep at nearly every barrier, slowing ``/predict`` for as long as the job runs. A child
process has its own torch, ``jobs.threads`` threads (default: half the cores) and ``jobs.nice`` niceness,
so the kernel gives the server's compute thread the CPU first. The same runner runs in ``prodai worker``.

A watcher thread of the server starts the children; it also makes a running job's cancel stick: a child
that has not stopped at its next commit within :data:`CANCEL_GRACE_S` (say, still loading the model) is
killed, and the job recorded as cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from filelock import Timeout

from prodai_cli.jobs.runner import EXIT_BUSY
from prodai_cli.jobs.store import JobRecord, JobStore, now_iso

logger = logging.getLogger("prodai.jobs")

CANCEL_GRACE_S = 3.0
POLL_S = 0.2


class EmbeddedQueue:
    """Runs queued jobs in child processes of the server, oldest first, one at a time.

    Args:
        store: The jobs directory.
        config_path: The server's prodai.yaml (the child reads the same registry); None: defaults.
        root: The project directory (the child's working directory).
        nice: Niceness added to each child (0-19).

    """

    def __init__(self, store: JobStore, *, config_path: Path | None, root: Path, nice: int = 10) -> None:
        self.store = store
        self.config_path = config_path
        self.root = root
        self.nice = nice
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="prodai-jobs", daemon=True)
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        """Wake the watcher: a job was queued."""
        self._wake.set()

    def cancelled(self, job_id: str) -> None:
        """Wake the watcher so a cancelled running job's child is stopped now."""
        self._wake.set()

    def worker_count(self) -> int:
        """One: this server runs its jobs itself."""
        return 1

    def close(self) -> None:
        """Stop the watcher; a running child is terminated (its job resumes when a server starts again)."""
        self._stop.set()
        self._wake.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        self._thread.join(timeout=10)

    # -------------------------------------------------------------------------------- the watcher
    def _loop(self) -> None:
        self._recover()
        while not self._stop.is_set():
            queued = self.store.queued()
            if not queued:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self._run_child(queued[0])
            except Exception:  # the watcher must outlive any one job's trouble
                logger.exception("embedded job runner failed", extra={"job_id": queued[0].id})
                self._stop.wait(1.0)

    def _recover(self) -> None:
        """Requeue jobs left 'running' by a server that stopped (none of them has a live runner)."""
        for record in self.store.records():
            if record.status != "running":
                continue
            lock = self.store.run_lock(record.id)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                continue  # another server process runs it
            try:

                def requeue(current: JobRecord) -> None:
                    if current.status == "running":
                        current.status = "queued"

                self.store.update(record.id, requeue)
            finally:
                lock.release()

    def _run_child(self, record: JobRecord) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PRODAI_CONFIG"}
        if self.config_path is not None:
            env["PRODAI_CONFIG"] = str(self.config_path)
        nice = self.nice
        child = subprocess.Popen(
            [sys.executable, "-m", "prodai_cli.jobs.runner", "--dir", str(self.store.root), record.id],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self._child = child
        cancel_seen: float | None = None
        elapsed = 0.0
        while child.poll() is None:
            if self._stop.wait(POLL_S):
                break
            elapsed += POLL_S
            if cancel_seen is None and self.store.cancel_requested(record.id):
                cancel_seen = elapsed
            if cancel_seen is not None and elapsed - cancel_seen > CANCEL_GRACE_S:
                child.send_signal(signal.SIGKILL)
                child.wait()
                self._mark_cancelled(record.id)
        self._child = None
        if child.returncode not in (0, None, EXIT_BUSY, -signal.SIGKILL, -signal.SIGTERM):
            self._mark_failed(record.id, f"the job process exited with status {child.returncode}")

    def _mark_cancelled(self, job_id: str) -> None:
        def cancel(current: JobRecord) -> None:
            if not current.terminal:
                current.status, current.finished = "cancelled", now_iso()

        self.store.update(job_id, cancel)

    def _mark_failed(self, job_id: str, reason: str) -> None:
        def fail(current: JobRecord) -> None:
            if not current.terminal:
                current.status, current.finished, current.error = "failed", now_iso(), reason

        self.store.update(job_id, fail)
