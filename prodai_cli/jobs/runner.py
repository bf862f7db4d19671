"""Run one job: the same engine and resumable writer as ``prodai batch``, with progress and cancel in the record.

Both backends call :func:`execute`: the embedded one in a child process of the server (``python -m
prodai_cli.jobs.runner``), the Celery one inside ``prodai worker``. Exactly-once comes from two locks and the
batch writer: ``run.lock`` admits one runner per job (a second delivery of the same job gets
:class:`JobBusy` and is retried later), and the writer's manifest makes a runner that takes over from a
dead one continue after the last committed line, never before or after it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import Timeout

from prodai_cli.errors import JobCancelledError, ProdaiError, first_line
from prodai_cli.jobs.store import JobRecord, JobStore, now_iso

if TYPE_CHECKING:
    from prodai_cli.batch import BatchJob, ProgressUpdate
    from prodai_cli.config import Settings

logger = logging.getLogger("prodai.jobs")

EXIT_BUSY = 3  # the runner's status when another process holds the job


class JobBusy(Exception):
    """Another live process is running this job (its ``run.lock`` is held)."""


def batch_job(store: JobStore, record: JobRecord) -> BatchJob:
    """The :class:`~prodai_cli.batch.BatchJob` a job record describes (its output in the job's directory)."""
    from prodai_cli.batch import BatchJob
    from prodai_cli.batch.reader import LineLimits

    settings = record.settings
    return BatchJob(
        input=store.input_path(record),
        output=store.results_path(record.id),
        model=record.model,
        text_field=record.text_field,
        id_field=record.id_field,
        batch_size=settings.get("batch_size", "auto"),
        max_tokens=settings.get("max_tokens"),
        device=settings.get("device", "auto"),
        precision=settings.get("precision", "fp32"),
        max_error_rate=1.0,  # bad lines are reported in the errors file and the record, never fail the job
        chunk_size=int(settings.get("chunk_size", 256)),
        sort_chunks=1,  # one chunk per window: a cancel takes effect at the next commit, as documented
        threads=settings.get("threads"),
        line_limits=LineLimits(**settings.get("line_limits", {})),
        trace=bool(settings.get("trace", True)),
    )


def execute(store: JobStore, job_id: str, settings: Settings | None = None, *, worker: str | None = None) -> JobRecord:
    """Run (or resume) a job to an end state and record it.

    Args:
        store: Where the job lives.
        job_id: Which job.
        settings: Registry access (None: load from the working directory).
        worker: Who runs it, recorded in the job (the Celery node name; ``embedded@HOST``).

    Returns:
        The final record (or the current one when the job had already finished).

    Raises:
        JobBusy: Another live process runs this job right now.
        JobNotFoundError: No such job.

    """
    lock = store.run_lock(job_id)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise JobBusy(job_id) from None
    try:
        record = store.claim(job_id, worker)
        if record is None:
            return store.get(job_id)
        return _run(store, record, settings)
    finally:
        lock.release()


def _run(store: JobStore, record: JobRecord, settings: Settings | None) -> JobRecord:
    from prodai_cli.batch import run_batch

    job = batch_job(store, record)
    started = time.perf_counter()

    def on_progress(update: ProgressUpdate) -> None:
        elapsed = time.perf_counter() - started
        rate = round(update.items / elapsed, 2) if elapsed > 0 else 0.0

        def advance(current: JobRecord) -> None:
            current.lines_done, current.lines_total = update.lines_done, update.lines_total
            current.items, current.items_per_s = update.items, rate

        store.update(record.id, advance)
        if store.cancel_requested(record.id):
            raise JobCancelledError(f"Job {record.id} was cancelled")

    try:
        summary = run_batch(job, settings, on_progress=on_progress)
    except JobCancelledError:
        return _end(store, record.id, "cancelled")
    except ProdaiError as exc:
        return _end(store, record.id, "failed", error=exc.message)
    except Exception as exc:  # a job's failure is recorded, never lost with the worker's log
        logger.exception("job failed", extra={"job_id": record.id})
        return _end(store, record.id, "failed", error=f"{type(exc).__name__}: {first_line(exc)}")

    def done(current: JobRecord) -> None:
        current.lines_done = current.lines_total = summary.lines
        current.items, current.errors = summary.items, summary.errors
        current.items_per_s = summary.items_per_s
        if current.status == "running":
            current.status = "succeeded"
        current.finished = now_iso()

    return store.update(record.id, done)


def _end(store: JobStore, job_id: str, status: str, error: str | None = None) -> JobRecord:
    def finish(current: JobRecord) -> None:
        current.status = status  # type: ignore[assignment]  # one of STATUSES by construction
        current.error = error
        current.finished = now_iso()

    return store.update(job_id, finish)


def main(argv: list[str] | None = None) -> int:
    """``python -m prodai_cli.jobs.runner --dir DIR JOB_ID``: the embedded backend's child process."""
    parser = argparse.ArgumentParser(prog="python -m prodai_cli.jobs.runner")
    parser.add_argument("--dir", required=True, type=Path, help="The jobs directory")
    parser.add_argument("job_id")
    args = parser.parse_args(argv)
    from prodai_cli.config import load_settings

    settings = load_settings(os.environ.get("PRODAI_CONFIG") or None)
    try:
        execute(JobStore(args.dir), args.job_id, settings, worker=f"embedded@{socket.gethostname()}")
    except JobBusy:
        return EXIT_BUSY
    return 0


if __name__ == "__main__":
    sys.exit(main())
