"""`prodai deploy --target compose` for real: HAProxy in front of two server replicas, Redis and Prometheus.

No registry is reachable here: `--offline` builds the Redis and Prometheus images from Debian's packages
(the product's own path, the same as a user without Docker Hub), and the balancer image from Debian's
haproxy. One stack serves the module's tests in order (each image build costs tens of seconds); while
each step runs, a client sends predictions through the balancer and counts what failed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

CONFIG = """\
# deployed by the compose tests
serving:
  model: clf/1
  max_wait_ms: 0
auth:
  enabled: false
rate_limit:
  # Every request of the test comes from one client IP (the replicas see it through the balancer).
  per_ip: {rate: 100000, period_s: 1, burst: 100000}
"""
FORGED_IP = "203.0.113.9"
CLIENT_THREADS = 4


@dataclass
class Client:
    """Threads sending predictions through the balancer until stopped; every failure is kept."""

    url: str
    threads: int = CLIENT_THREADS
    ok: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(
                        f"{self.url}/predict", json={"text": "hello world"}, headers={"X-Forwarded-For": FORGED_IP}
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(type(exc).__name__)
                    continue
                with self._lock:
                    if response.status_code == 200:
                        self.ok += 1
                        version = str(response.json()["model_version"])
                        self.versions[version] = self.versions.get(version, 0) + 1
                    else:
                        self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")

    def __enter__(self) -> Client:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    @property
    def total(self) -> int:
        """Requests sent so far."""
        return self.ok + len(self.failures)


@dataclass
class Stack:
    """The module's deployment."""

    project: Path
    name: str
    port: int
    env: dict[str, str]
    tags: list[str]

    @property
    def url(self) -> str:
        """The balancer."""
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, *args: str, env: dict[str, str] | None = None) -> Any:
        """`prodai deploy --target compose` of this stack with ``args``."""
        return run_cli(
            "deploy",
            "--target",
            "compose",
            "--port",
            str(self.port),
            "--name",
            self.name,
            "--offline",
            "--json",
            *args,
            cwd=self.project,
            env={**self.env, **(env or {})},
            timeout=1500,
        )


def open_for_container(project: Path) -> None:
    """Make a project directory and its config readable by the container's non-root user."""
    project.chmod(0o755)
    for path in project.glob("*.yaml"):
        path.chmod(0o644)


def _servers(client: Any, name: str) -> list[Any]:
    return client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={name}", "com.docker.compose.service=server"]}
    )


def _leftovers(name: str) -> list[str]:
    """What `docker ps -a` and `docker network ls` still show of deployment ``name``."""
    out = []
    for command in (
        ["docker", "ps", "-a", "--format", "{{.Names}}"],
        ["docker", "network", "ls", "--format", "{{.Name}}"],
    ):
        listed = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
        out.extend(item for item in listed if name in item)
    return out


def _access_log(container: Any) -> list[dict[str, Any]]:
    lines = []
    for line in bytes(container.logs()).decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("route") == "/predict":
                lines.append(entry)
    return lines


def _cleanup(client: Any, name: str, project: Path) -> None:
    from prodai_cli.deploy.targets import compose

    with contextlib.suppress(Exception):
        compose.remove_stack(client, name, project / ".prodai" / "compose" / name)


@pytest.fixture(scope="module")
def stack(
    docker_client: Any, registered_project: Path, tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path
) -> Any:
    """clf/1 on two replicas behind the balancer, on a free loopback port."""
    project = tmp_path_factory.mktemp("compose") / "proj"
    shutil.copytree(registered_project, project, symlinks=True)
    (project / "prodai.yaml").write_text(CONFIG, encoding="utf-8")
    open_for_container(project)
    port = free_port()
    name = f"prodai-lbtest-{port}"
    env = {
        "PRODAI_CACHE_DIR": str(wheel_cache),
        "PRODAI_DEPLOY__HOST": "127.0.0.1",
        "PRODAI_DEPLOY__BASE_IMAGE": "prodai-base:bookworm",
        "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "180",
    }
    deployed = Stack(project, name, port, env, tags=[f"prodai-test-lb:{port}-1", f"prodai-test-lb:{port}-2"])
    try:
        result = deployed.deploy("--replicas", "2", "--tag", deployed.tags[0])
        assert result.exit_code == 0, result.stderr[-4000:]
        data = result.json()
        assert isinstance(data, dict) and data["target"] == "compose" and data["started"] is True
        yield deployed
    finally:
        _cleanup(docker_client, name, project)
        from docker.errors import APIError, ImageNotFound

        from prodai_cli.deploy import containers

        for tag in deployed.tags:
            # Pruned with its untagged parents: keeping them (noprune) would leave dangling images behind.
            with contextlib.suppress(ImageNotFound, APIError):
                docker_client.images.remove(tag, force=True)
            # The build stage prodai tags beside each image (the next build's cache): ours go too.
            with contextlib.suppress(ImageNotFound, APIError):
                docker_client.images.remove(f"{containers.BUILD_STAGE_REPOSITORY}:{containers.tag_safe(tag)}")


def test_balancer_spreads_requests_over_both_replicas_and_replicas_see_the_real_client(
    stack: Stack, docker_client: Any
) -> None:
    from prodai_cli.deploy import balancer
    from prodai_cli.deploy.targets import compose

    servers = _servers(docker_client, stack.name)
    assert len(servers) == 2 and all(s.status == "running" for s in servers)
    # The replicas publish nothing: the balancer is the only way in.
    assert all(not (s.attrs["NetworkSettings"]["Ports"] or {}).get("8080/tcp") for s in servers)
    with httpx.Client(timeout=30) as http:
        for _ in range(60):
            response = http.post(
                f"{stack.url}/predict", json={"text": "spread"}, headers={"X-Forwarded-For": FORGED_IP}
            )
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "1"
    # The access log reaches `docker logs` a moment after the response: wait for all 60 lines.
    deadline = time.monotonic() + 15
    while True:
        served = {s.name: _access_log(s) for s in servers}
        if sum(len(lines) for lines in served.values()) >= 60 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(len(lines) > 0 for lines in served.values()), {k: len(v) for k, v in served.items()}
    assert sum(len(lines) for lines in served.values()) >= 60
    network = compose.network_name(stack.name)
    lb = compose.stack_containers(docker_client, stack.name, compose.BALANCER_SERVICE)[0]
    lb_ip = lb.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    gateway = docker_client.networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]
    clients = {line.get("client") for lines in served.values() for line in lines}
    # The replicas trust the balancer's X-Forwarded-For (the client's own was dropped by it): they see the
    # client the balancer saw (from loopback, Docker's port forwarding comes from the network's gateway),
    # never the balancer's address nor the forged one.
    assert lb_ip != gateway and clients == {gateway}, (clients, lb_ip)
    states = balancer.replica_states(compose.stats_url(docker_client, stack.name))
    assert len([s for s in states if s.up]) == 2, states
    status = run_cli("deploy", "status", "--json", cwd=stack.project, env=stack.env)
    assert status.exit_code == 0, status.stderr
    entries = status.json()
    assert isinstance(entries, list)
    entry = next(e for e in entries if e["name"] == stack.name)
    assert entry["state"] == "running" and entry["replicas_running"] == 2, entry
    logs = run_cli("deploy", "logs", stack.name, "--tail", "5", cwd=stack.project, env=stack.env)
    assert logs.exit_code == 0, logs.stderr
    assert all(f"--- {s.name}" in logs.stdout for s in servers), logs.stdout[-2000:]


def test_rolling_update_to_a_new_version_fails_no_request(stack: Stack, docker_client: Any) -> None:
    old = {s.id for s in _servers(docker_client, stack.name)}
    with Client(stack.url) as client:
        result = stack.deploy("--model", "clf/2", "--tag", stack.tags[1])
        # Keep sending after the switch, so the new replicas serve under load too.
        time.sleep(2)
    assert result.exit_code == 0, result.stderr[-4000:]
    assert client.total >= 200, client.total
    assert client.failures == [], client.failures[:10]
    assert client.versions.get("2", 0) > 0, client.versions
    servers = _servers(docker_client, stack.name)
    assert len(servers) == 2 and not old & {s.id for s in servers}
    for _ in range(10):
        response = httpx.post(f"{stack.url}/predict", json={"text": "after"}, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "2"
    record = json.loads((stack.project / ".prodai" / "deployments" / f"{stack.name}.json").read_text())
    assert record["version"] == 2 and record["status"] == "running"
    print(f"rolling update: {client.total} requests, {len(client.failures)} failed, versions {client.versions}")


def test_an_update_whose_replicas_cannot_load_their_model_leaves_the_old_ones_serving(
    stack: Stack, docker_client: Any
) -> None:
    before = {s.id for s in _servers(docker_client, stack.name)}
    # The v2 image holds only version 2: replicas told to serve clf/1 from it cannot load it.
    with Client(stack.url) as client:
        result = stack.deploy(
            "--model", "clf/1", "--tag", stack.tags[1], "--no-build", env={"PRODAI_DEPLOY__READINESS_TIMEOUT_S": "90"}
        )
    assert result.exit_code == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "keep serving" in result.stderr and "log lines" in result.stderr, result.stderr[-3000:]
    assert client.failures == [], client.failures[:10]
    assert client.ok > 0 and set(client.versions) == {"2"}, client.versions
    assert {s.id for s in _servers(docker_client, stack.name)} == before
    print(f"failed update: {client.total} requests, {len(client.failures)} failed")
    compose_file = (stack.project / ".prodai" / "compose" / stack.name / "docker-compose.yml").read_text()
    assert stack.tags[1] in compose_file


def test_stopping_one_replica_by_hand_costs_at_most_its_requests_in_flight(stack: Stack, docker_client: Any) -> None:
    servers = _servers(docker_client, stack.name)
    assert len(servers) == 2
    with Client(stack.url) as client:
        time.sleep(1)
        started = client.total
        subprocess.run(["docker", "stop", servers[0].name], capture_output=True, check=True, timeout=120)
        time.sleep(2)
        assert client.total - started > 20  # the other replica kept answering
    # Each client thread has at most one request in flight, on either replica.
    assert len(client.failures) <= CLIENT_THREADS, client.failures
    print(f"docker stop of one replica: {client.total} requests, {len(client.failures)} failed")


def test_deploy_stop_leaves_nothing_of_the_stack(stack: Stack) -> None:
    assert _leftovers(stack.name)
    stopped = run_cli("deploy", "stop", stack.name, cwd=stack.project, env=stack.env, timeout=300)
    assert stopped.exit_code == 0, stopped.stderr
    assert _leftovers(stack.name) == []
    # Two builds (v1, then v2 over it) left no dangling image of the deployment behind.
    assert _dangling(stack.tags[0]) == []


def _dangling(tag: str) -> list[str]:
    """Dangling images labelled with the repository of ``tag`` (the deployment's images)."""
    title = tag.split(":")[0]
    command = [
        "docker",
        "images",
        "--filter",
        "dangling=true",
        "--filter",
        f"label=org.opencontainers.image.title={title}",
    ]
    return subprocess.run([*command, "-q"], capture_output=True, text=True, check=True).stdout.split()


def test_a_failed_compose_start_leaves_nothing_and_can_still_be_stopped(stack: Stack, docker_client: Any) -> None:
    port = free_port()
    name = f"prodai-lbfail-{port}"
    failing = Stack(stack.project, name, port, stack.env, tags=[])
    # Something else holds the balancer's port: compose creates the network and some containers, then fails.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        try:
            result = failing.deploy("--tag", stack.tags[1], "--model", "clf/2", "--no-build")
            assert result.exit_code == 1, result.stdout[-2000:] + result.stderr[-2000:]
            assert "compose up" in result.stderr, result.stderr[-3000:]
            assert _leftovers(name) == []
            record = json.loads((stack.project / ".prodai" / "deployments" / f"{name}.json").read_text())
            assert record["status"] == "failed"
            stopped = run_cli("deploy", "stop", name, cwd=stack.project, env=stack.env, timeout=300)
            assert stopped.exit_code == 0, stopped.stderr
            assert _leftovers(name) == []
            assert _dangling(stack.tags[1]) == []
        finally:
            _cleanup(docker_client, name, stack.project)


def test_a_redis_image_that_cannot_be_pulled_falls_back_to_the_debian_build(docker_client: Any) -> None:
    from prodai_cli.deploy import services

    image = services.resolve_image(
        docker_client,
        services.REDIS,
        "prodai-missing.invalid/redis:none",
        base_image="prodai-base:bookworm",
        offline=False,
    )
    assert image == services.image_tag(services.REDIS, "prodai-base:bookworm")
    output = docker_client.containers.run(image, ["redis-server", "--version"], remove=True)
    assert b"Redis server" in output
