"""Issue 21: `prodai rollout --deployment` against real docker and compose deployments of 2 replicas each.

Both targets put two server replicas behind a balancer (the docker target's own HAProxy container; compose's
HAProxy service beside Redis and Prometheus). The replicas mount the project's directory, so the split each step
writes reaches both; the rollout waits until both reloaded and judges the sum of their counters, read at each
replica's address on the deployment's network (no port published for it). A client sends predictions through the
balancer all along: none may fail. The image is built the way tests/deploy/test_deploy_docker.py builds its own
(same base, same wheel cache, same models), so in one CI session its layers come from the build cache; the
compose stack's Redis and Prometheus images are the offline ones tests/deploy/test_deploy_compose.py builds.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Traffic, free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

CONFIG = """\
# deployed by tests/deploy/test_rollout_replicas.py
serving:
  max_wait_ms: 0
auth:
  enabled: false
rate_limit:
  enabled: false
deploy:
  replicas: 2
ab:
  enabled: true
  model: clf
  variants:
    v1: {version: 1, weight: 1.0}
    v2: {version: 2, weight: 0.0}
"""


@pytest.fixture(params=["docker", "compose"])
def deployment(
    request: pytest.FixtureRequest,
    docker_client: Any,
    registered_project: Path,
    tmp_path: Path,
    deploy_env: dict[str, str],
) -> Any:
    """clf v1 (all traffic) and v2 (none) in one image, 2 replicas behind the balancer on a free loopback port."""
    from prodai_cli.deploy import containers as engine
    from prodai_cli.deploy.targets import compose

    target = request.param
    project = tmp_path / "proj"
    shutil.copytree(registered_project, project, symlinks=True)
    (project / "prodai.yaml").write_text(CONFIG, encoding="utf-8")
    project.chmod(0o755)
    (project / "prodai.yaml").chmod(0o644)
    port = free_port()
    name = f"prodai-rollout-{target}-{port}"
    tag = f"prodai-test-rollout:{target}-{port}"
    env = {**deploy_env, "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "180"}
    extra = ["--target", "compose", "--offline"] if target == "compose" else []
    try:
        result = run_cli(
            "deploy", *extra, "--port", str(port), "--name", name, "--tag", tag, "--json",
            cwd=project, env=env, timeout=1500,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr[-4000:]
        assert result.json()["target"] == target
        yield {"project": project, "name": name, "url": f"http://127.0.0.1:{port}", "target": target}
    finally:
        if target == "compose":
            with contextlib.suppress(Exception):
                compose.remove_stack(docker_client, name, project / ".prodai" / "compose" / name)
        else:
            for container in engine.deployment_containers(docker_client, name):
                engine.remove_container(docker_client, container.id, timeout_s=5)
            engine.remove_network(docker_client, f"{name}-net")
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True, noprune=False)
        with contextlib.suppress(Exception):
            docker_client.images.remove(f"{engine.BUILD_STAGE_REPOSITORY}:{engine.tag_safe(tag)}")


def replica_urls(docker_client: Any, name: str, target: str) -> dict[str, str]:
    """Each running server replica's URL at its address on the deployment's network (found by Docker's labels)."""
    if target == "compose":
        labels = [f"com.docker.compose.project={name}", "com.docker.compose.service=server"]
        network = f"{name}_default"
    else:
        labels = [f"prodai.deployment={name}", "prodai.role=server"]
        network = f"{name}-net"
    return {
        c.id: f"http://{c.attrs['NetworkSettings']['Networks'][network]['IPAddress']}:8080"
        for c in docker_client.containers.list(filters={"label": labels})
    }


def test_a_good_candidate_walks_every_step_on_every_replica_and_takes_the_alias(
    deployment: Any, docker_client: Any
) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.registry import Registry

    project, name = deployment["project"], deployment["name"]
    replicas = replica_urls(docker_client, name, deployment["target"])
    assert len(replicas) == 2
    with Traffic(deployment["url"]) as traffic:
        result = run_cli(
            "--json", "rollout", "clf/2", "--deployment", name, "--steps", "50%,100%", "--interval", "4s",
            "--min-requests", "10", "--slo", "error_rate < 1%", "--slo", "p95 < 5s", cwd=project, timeout=600,
        )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "succeeded", data["reason"]
    assert (data["plan"]["deployment"], data["plan"]["deployment_target"]) == (name, deployment["target"])
    assert data["plan"]["url"] == deployment["url"]  # the balancer: what clients use
    assert [entry["share"] for entry in data["timeline"]] == [0.5, 1.0]
    assert all(entry["passed"] and entry["window"]["requests"] >= 10 for entry in data["timeline"])
    # Through the balancer the whole time: nothing failed, and both versions answered along the way.
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.versions["1"] > 0 and traffic.versions["2"] > 0, traffic.versions
    assert Registry(load_settings(str(project / "prodai.yaml"))).get_version("clf@production").version == 2
    # Every replica took the candidate's traffic during the rollout, and answers the promoted version now.
    for url in replicas.values():
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'variant="v2"' in metrics, url
        for user in ("a", "b", "c"):
            answer = httpx.post(f"{url}/predict", json={"text": "after"}, headers={"X-User-ID": user}, timeout=30)
            assert answer.status_code == 200 and answer.json()["model_version"] == "2", answer.text
