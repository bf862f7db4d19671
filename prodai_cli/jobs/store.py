"""Job records on disk: one directory per job under ``.prodai/jobs/`` (or ``jobs.dir``), shared by server and workers.

Layout of ``<dir>/<id>/``:

- ``job.json``: the record (:class:`JobRecord`): status, pinned model, settings, progress, times, error;
  rewritten atomically under ``job.lock``, so the API and a worker never lose each other's update;
- ``input.jsonl``: the uploaded input (a job on a server-side path reads that path instead);
- ``results.jsonl``, ``results.errors.jsonl``, ``results.manifest.json``: the batch writer's output, errors
  file and manifest (:class:`~prodai_cli.batch.writer.ResumableWriter`), so a job resumes exactly where a
  dead worker stopped;
- ``cancel``: present once a cancel was requested; the runner checks it after every committed chunk;
- ``run.lock``: held (flock) by the one process running the job; the kernel drops it when that process dies.

A job directory is built under a temporary name and renamed into place, so a listing never sees half a job.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from prodai_cli.errors import JobNotFoundError

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
_ID = re.compile(r"[0-9a-f]{32}")


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class JobRecord:
    """One job: what to run (pinned model, fields, batch settings) and how far it got.

    Attributes:
        id: 32 hex digits (a UUID4), also the directory name.
        model: The pinned version the job runs (``NAME/VERSION``), resolved at submit.
        model_ref: The reference the client sent (``clf@production``).
        owner: The API key name that submitted it (None when auth is off).
        kind: ``texts`` (``POST /batch_predict``), ``upload`` or ``path``.
        input_path: The server-side input path for ``path`` jobs; None: ``input.jsonl`` in the job directory.
        settings: Batch settings (batch_size, max_tokens, precision, device, threads, chunk_size, limits).
        worker: Who ran it last: the Celery worker's node name, or ``embedded@HOST`` (the server itself).

    """

    id: str
    model: str
    model_ref: str
    model_version: str
    owner: str | None = None
    kind: str = "upload"
    status: JobStatus = "queued"
    text_field: str = "text"
    id_field: str = "id"
    input_path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    started: str | None = None
    finished: str | None = None
    lines_total: int = 0
    lines_done: int = 0
    items: int = 0
    errors: int = 0
    items_per_s: float = 0.0
    error: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``job.json`` and the API's ``GET /v1/jobs/{id}``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Read a record, ignoring keys a newer version may have added."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def terminal(self) -> bool:
        """Whether the job has finished one way or another."""
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` shows: the record without server-side paths and settings."""
        data = self.to_dict()
        data.pop("input_path")
        data.pop("settings")
        data["progress"] = {"done": self.lines_done, "total": self.lines_total}
        return data


class JobStore:
    """The job directories under ``root``.

    Args:
        root: The jobs directory (created on first use).

    """

    def __init__(self, root: Path) -> None:
        self.root = root

    # ------------------------------------------------------------------------------------- paths
    def job_dir(self, job_id: str) -> Path:
        """The directory of ``job_id``.

        Raises:
            JobNotFoundError: ``job_id`` is not a job id (never a path outside the store).

        """
        if not _ID.fullmatch(job_id):
            raise JobNotFoundError(f"No job {job_id[:64]!r}: job ids are 32 hex digits")
        return self.root / job_id

    def input_path(self, record: JobRecord) -> Path:
        """The input the job reads."""
        return Path(record.input_path) if record.input_path else self.job_dir(record.id) / "input.jsonl"

    def results_path(self, job_id: str) -> Path:
        """The results JSONL (the batch writer's output)."""
        return self.job_dir(job_id) / "results.jsonl"

    def errors_path(self, job_id: str) -> Path:
        """The errors file: one line per bad input line, with its line number and reason."""
        return self.job_dir(job_id) / "results.errors.jsonl"

    def run_lock(self, job_id: str) -> FileLock:
        """The lock the one process running the job holds (released by the kernel if that process dies)."""
        return FileLock(self.job_dir(job_id) / "run.lock")

    # ------------------------------------------------------------------------------------ records
    @staticmethod
    def new_id() -> str:
        """A fresh job id."""
        return uuid.uuid4().hex

    def create(self, record: JobRecord, write_input: Callable[[Path], None] | None = None) -> JobRecord:
        """Build the job's directory under a temporary name, then rename it into place.

        Args:
            record: The new record (its ``id`` names the directory).
            write_input: Writes ``input.jsonl`` into the directory it is given (uploaded inputs).

        """
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{record.id}.new"
        staging.mkdir()
        try:
            if write_input is not None:
                write_input(staging / "input.jsonl")
            _write_record(staging / "job.json", record)
            staging.rename(self.job_dir(record.id))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record

    def staging_file(self) -> Path:
        """A fresh temporary file path in the store (for an upload streaming in before its job exists)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".upload-{uuid.uuid4().hex}"

    def get(self, job_id: str) -> JobRecord:
        """The record of ``job_id``.

        Raises:
            JobNotFoundError: No such job.

        """
        path = self.job_dir(job_id) / "job.json"
        try:
            return JobRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise JobNotFoundError(f"No job {job_id}") from None

    def update(self, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """Read, change and atomically rewrite the record under the job's lock; returns the new record."""
        directory = self.job_dir(job_id)
        if not directory.is_dir():
            raise JobNotFoundError(f"No job {job_id}")
        with FileLock(directory / "job.lock"):
            record = self.get(job_id)
            change(record)
            _write_record(directory / "job.json", record)
        return record

    def claim(self, job_id: str, worker: str | None = None) -> JobRecord | None:
        """Mark a queued (or interrupted running) job as running for this process; None when it is finished.

        Args:
            job_id: Which job.
            worker: Who runs it (recorded as ``worker``).

        """
        claimed: list[bool] = []

        def start(record: JobRecord) -> None:
            if record.terminal:
                return
            if record.cancel_requested:
                record.status, record.finished = "cancelled", now_iso()
                return
            record.status = "running"
            record.started = record.started or now_iso()
            record.attempts += 1
            record.worker = worker
            claimed.append(True)

        record = self.update(job_id, start)
        return record if claimed else None

    def request_cancel(self, job_id: str) -> JobRecord:
        """Cancel: a queued job ends at once; a running one is told to stop at its next commit."""

        def cancel(record: JobRecord) -> None:
            if record.terminal:
                return
            record.cancel_requested = True
            if record.status == "queued":
                record.status, record.finished = "cancelled", now_iso()

        record = self.update(job_id, cancel)
        if not record.terminal:
            (self.job_dir(job_id) / "cancel").touch()
        return record

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was asked for (a stat, cheap enough for every commit)."""
        return (self.job_dir(job_id) / "cancel").exists()

    def records(self) -> Iterator[JobRecord]:
        """Every job's record, in no particular order (half-built and removed jobs are skipped)."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if not _ID.fullmatch(path.name):
                continue
            with contextlib.suppress(JobNotFoundError, ValueError, OSError):
                yield self.get(path.name)

    def page(
        self, *, owner: str | None = None, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[JobRecord], int]:
        """A page of jobs, newest first, and how many match in all."""
        matching = [
            r for r in self.records() if (owner is None or r.owner == owner) and (status is None or r.status == status)
        ]
        matching.sort(key=lambda r: (r.created, r.id), reverse=True)
        return matching[offset : offset + limit], len(matching)

    def counts(self) -> dict[str, int]:
        """Jobs by status (every status present, zeros included)."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for record in self.records():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def active_for(self, owner: str | None) -> int:
        """Queued or running jobs of ``owner`` (the per-key quota counts these)."""
        return sum(1 for r in self.records() if r.owner == owner and r.status in ACTIVE)

    def queued(self) -> list[JobRecord]:
        """Queued jobs, oldest first."""
        return sorted((r for r in self.records() if r.status == "queued"), key=lambda r: r.created)

    def prune(self, keep_days: float) -> int:
        """Remove finished jobs older than ``keep_days`` (and stale staging files); returns how many jobs."""
        cutoff = (datetime.now(tz=UTC) - timedelta(days=keep_days)).isoformat()
        removed = 0
        for record in list(self.records()):
            if record.terminal and (record.finished or record.created) < cutoff:
                shutil.rmtree(self.job_dir(record.id), ignore_errors=True)
                removed += 1
        return removed


def _write_record(path: Path, record: JobRecord) -> None:
    from prodai_cli.config import write_atomic

    write_atomic(path, json.dumps(record.to_dict(), indent=2) + "\n")
