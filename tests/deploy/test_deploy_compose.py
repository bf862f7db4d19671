"""`prodai deploy --target compose` for real: two server replicas, Redis and Prometheus started with docker-compose.

No registry is reachable here, so the Redis and Prometheus images are packaged locally from this machine's
Debian binaries (the real redis-server and prometheus, on the same Debian base) and named through
`deploy.redis_image` / `deploy.prometheus_image`, exactly as a user points at a mirror.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

REDIS_IMAGE = "prodai-test-redis:local"
PROMETHEUS_IMAGE = "prodai-test-prometheus:local"


def _libraries(binary: str) -> list[str]:
    output = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [
        parts[2]
        for parts in (line.split() for line in output.splitlines())
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/")
    ]


def _package_image(client: Any, tmp: Path, tag: str, binary: str, tail: str) -> None:
    context = tmp / tag.replace(":", "_")
    (context / "lib").mkdir(parents=True)
    (context / "bin").mkdir()
    shutil.copy2(binary, context / "bin")
    for library in _libraries(binary):
        shutil.copy2(library, context / "lib")
    (context / "Dockerfile").write_text(
        "FROM prodai-base:bookworm\nCOPY lib/ /usr/local/lib/\nCOPY bin/ /usr/local/bin/\n"
        f"ENV LD_LIBRARY_PATH=/usr/local/lib\n{tail}\n"
    )
    from prodai_cli.deploy import containers as engine

    engine.build_image(client, context, tag, network_mode="none")


@pytest.fixture(scope="module")
def service_images(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    from prodai_cli.deploy import containers as engine

    tmp = tmp_path_factory.mktemp("service-images")
    for tag, binary, tail in (
        (REDIS_IMAGE, "/usr/bin/redis-server", 'CMD ["redis-server"]'),
        (PROMETHEUS_IMAGE, "/usr/bin/prometheus", 'WORKDIR /prometheus\nENTRYPOINT ["/usr/local/bin/prometheus"]'),
    ):
        if engine.image_info(docker_client, tag) is None:
            if shutil.which(binary) is None and not Path(binary).exists():
                pytest.fail(f"{binary} is missing: scripts/setup-system installs it")
            _package_image(docker_client, tmp, tag, binary, tail)


def _two_free_ports() -> int:
    for _ in range(50):
        port = free_port()
        if port < 65535:
            try:
                import socket

                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def test_compose_stack_starts_replicas_that_answer_and_stops(
    service_images: None, docker_client: Any, container_project: Path, deploy_env: dict[str, str]
) -> None:
    (container_project / "prodai.yaml").write_text(
        "serving:\n  model: clf/1\nauth:\n  enabled: false\ndeploy:\n  replicas: 2\n", encoding="utf-8"
    )
    container_project.joinpath("prodai.yaml").chmod(0o644)
    port = _two_free_ports()
    name = f"prodaitest{port}"
    env = {**deploy_env, "PRODAI_DEPLOY__REDIS_IMAGE": REDIS_IMAGE, "PRODAI_DEPLOY__PROMETHEUS_IMAGE": PROMETHEUS_IMAGE}
    try:
        result = run_cli(
            "deploy",
            "--target",
            "compose",
            "--port",
            str(port),
            "--name",
            name,
            "--tag",
            f"prodai-test-compose:{port}",
            "--json",
            cwd=container_project,
            env=env,
            timeout=1500,
        )
        assert result.exit_code == 0, result.stderr[-4000:]
        data = result.json()
        assert isinstance(data, dict) and data["target"] == "compose" and data["started"] is True
        for replica_port in (port, port + 1):
            response = httpx.post(f"http://127.0.0.1:{replica_port}/predict", json={"text": "hello"}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "1"
        running = {
            c.labels.get("com.docker.compose.service"): c.status
            for c in docker_client.containers.list(filters={"label": f"com.docker.compose.project={name}"})
        }
        assert running == {"server": "running", "redis": "running", "prometheus": "running"}
        stopped = run_cli("deploy", "stop", name, cwd=container_project, env=env, timeout=300)
        assert stopped.exit_code == 0, stopped.stderr
        assert docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"}) == []
    finally:
        subprocess.run(
            [
                "docker-compose",
                "-p",
                name,
                "-f",
                str(container_project / ".prodai" / "compose" / name / "docker-compose.yml"),
                "down",
                "-v",
            ],
            capture_output=True,
            check=False,
        )
        with contextlib.suppress(Exception):
            docker_client.images.remove(f"prodai-test-compose:{port}", force=True, noprune=True)
