"""`prodai deploy --target compose --workers 2` for real: the server hands jobs to two `prodai worker`
containers through Celery on the stack's Redis, on one shared jobs volume.

One image (the server's, with Celery in it) built once; the stack is removed at the end, volume included.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

from prodai_cli.config import load_settings
from prodai_cli.keys import create_key

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

CONFIG = """\
# deployed by the compose workers test
serving:
  model: clf/1
auth:
  enabled: true
rate_limit:
  enabled: false
jobs:
  chunk_size: 64
  threads: 1
"""
LINES = 2_000


def _leftovers(name: str) -> list[str]:
    """What `docker ps -a`, `docker network ls` and `docker volume ls` still show of stack ``name``."""
    out = []
    for command in (
        ["docker", "ps", "-a", "--format", "{{.Names}}"],
        ["docker", "network", "ls", "--format", "{{.Name}}"],
        ["docker", "volume", "ls", "--format", "{{.Name}}"],
    ):
        listed = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
        out.extend(item for item in listed if name in item)
    return out


def test_compose_workers_run_the_jobs_the_server_queues_exactly_once(
    docker_client: Any, registered_project: Path, tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path
) -> None:
    from docker.errors import APIError, ImageNotFound

    from prodai_cli.deploy import containers
    from prodai_cli.deploy.targets import compose

    project = tmp_path_factory.mktemp("compose-workers") / "proj"
    shutil.copytree(registered_project, project, symlinks=True)
    (project / "prodai.yaml").write_text(CONFIG, encoding="utf-8")
    key = create_key(load_settings(project / "prodai.yaml"), "scorer", ["jobs"]).key
    project.chmod(0o755)
    (project / "prodai.yaml").chmod(0o644)
    port = free_port()
    name = f"prodai-wktest-{port}"
    tag = f"prodai-test-wk:{port}"
    env = {
        "PRODAI_CACHE_DIR": str(wheel_cache),
        "PRODAI_DEPLOY__HOST": "127.0.0.1",
        "PRODAI_DEPLOY__BASE_IMAGE": "prodai-base:bookworm",
        "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "180",
    }
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": key}
    try:
        result = run_cli(
            *("deploy", "--target", "compose", "--port", str(port), "--name", name, "--offline", "--json"),
            *("--workers", "2", "--tag", tag),
            cwd=project,
            env=env,
            timeout=1500,
        )
        assert result.exit_code == 0, result.stderr[-4000:]
        workers = compose.stack_containers(docker_client, name, compose.WORKER_SERVICE)
        assert len(workers) == 2 and all(w.status == "running" for w in workers), [w.status for w in workers]
        hostnames = {w.attrs["Config"]["Hostname"] for w in workers}
        # Both workers beat in the stack's Redis: the server counts them.
        deadline = time.monotonic() + 120
        while True:
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
            if "prodai_jobs_workers 2.0" in metrics:
                break
            assert time.monotonic() < deadline, [line for line in metrics.splitlines() if "prodai_jobs" in line]
            time.sleep(1)
        lines = [json.dumps({"id": f"r-{i}", "text": f"review {i}: " + "good " * (i % 5)}) for i in range(LINES)]
        lines[99] = "{not json"  # a bad line goes to the errors file, the job goes on
        answer = httpx.post(
            f"{url}/v1/jobs",
            content=("\n".join(lines) + "\n").encode(),
            headers={**headers, "Content-Type": "application/x-ndjson"},
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        deadline = time.monotonic() + 300
        while (record := httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, record
            time.sleep(0.5)
        assert record["status"] == "succeeded", record
        assert record["items"] == LINES - 1 and record["errors"] == 1, record
        # Run by a worker container (its Celery node name prodai@<container hostname>), not by the server.
        node, _, host = str(record["worker"]).partition("@")
        assert node == "prodai" and host in hostnames, (record["worker"], hostnames)
        results = httpx.get(f"{url}/v1/jobs/{job_id}/results", headers=headers, timeout=60).text.splitlines()
        ids = [json.loads(line)["id"] for line in results]
        assert len(ids) == len(set(ids)) == LINES - 1
        assert set(ids) == {f"r-{i}" for i in range(LINES)} - {"r-99"}
        errors = httpx.get(f"{url}/v1/jobs/{job_id}/errors", headers=headers, timeout=60).text.splitlines()
        assert [json.loads(line)["line"] for line in errors] == [100]
        # A worker's log says it ran the task; the server's env hands jobs to Celery.
        logs = "".join(bytes(w.logs()).decode("utf-8", errors="replace") for w in workers)
        assert "prodai.jobs.run" in logs and "succeeded" in logs, logs[-3000:]
        server = compose.stack_containers(docker_client, name, compose.SERVER_SERVICE)[0]
        assert "PRODAI_JOBS__BACKEND=celery" in server.attrs["Config"]["Env"]
        status = run_cli("deploy", "status", "--json", cwd=project, env=env)
        entry = next(e for e in status.json() if e["name"] == name)  # type: ignore[union-attr]
        assert entry["workers_running"] == 2, entry
        stopped = run_cli("deploy", "stop", name, cwd=project, env=env, timeout=300)
        assert stopped.exit_code == 0, stopped.stderr
        assert _leftovers(name) == []  # containers, network and the jobs volume
    finally:
        with contextlib.suppress(Exception):
            compose.remove_stack(docker_client, name, project / ".prodai" / "compose" / name)
        with contextlib.suppress(ImageNotFound, APIError):
            docker_client.images.remove(tag, force=True)
        with contextlib.suppress(ImageNotFound, APIError):
            docker_client.images.remove(f"{containers.BUILD_STAGE_REPOSITORY}:{containers.tag_safe(tag)}")
