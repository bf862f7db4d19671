"""Batch jobs on the Celery backend: a real redis-server, a real `prodai serve` and real `prodai worker` processes.

A worker SIGKILLed mid-job leaves the job to a second worker, which resumes it: the result has every valid id
exactly once and equals `prodai batch` on the same file; bad lines are in the errors file with their numbers.
The seed's `/batch_predict` flow and cancel work the same as on the embedded backend.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import RedisServer, run_cli

from prodai_cli.config import load_settings
from prodai_cli.keys import create_key

pytestmark = [pytest.mark.slow, pytest.mark.redis]

CHUNK = 16
LINES = 5_000
BAD = {17: "{broken json", 1234: json.dumps({"id": "x-5", "text": "dup"}), 4321: json.dumps({"id": "no-text"})}


class Worker:
    """`python -m prodai_cli worker` in the project; its log in a file."""

    def __init__(self, root: Path, name: str, kit: Any) -> None:
        self.log_path = root / f"worker-{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prodai_cli", "worker", "--hostname", f"{name}@test"],
                cwd=root,
                env=kit.clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def celery_project(registered_project: Path, tmp_path: Path, kit: Any, redis_process: RedisServer) -> Any:
    config = kit.BASE_CONFIG + (
        "auth:\n  enabled: true\nrate_limit:\n  enabled: false\ncache:\n  enabled: false\n"
        f"batch:\n  chunk_size: {CHUNK}\n  threads: 1\n"
        f"jobs:\n  backend: celery\n  redis_url: {redis_process.url}\n  chunk_size: {CHUNK}\n  threads: 1\n"
        "  visibility_timeout_s: 3\n"
    )
    root = kit.make_project(registered_project, tmp_path / "proj", config)
    key = create_key(load_settings(root / "prodai.yaml"), "jobs", ["jobs"]).key
    server = kit.Server(root, "--model", "clf@production")
    workers: list[Worker] = []
    kit.start_all(server)
    try:
        yield root, server, key, workers
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


def write_input(path: Path) -> None:
    lines = [
        json.dumps({"id": f"x-{i}", "text": f"review {i}: " + "good " * (i % 7) + "bad " * (i % 5)})
        for i in range(LINES)
    ]
    for number, bad in BAD.items():
        lines[number - 1] = bad
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def record_of(server: Any, key: str, job_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers={"X-API-Key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_killed_worker_leaves_the_job_to_another_that_finishes_it_exactly_once(celery_project: Any, kit: Any) -> None:
    root, server, key, workers = celery_project
    source = root / "reviews.jsonl"
    write_input(source)
    workers.append(Worker(root, "first", kit))
    env = {"PRODAI_API_KEY": key, "PRODAI_SERVER_URL": server.url}
    submitted = run_cli("--json", "jobs", "submit", str(source), "--model", "clf@production", cwd=root, env=env)
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.json()["id"]  # type: ignore[index]
    # Kill the first worker once it has committed part of the job.
    deadline = time.monotonic() + 240
    while (record := record_of(server, key, job_id))["lines_done"] < 1_000:
        assert record["status"] in ("queued", "running"), record
        assert workers[0].proc.poll() is None, workers[0].log()[-3000:]
        assert time.monotonic() < deadline, (record, workers[0].log()[-3000:])
        time.sleep(0.05)
    workers[0].proc.send_signal(signal.SIGKILL)
    workers[0].proc.wait(timeout=30)
    at_kill = record_of(server, key, job_id)
    assert at_kill["status"] == "running" and at_kill["lines_done"] < LINES, at_kill
    workers.append(Worker(root, "second", kit))
    status = run_cli("--json", "jobs", "status", job_id, "--wait", cwd=root, env=env, timeout=300)
    assert status.exit_code == 0, (status.stderr, workers[1].log()[-3000:])
    final = status.json()
    assert final["status"] == "succeeded" and final["attempts"] == 2, final  # type: ignore[index]
    assert final["items"] == LINES - len(BAD) and final["errors"] == len(BAD)  # type: ignore[index]
    fetched = root / "fetched.jsonl"
    got = run_cli("--json", "jobs", "result", job_id, "-o", str(fetched), cwd=root, env=env)
    assert got.exit_code == 0, got.stderr
    results = [json.loads(line) for line in fetched.read_text(encoding="utf-8").splitlines()]
    ids = [r["id"] for r in results]
    valid = {f"x-{i}" for i in range(LINES)} - {"x-16", "x-1233", "x-4320"}
    assert len(ids) == len(set(ids)) == len(valid) and set(ids) == valid
    # The same file through `prodai batch`: the same lines (same chunks, threads and model version).
    batch = run_cli("--json", "batch", str(source), "-o", str(root / "batch.jsonl"), "--model", "clf/1", cwd=root)
    assert batch.exit_code == 0, batch.stderr
    expected = [json.loads(line) for line in (root / "batch.jsonl").read_text(encoding="utf-8").splitlines()]
    assert results == expected
    errors = root / "errors.jsonl"
    assert run_cli("jobs", "result", job_id, "--errors", "-o", str(errors), cwd=root, env=env).exit_code == 0
    bad_lines = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    assert [b["line"] for b in bad_lines] == sorted(BAD)
    batch_errors = (root / "batch.errors.jsonl").read_text(encoding="utf-8")
    assert errors.read_text(encoding="utf-8") == batch_errors


def test_seed_flow_and_cancel_on_celery(celery_project: Any, kit: Any) -> None:
    root, server, key, workers = celery_project
    workers.append(Worker(root, "only", kit))
    headers = {"X-API-Key": key}
    texts = [f"text {i}" for i in range(20)]
    task_id = httpx.post(f"{server.url}/batch_predict", json={"texts": texts}, headers=headers, timeout=30).json()[
        "task_id"
    ]
    deadline = time.monotonic() + 120
    while (data := httpx.get(f"{server.url}/batch_result/{task_id}", headers=headers, timeout=30).json())[
        "status"
    ] != "completed":
        assert data["status"] == "pending" and time.monotonic() < deadline, (data, workers[0].log()[-3000:])
        time.sleep(0.2)
    assert len(data["results"]) == 20 and all(r["label"] in ("NEGATIVE", "POSITIVE") for r in data["results"])
    source = root / "long.jsonl"
    source.write_text("".join(json.dumps({"text": f"long job line {i}"}) + "\n" for i in range(40_000)))
    env = {"PRODAI_API_KEY": key, "PRODAI_SERVER_URL": server.url}
    job_id = run_cli("--json", "jobs", "submit", str(source), cwd=root, env=env).json()["id"]  # type: ignore[index]
    while record_of(server, key, job_id)["lines_done"] < 2 * CHUNK:
        assert time.monotonic() < deadline + 120
        time.sleep(0.05)
    asked = time.monotonic()
    cancelled = run_cli("--json", "jobs", "cancel", job_id, cwd=root, env=env)
    assert cancelled.exit_code == 0, cancelled.stderr
    while (record := record_of(server, key, job_id))["status"] == "running":
        assert time.monotonic() - asked < 10, record
        time.sleep(0.1)
    assert record["status"] == "cancelled" and time.monotonic() - asked < 5, record
    assert record["lines_done"] < 40_000
    listed = run_cli("--json", "jobs", "list", cwd=root, env=env).json()
    assert {j["id"]: j["status"] for j in listed["jobs"]}[job_id] == "cancelled"  # type: ignore[index]


def wait_workers(server: Any, expected: int, timeout: float) -> float:
    """Seconds until the server's `prodai_jobs_workers` reads ``expected`` (fails past ``timeout``)."""
    started = time.monotonic()
    while (count := server.metric("prodai_jobs_workers")) != expected:
        assert time.monotonic() - started < timeout, f"prodai_jobs_workers stayed {count}, not {expected}"
        time.sleep(0.25)
    return time.monotonic() - started


def test_worker_count_follows_the_live_workers_busy_or_idle_and_a_job_names_its_worker(
    celery_project: Any, kit: Any, redis_process: RedisServer
) -> None:
    import redis

    from prodai_cli.jobs.celery_app import ALIVE_S, HEARTBEAT_S, WORKER_KEY_PREFIX, make_celery

    root, server, key, workers = celery_project
    workers.extend([Worker(root, "one", kit), Worker(root, "two", kit)])
    wait_workers(server, 2, timeout=120)
    client = redis.Redis.from_url(redis_process.url)
    beating = sorted(k.decode() for k in client.scan_iter(match=WORKER_KEY_PREFIX + "*"))
    assert beating == sorted(f"{WORKER_KEY_PREFIX}{w.proc.args[-1]}:{w.proc.pid}" for w in workers), beating  # type: ignore[index]
    # A long job keeps one worker busy in Celery's solo pool, where it answers no ping: it still counts.
    source = root / "long.jsonl"
    source.write_text("".join(json.dumps({"text": f"busy line {i}"}) + "\n" for i in range(400_000)))
    env = {"PRODAI_API_KEY": key, "PRODAI_SERVER_URL": server.url}
    job_id = run_cli("--json", "jobs", "submit", str(source), cwd=root, env=env).json()["id"]  # type: ignore[index]
    deadline = time.monotonic() + 120
    while (record := record_of(server, key, job_id))["lines_done"] < 2 * CHUNK:
        assert record["status"] in ("queued", "running") and time.monotonic() < deadline, record
        time.sleep(0.1)
    assert record["worker"] in ("one@test", "two@test"), record  # the Celery node that runs it
    busy = next(w for w in workers if w.proc.args[-1] == record["worker"])  # type: ignore[index]
    idle = next(w for w in workers if w is not busy)
    # Why heartbeats and not Celery's ping: the busy worker's solo pool does not answer until its job ends.
    replies = make_celery(load_settings(root / "prodai.yaml")).control.ping(timeout=3)
    assert {name for reply in replies for name in reply} == {idle.proc.args[-1]}, replies  # type: ignore[index]
    watched = time.monotonic()
    while time.monotonic() - watched < ALIVE_S + 2 * HEARTBEAT_S:  # longer than a key lives without beats
        assert server.metric("prodai_jobs_workers") == 2
        time.sleep(1)
    assert record_of(server, key, job_id)["status"] == "running"  # busy all along
    # A killed worker drops out once its key expires; a stopped one at once (it deletes its key).
    idle.proc.send_signal(signal.SIGKILL)
    idle.proc.wait(timeout=30)
    wait_workers(server, 1, timeout=ALIVE_S + 3 * HEARTBEAT_S)
    assert run_cli("--json", "jobs", "cancel", job_id, cwd=root, env=env).exit_code == 0
    asked = time.monotonic()
    while record_of(server, key, job_id)["status"] == "running":
        assert time.monotonic() - asked < 30
        time.sleep(0.1)
    busy.proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: no job left, it exits
    assert busy.proc.wait(timeout=60) == 0, busy.log()[-3000:]
    assert wait_workers(server, 0, timeout=ALIVE_S) < ALIVE_S - HEARTBEAT_S, "the key was left to expire"
    assert list(client.scan_iter(match=WORKER_KEY_PREFIX + "*")) == []
