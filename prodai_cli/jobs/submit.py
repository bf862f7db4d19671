"""Accepting a job: pin the model version, check the quota, write the record, hand it to the backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prodai_cli.errors import InputError, JobError, UsageError
from prodai_cli.jobs.store import JobRecord, JobStore, now_iso

if TYPE_CHECKING:
    from prodai_cli.config import BatchConfig, JobsConfig, Settings


class QuotaExceeded(UsageError):
    """The API key already has ``jobs.max_queued_per_key`` queued or running jobs."""


class JobQueue(Protocol):
    """Where accepted jobs go: the embedded worker thread, or Celery."""

    def enqueue(self, job_id: str) -> None:
        """Schedule ``job_id`` to run."""
        ...

    def cancelled(self, job_id: str) -> None:
        """A cancel was recorded for ``job_id`` (embedded: enforce it now; Celery: the runner sees the record)."""
        ...

    def worker_count(self) -> int | None:
        """Processes that take this server's jobs (embedded: 1, the server; Celery: live workers; None: unknown)."""
        ...

    def close(self) -> None:
        """Stop (embedded: end the worker thread and its child process)."""
        ...


def jobs_dir(settings: Settings) -> Path:
    """``jobs.dir`` resolved against the config's directory, else ``.prodai/jobs``."""
    configured = settings.config.jobs.dir
    return settings.resolve_path(configured) if configured else settings.state_dir / "jobs"


def pin_model(settings: Settings, ref: str) -> tuple[str, str]:
    """Resolve ``ref`` to the exact version a job will run: ``(NAME/VERSION, VERSION)``.

    A ``NAME/VERSION`` already in the local model cache is pinned without the registry (versions are immutable):
    that is how a container, whose models are baked in and which has no registry, takes jobs.

    Raises:
        ModelNotFoundError: Unknown model, version or alias (a 4xx at submit, never a failure in a worker).

    """
    from prodai_cli.refs import parse_model_ref
    from prodai_cli.registry import Registry

    parsed = parse_model_ref(ref)
    registry = Registry(settings)
    if parsed.version is not None and parsed.alias is None:
        cached = registry.cached(parsed.name, parsed.version, verify=False)
        if cached is not None:
            return f"{cached.info.name}/{cached.info.version}", str(cached.info.version)
    info = registry.get_version(parsed)
    return f"{info.name}/{info.version}", str(info.version)


def batch_settings(batch: BatchConfig, jobs: JobsConfig, *, beside_server: bool) -> dict[str, Any]:
    """The batch settings a job is pinned to at submit (from ``batch:``, with ``jobs:``'s chunk and threads)."""
    import os

    threads = jobs.threads
    if threads is None and beside_server:
        threads = max(1, (os.cpu_count() or 2) // 2)  # leave the server's compute thread cores of its own
    return {
        "batch_size": batch.batch_size,
        "max_tokens": batch.max_tokens,
        "device": batch.device,
        "precision": batch.precision,
        "chunk_size": jobs.chunk_size,
        "threads": threads,
        "trace": batch.trace,
        "line_limits": {
            "max_line_bytes": batch.max_line_bytes,
            "max_depth": batch.max_json_depth,
            "max_number_digits": batch.max_json_number_digits,
        },
    }


def count_lines(path: Path) -> int:
    """Lines in a file (a last line without a newline counts)."""
    from prodai_cli.batch.reader import fingerprint

    return fingerprint(path).lines


def allowed_input(path_text: str, input_dirs: list[str], root: Path) -> Path:
    """A server-side input path, if it lies inside one of ``jobs.input_dirs`` (symlinks resolved).

    Raises:
        UsageError: Path inputs are off, or the path is outside every allowed directory.
        InputError: The file does not exist or is not a regular file.

    """
    if not input_dirs:
        raise UsageError("This server takes uploaded inputs only (jobs.input_dirs is empty)")
    path = Path(path_text)
    if not path.is_absolute():
        raise UsageError("input_path must be an absolute path")
    resolved = path.resolve()
    for directory in input_dirs:
        base = (root / directory).resolve() if not Path(directory).is_absolute() else Path(directory).resolve()
        if resolved.is_relative_to(base):
            break
    else:
        raise UsageError("input_path is outside the directories this server reads (jobs.input_dirs)")
    if not resolved.is_file():
        raise InputError("input_path is not a readable file")
    return resolved


def texts_writer(texts: list[str]) -> Callable[[Path], None]:
    """Write ``texts`` as the JSONL input of a ``/batch_predict`` job (ids are the positions)."""

    def write(path: Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for index, text in enumerate(texts):
                handle.write(json.dumps({"id": index, "text": text}, ensure_ascii=False) + "\n")

    return write


def submit(
    store: JobStore,
    queue: JobQueue,
    record: JobRecord,
    write_input: Callable[[Path], None] | None,
    *,
    max_active: int,
) -> JobRecord:
    """Check the owner's quota, create the job (counting its input lines) and enqueue it.

    Raises:
        QuotaExceeded: The owner already has ``max_active`` queued or running jobs.
        JobError: The queue refused it (Redis down); the job is recorded as failed.

    """
    if store.active_for(record.owner) >= max_active:
        raise QuotaExceeded(
            f"This key already has {max_active} queued or running jobs (jobs.max_queued_per_key); "
            "wait for one to finish or cancel one"
        )

    def write_and_count(path: Path) -> None:
        if write_input is not None:
            write_input(path)
        record.lines_total = count_lines(path if write_input is not None else store.input_path(record))

    store.create(record, write_and_count)
    try:
        queue.enqueue(record.id)
    except JobError as exc:
        reason = exc.message

        # Never leave a queued job that no queue holds: it would count against the quota forever.
        def fail(current: JobRecord) -> None:
            current.status, current.error, current.finished = "failed", reason, now_iso()

        store.update(record.id, fail)
        raise
    return record
