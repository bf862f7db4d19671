"""Job records on disk, submission and the runner's locks, without a server (the HTTP API has its own tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prodai_cli.config import load_settings
from prodai_cli.errors import JobError, JobNotFoundError, UsageError
from prodai_cli.jobs.runner import JobBusy, execute
from prodai_cli.jobs.store import JobRecord, JobStore
from prodai_cli.jobs.submit import QuotaExceeded, allowed_input, submit, texts_writer


class ListQueue:
    """A queue that remembers what it was given (the embedded and Celery queues have server tests)."""

    def __init__(self, fail: bool = False) -> None:
        self.ids: list[str] = []
        self.fail = fail

    def enqueue(self, job_id: str) -> None:
        if self.fail:
            raise JobError("Cannot queue the job: Redis is unreachable (OperationalError)")
        self.ids.append(job_id)

    def cancelled(self, job_id: str) -> None:
        pass

    def worker_count(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def new_record(store: JobStore, owner: str | None = "k", model: str = "clf/1") -> JobRecord:
    return JobRecord(id=store.new_id(), model=model, model_ref=model, model_version="1", owner=owner)


def test_job_ids_cannot_name_paths_outside_the_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    for bad in ("../../etc", "..", "A" * 32, "0" * 31, "/etc/passwd", "0" * 32 + "/.."):
        with pytest.raises(JobNotFoundError):
            store.get(bad)
    with pytest.raises(JobNotFoundError):
        store.get("0" * 32)  # well formed, absent


def test_a_job_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")

    def broken(path: Path) -> None:
        path.write_text('{"text": "half"}\n')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.create(new_record(store), broken)
    assert list((tmp_path / "jobs").iterdir()) == []
    record = store.create(new_record(store), texts_writer(["a", "b"]))
    assert store.get(record.id) == record
    lines = (store.job_dir(record.id) / "input.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": 0, "text": "a"}, {"id": 1, "text": "b"}]


def test_claim_and_cancel_move_a_job_through_its_states(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    queued = store.create(new_record(store))
    cancelled = store.request_cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished is not None
    assert store.claim(queued.id) is None  # a finished job is never run
    running = store.create(new_record(store))
    claimed = store.claim(running.id, "first@host")
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert claimed.worker == "first@host" and store.get(running.id).public()["worker"] == "first@host"
    assert store.claim(running.id, "second@host") is not None and store.get(running.id).attempts == 2  # a takeover
    assert store.get(running.id).worker == "second@host"  # the record names the worker that runs it now
    first_start = store.get(running.id).started
    assert not store.cancel_requested(running.id)
    asked = store.request_cancel(running.id)
    assert asked.status == "running" and asked.cancel_requested and store.cancel_requested(running.id)
    assert store.get(running.id).started == first_start
    # A cancel that lands between submit and the first run ends the job at its claim.
    late = store.create(new_record(store))
    store.update(late.id, lambda r: setattr(r, "cancel_requested", True))
    assert store.claim(late.id) is None and store.get(late.id).status == "cancelled"


def test_pages_are_newest_first_and_per_owner(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    made = [store.create(new_record(store, owner="a" if i % 2 else "b")) for i in range(7)]
    (tmp_path / "jobs" / ".half.new").mkdir()  # a job being created is not listed
    page, total = store.page(owner="a", offset=1, limit=2)
    owned = [r.id for r in sorted(made, key=lambda r: (r.created, r.id), reverse=True) if r.owner == "a"]
    assert total == 3 and [r.id for r in page] == owned[1:3]
    assert store.counts() == {"queued": 7, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert store.active_for("a") == 3
    store.request_cancel(made[1].id)
    assert store.active_for("a") == 2
    assert store.prune(keep_days=1) == 0 and len(list(store.records())) == 7


def test_submit_enforces_the_quota_and_never_strands_a_job_the_queue_refused(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    queue = ListQueue()
    for _ in range(2):
        submit(store, queue, new_record(store), texts_writer(["x", "y", "z"]), max_active=2)
    assert len(queue.ids) == 2 and store.get(queue.ids[0]).lines_total == 3
    with pytest.raises(QuotaExceeded, match="2 queued or running"):
        submit(store, queue, new_record(store), texts_writer(["x"]), max_active=2)
    assert submit(store, queue, new_record(store, owner="other"), texts_writer(["x"]), max_active=2)
    down = new_record(store, owner="down")
    with pytest.raises(JobError, match="Redis is unreachable"):
        submit(store, ListQueue(fail=True), down, texts_writer(["x"]), max_active=1)
    assert store.get(down.id).status == "failed" and store.active_for("down") == 0


def test_path_inputs_only_from_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "inputs"
    allowed.mkdir()
    (allowed / "ok.jsonl").write_text('{"text": "a"}\n')
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"text": "b"}\n')
    os.symlink(secret, allowed / "link.jsonl")
    with pytest.raises(UsageError, match="uploaded inputs only"):
        allowed_input(str(allowed / "ok.jsonl"), [], tmp_path)
    assert allowed_input(str(allowed / "ok.jsonl"), ["inputs"], tmp_path) == (allowed / "ok.jsonl").resolve()
    for bad in ("inputs/ok.jsonl", str(secret), str(allowed / "link.jsonl"), str(allowed / ".." / "secret.jsonl")):
        with pytest.raises(UsageError):
            allowed_input(bad, ["inputs"], tmp_path)


def test_a_job_another_process_runs_is_busy_and_a_job_on_a_vanished_version_fails_with_the_reason(
    registered_copy: Path,
) -> None:
    settings = load_settings()
    store = JobStore(registered_copy / ".prodai" / "jobs")
    record = store.create(new_record(store, model="clf/99"), texts_writer(["a"]))
    lock = store.run_lock(record.id)
    lock.acquire()
    try:
        with pytest.raises(JobBusy):
            execute(store, record.id, settings)
        assert store.get(record.id).status == "queued"
    finally:
        lock.release()
    final = execute(store, record.id, settings)
    assert final.status == "failed" and "99" in (final.error or "") and final.finished is not None
