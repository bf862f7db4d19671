"""Batch jobs over HTTP against a real `prodai serve` process on the embedded backend (no Redis): the seed's
`/batch_predict` client flow, the `/v1/jobs` API, the `jobs` scope, quotas, cancel and hostile requests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prodai_cli.config import load_settings
from prodai_cli.keys import create_key

pytestmark = [pytest.mark.slow]

CHUNK = 16  # small commits: a cancel or a progress poll sees a running job move


@pytest.fixture(scope="module")
def jobs_server(registered_project: Path, tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Any:
    """Auth on (keys: jobs, predict-only, both, quota), embedded jobs with small limits."""
    config = kit.BASE_CONFIG + (
        "auth:\n  enabled: true\nrate_limit:\n  enabled: false\ncache:\n  enabled: false\n"
        f"jobs:\n  chunk_size: {CHUNK}\n  max_texts: 50\n  max_body_bytes: 4096\n  max_upload_bytes: 4000000\n"
        "  max_queued_per_key: 2\n  threads: 1\n"
    )
    root = kit.make_project(registered_project, tmp_path_factory.mktemp("jobs") / "proj", config)
    settings = load_settings(root / "prodai.yaml")
    scopes: dict[str, tuple[str, ...]] = {
        "jobs": ("jobs",),
        "predict": ("predict",),
        "both": ("jobs", "predict"),
        "quota": ("jobs",),
        "other": ("jobs",),
    }
    keys = {name: create_key(settings, name, scope).key for name, scope in scopes.items()}  # type: ignore[arg-type]
    server = kit.Server(root, "--model", "clf@production")
    kit.start_all(server)
    server.keys = keys
    yield server
    server.stop()


def call(server: Any, method: str, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["X-API-Key"] = server.keys[key]
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


def wait_status(server: Any, job_id: str, key: str, done: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = call(server, "GET", f"/v1/jobs/{job_id}", key).json()
        if record["status"] in done:
            return dict(record)
        assert time.monotonic() < deadline, f"job still {record['status']} after {timeout} s: {record}"
        time.sleep(0.2)


def upload(server: Any, key: str, lines: list[str], model: str = "clf@production") -> httpx.Response:
    body = ("\n".join(lines) + "\n").encode()
    return call(
        server,
        "POST",
        f"/v1/jobs?model={model}",
        key,
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )


def test_every_jobs_route_needs_a_key_with_the_jobs_scope(jobs_server: Any) -> None:
    some_id = "0" * 32
    routes = [
        ("POST", "/batch_predict", {"json": {"texts": ["a"]}}),
        ("GET", f"/batch_result/{some_id}", {}),
        ("POST", "/v1/jobs", {"json": {"input_path": "/etc/hostname"}}),
        ("GET", "/v1/jobs", {}),
        ("GET", f"/v1/jobs/{some_id}", {}),
        ("GET", f"/v1/jobs/{some_id}/results", {}),
        ("GET", f"/v1/jobs/{some_id}/errors", {}),
        ("DELETE", f"/v1/jobs/{some_id}", {}),
    ]
    for method, path, kwargs in routes:
        missing = call(jobs_server, method, path, None, **kwargs)
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.json()["code"] == "missing"
        wrong = call(jobs_server, method, path, "predict", **kwargs)
        assert wrong.status_code == 403, (method, path, wrong.text)
        assert "jobs" in wrong.json()["detail"]
    # The jobs key itself cannot predict: scopes are separate.
    assert call(jobs_server, "POST", "/predict", "jobs", json={"text": "hi"}).status_code == 403


def test_the_seed_client_flow_polls_batch_result_until_completed(jobs_server: Any) -> None:
    texts = [f"review number {i} was {'great' if i % 2 else 'awful'}" for i in range(37)] + ["   "]
    submitted = call(jobs_server, "POST", "/batch_predict", "both", json={"texts": texts})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    deadline = time.monotonic() + 180
    seen: set[str] = set()
    while True:
        answer = call(jobs_server, "GET", f"/batch_result/{task_id}", "both")
        assert answer.status_code == 200, answer.text
        data = answer.json()
        seen.add(data["status"])
        if data["status"] == "completed":
            break
        assert data["status"] == "pending", data
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "pending" in seen
    results = data["results"]
    assert len(results) == len(texts)
    assert results[-1] == {"error": "empty text (only whitespace or control characters)"}
    # Each prediction is the one /predict/batch gives for the same text, from the pinned version.
    direct = call(jobs_server, "POST", "/predict/batch", "both", json={"texts": texts[:32]}).json()["predictions"]
    for got, want in zip(results[:32], direct, strict=True):
        assert got["label"] == want["label"]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
        assert got["model_version"] == "1"
    # Another key cannot read it.
    assert call(jobs_server, "GET", f"/batch_result/{task_id}", "other").status_code == 404


def test_upload_job_has_every_valid_line_once_and_bad_lines_with_their_numbers(jobs_server: Any) -> None:
    lines = [json.dumps({"id": f"r{i}", "text": f"text {i}"}) for i in range(100)]
    lines[10] = "{not json"
    lines[20] = json.dumps({"id": "r5", "text": "duplicate id"})
    lines[30] = json.dumps({"id": "r30"})
    answer = upload(jobs_server, "jobs", lines)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] == "queued" and job["model"] == "clf/1" and job["progress"]["total"] == 100
    record = wait_status(jobs_server, job["id"], "jobs", {"succeeded", "failed"})
    assert record["status"] == "succeeded", record
    assert record["items"] == 97 and record["errors"] == 3
    assert record["progress"] == {"done": 100, "total": 100}
    assert record["started"] and record["finished"] and record["items_per_s"] > 0
    results = call(jobs_server, "GET", f"/v1/jobs/{job['id']}/results", "jobs")
    assert results.headers["content-type"].startswith("application/x-ndjson")
    ids = [json.loads(line)["id"] for line in results.text.splitlines()]
    assert sorted(ids) == sorted({f"r{i}" for i in range(100)} - {"r10", "r20", "r30"})
    errors = [
        json.loads(line) for line in call(jobs_server, "GET", f"/v1/jobs/{job['id']}/errors", "jobs").text.splitlines()
    ]
    assert [e["line"] for e in errors] == [11, 21, 31]
    assert "duplicate id" in errors[1]["error"] and "missing text field" in errors[2]["error"]
    listed = call(jobs_server, "GET", "/v1/jobs?limit=100", "jobs").json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    assert job["id"] not in [j["id"] for j in call(jobs_server, "GET", "/v1/jobs", "other").json()["jobs"]]
    metrics = jobs_server.metrics()
    assert any(labels.get("status") == "succeeded" and value >= 1 for labels, value in metrics["prodai_jobs"])
    assert "prodai_jobs_queue_length" in metrics
    assert metrics["prodai_jobs_workers"] == [({}, 1.0)]  # the embedded backend: the server itself
    assert record["worker"].startswith("embedded@"), record


def test_a_version_that_does_not_exist_is_refused_at_submit(jobs_server: Any) -> None:
    for model in ("clf/99", "nosuch@production", "clf@nosuchalias"):
        answer = upload(jobs_server, "jobs", [json.dumps({"text": "x"})], model=model)
        assert answer.status_code == 422, (model, answer.text)
        assert answer.json()["code"] == "unknown_model"
        seed = call(jobs_server, "POST", "/batch_predict", "jobs", json={"texts": ["x"], "model": model})
        assert seed.status_code == 422 and seed.json()["code"] == "unknown_model"


def test_cancel_stops_a_running_job_within_seconds_and_the_quota_counts_active_jobs(jobs_server: Any) -> None:
    lines = [json.dumps({"id": i, "text": f"some longer text number {i} " * 2}) for i in range(40_000)]
    first = upload(jobs_server, "quota", lines).json()
    second = upload(jobs_server, "quota", lines[:100]).json()
    over = upload(jobs_server, "quota", lines[:100])
    assert over.status_code == 429 and over.json()["code"] == "job_quota", over.text
    assert "retry-after" in over.headers
    # The second (queued behind the first) ends at once when cancelled.
    cancelled = call(jobs_server, "DELETE", f"/v1/jobs/{second['id']}", "quota")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    deadline = time.monotonic() + 180
    while (record := call(jobs_server, "GET", f"/v1/jobs/{first['id']}", "quota").json())["lines_done"] < 2 * CHUNK:
        assert record["status"] in ("queued", "running") and time.monotonic() < deadline, record
        time.sleep(0.1)
    assert call(jobs_server, "DELETE", f"/v1/jobs/{first['id']}", "other").status_code == 404  # not its job
    asked = time.monotonic()
    assert call(jobs_server, "DELETE", f"/v1/jobs/{first['id']}", "quota").status_code == 202
    record = wait_status(jobs_server, first["id"], "quota", {"cancelled", "succeeded", "failed"}, timeout=30)
    took = time.monotonic() - asked
    assert record["status"] == "cancelled" and took < 5, (record, took)
    assert record["lines_done"] < 40_000
    time.sleep(1.0)
    assert call(jobs_server, "GET", f"/v1/jobs/{first['id']}", "quota").json()["lines_done"] == record["lines_done"]
    # Committed results stay readable; the quota is free again.
    kept = call(jobs_server, "GET", f"/v1/jobs/{first['id']}/results", "quota").text.splitlines()
    assert len(kept) == record["items"] > 0
    assert upload(jobs_server, "quota", lines[:10]).status_code == 202


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b'{"texts": ["' + b"a" * 5000 + b'"]}'}, 413, "body_too_large"),
        ({"content": b'{"texts": ["a", }'}, 422, "invalid_json"),
        ({"json": {"texts": ["a"] * 51}}, 422, "invalid_request"),
        ({"json": {"texts": []}}, 422, "invalid_request"),
        ({"json": {"texts": ["a", 5]}}, 422, "invalid_request"),
        ({"json": {"texts": ["a"], "priority": 1}}, 422, "invalid_request"),
        ({"json": ["a"]}, 422, "invalid_request"),
        ({"content": b'{"texts": [' * 100 + b"]" * 100 + b"}"}, 422, "invalid_json"),
        ({"content": b'{"texts": ["a"]}', "headers": {"Content-Type": "text/csv"}}, 415, "unsupported_media_type"),
    ],
)
def test_hostile_batch_predict_requests_get_a_4xx_with_a_reason(
    jobs_server: Any, kwargs: dict[str, Any], status: int, code: str
) -> None:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    answer = call(jobs_server, "POST", "/batch_predict", "jobs", headers=headers, **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code and answer.json()["detail"]


def test_hostile_job_submissions_get_a_4xx_with_a_reason(jobs_server: Any) -> None:
    too_big = call(
        jobs_server,
        "POST",
        "/v1/jobs",
        "jobs",
        content=b'{"text": "x"}\n' * 400_000,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert too_big.status_code == 413 and "max_upload_bytes" in too_big.json()["detail"]
    empty = call(jobs_server, "POST", "/v1/jobs", "jobs", content=b"", headers={"Content-Type": "application/x-ndjson"})
    assert empty.status_code == 422 and empty.json()["code"] == "empty_input"
    # Path inputs are off by default (jobs.input_dirs empty): no reading of server files.
    path = call(jobs_server, "POST", "/v1/jobs", "jobs", json={"input_path": "/etc/passwd"})
    assert path.status_code == 403 and path.json()["code"] == "input_path_refused"
    for bad in ("../" * 5 + "etc", "x" * 40, "0" * 32):
        assert call(jobs_server, "GET", f"/v1/jobs/{bad}", "jobs").status_code == 404
    paged = call(jobs_server, "GET", "/v1/jobs?limit=1000", "jobs")
    assert paged.status_code == 422


def test_the_jobs_cli_submits_waits_and_writes_results_and_explains_refusals(jobs_server: Any, tmp_path: Path) -> None:
    from helpers import run_cli

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": f"cli text {i}"}) + "\n" for i in range(50)) + "oops\n")
    env = {"PRODAI_SERVER_URL": jobs_server.url, "PRODAI_API_KEY": jobs_server.keys["jobs"]}
    out = tmp_path / "out.jsonl"
    done = run_cli("--json", "jobs", "submit", str(source), "--wait", "-o", str(out), cwd=tmp_path, env=env)
    assert done.exit_code == 0, done.stderr
    record = done.json()
    assert record["status"] == "succeeded" and record["errors"] == 1 and record["output"] == str(out)  # type: ignore[index]
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == list(range(50))
    no_key = run_cli("jobs", "status", record["id"], cwd=tmp_path, env={"PRODAI_SERVER_URL": jobs_server.url})  # type: ignore[index]
    assert no_key.exit_code == 1 and "401" in no_key.stderr and "prodai keys create" in no_key.stderr
    unknown = run_cli("jobs", "submit", str(source), "--model", "clf/99", cwd=tmp_path, env=env)
    assert unknown.exit_code == 1 and "422" in unknown.stderr and "99" in unknown.stderr, unknown.stderr
    missing = run_cli("--json", "jobs", "status", "f" * 32, cwd=tmp_path, env=env)
    assert missing.exit_code == 1 and "404" in missing.stderr
    usage = run_cli("jobs", "submit", str(source), "-o", str(out), cwd=tmp_path, env=env)
    assert usage.exit_code == 2 and "--wait" in usage.stderr


def test_a_jobs_directory_that_cannot_be_written_is_a_503_naming_jobs_dir_not_a_500(
    registered_project: Path, tmp_path: Path, kit: Any
) -> None:
    """As a container whose jobs directory sits on a read-only or missing path: the server's setup, told as such."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    config = kit.BASE_CONFIG + (
        f"auth:\n  enabled: false\nrate_limit:\n  enabled: false\njobs:\n  dir: {json.dumps(str(blocker / 'jobs'))}\n"
    )
    root = kit.make_project(registered_project, tmp_path / "proj", config)
    server = kit.Server(root, "--model", "clf@production")
    kit.start_all(server)
    try:
        for answer in (
            httpx.post(f"{server.url}/batch_predict", json={"texts": ["a", "b"]}, timeout=60),
            httpx.post(
                f"{server.url}/v1/jobs?model=clf@production",
                content=b'{"id": 1, "text": "a"}\n',
                headers={"Content-Type": "application/x-ndjson"},
                timeout=60,
            ),
        ):
            assert answer.status_code == 503, answer.text
            error = answer.json()
            assert error["code"] == "jobs_storage" and "jobs.dir" in error["detail"], error
            assert str(tmp_path) not in error["detail"]  # no server path reaches a client
        # The operator finds the directory and the OS error in the server's log.
        assert str(blocker / "jobs") in server.log() and "jobs directory not writable" in server.log()
        # The rest of the server is unaffected.
        assert httpx.post(f"{server.url}/predict", json={"text": "still here"}, timeout=60).status_code == 200
    finally:
        server.stop()
