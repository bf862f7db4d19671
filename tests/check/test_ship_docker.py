"""`prodai ship --target docker`: the candidate is a real deployment built by `prodai deploy` (offline base image),
load-tested and checked over its published port; when it passes, production rolls out to it, and the
candidate is removed either way.

Needs a Docker engine with the offline base image (scripts/setup-system builds it): skipped without one,
a failure in CI (PRODAI_REQUIRE_DOCKER=1), as in tests/deploy."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from helpers import Traffic, free_port, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

BASE_IMAGE = "prodai-base:bookworm"
CANDIDATE = "prodai-clf-candidate"


@pytest.fixture
def docker_project(configured_project: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fully configured project readable by the container's user; its candidate container removed after."""
    from prodai_cli.deploy import containers as engine
    from prodai_cli.errors import DeployError

    try:
        client = engine.docker_client()
        has_base = engine.image_info(client, BASE_IMAGE) is not None
    except DeployError as exc:
        client, has_base, reason = None, False, f"no Docker engine: {exc.message}"
    else:
        reason = f"the base image {BASE_IMAGE} is missing (scripts/setup-system builds it)"
    if not has_base:
        if os.environ.get("PRODAI_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{reason} (PRODAI_REQUIRE_DOCKER=1: docker tests must run)", pytrace=False)
        pytest.skip(reason)
    root = configured_project(extra={"deploy": {"base_image": BASE_IMAGE, "host": "127.0.0.1"}})
    root.chmod(0o755)
    (root / "prodai.yaml").chmod(0o644)
    try:
        yield root
    finally:
        for container in client.containers.list(all=True, filters={"label": f"prodai.deployment={CANDIDATE}"}):
            engine.remove_container(client, container.id, timeout_s=5)
        engine.remove_network(client, f"{CANDIDATE}-net")


def _answered_version(url: str, key: str) -> str:
    response = httpx.post(
        f"{url}/predict", json={"text": "hello world"}, headers={"X-API-Key": key, "X-User-ID": "probe"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def test_ship_to_docker_rolls_production_out_or_leaves_it_untouched(
    docker_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 14: production (its configured name and port) serves v1; a ship of v2 that fails its gate leaves
    production on v1 and the alias unmoved; one that passes ends with production serving v2 and no
    candidate left. A client sends predictions to production throughout: none fails."""
    from prodai_cli.config import load_settings
    from prodai_cli.deploy import records
    from prodai_cli.registry import Registry

    port = free_port()
    name = f"prodai-shipprod-{port}"
    env = {
        "PRODAI_CHECK__SHIP_DURATION": "5s",
        "PRODAI_CHECK__SHIP_WARMUP": "1s",
        "PRODAI_CHECK__SHIP_USERS": "4",
        "PRODAI_CACHE_DIR": str(tmp_path_factory.mktemp("prodai-cache")),
        "PRODAI_DEPLOY__NAME": name,
        "PRODAI_DEPLOY__PORT": str(port),
        "PRODAI_SERVING__DRAIN_DELAY_S": "2",
    }
    url = f"http://127.0.0.1:{port}"
    first = run_cli("deploy", "--model", "clf/1", "--json", cwd=docker_project, env=env, timeout=1500)
    assert first.exit_code == 0, first.stderr[-3000:]
    created = run_cli("keys", "create", "--name", "traffic", "--json", cwd=docker_project, env=env)
    assert created.exit_code == 0, created.stderr
    key = str(created.json()["key"])  # type: ignore[index]
    assert _answered_version(url, key) == "1"
    settings = load_settings(docker_project / "prodai.yaml")
    try:
        with Traffic(url, headers={"X-API-Key": key}, pause_s=0.2) as traffic:
            failed = run_cli(
                "ship", "clf/2", "--target", "docker", "--slo", "p95 < 1ms", "--json",
                cwd=docker_project, env=env, timeout=1500,
            )  # fmt: skip
            assert failed.exit_code == 1, failed.stderr[-3000:]
            assert json.loads(failed.stdout)["passed"] is False
            assert Registry(settings).get_version("clf@production").version == 1
            assert _answered_version(url, key) == "1"

            passed = run_cli(
                "ship", "clf/2", "--target", "docker", "--slo", "p95 < 2000ms", "--json",
                cwd=docker_project, env=env, timeout=1500,
            )  # fmt: skip
            assert passed.exit_code == 0, passed.stderr[-3000:]
        report = json.loads(passed.stdout)
        assert report["passed"] is True and report["target"] == "docker"
        assert [s["name"] for s in report["steps"]] == [
            "key", "deploy", "loadtest", "redeploy", "check", "production", "promote", "stop",
        ]  # fmt: skip
        assert report["production_url"] == url
        logging = next(r for r in report["checks"]["results"] if r["item"] == "logging")
        assert "its log line is JSON" in logging["evidence"]  # read from the container's own log
        assert Registry(settings).get_version("clf@production").version == 2
        assert _answered_version(url, key) == "2"
        record = records.load(settings, name)
        assert record is not None and record.version == 2 and record.url == url
        # The candidate is gone: no container, no network, no record left running.
        client = docker.from_env()
        candidate = f"{name}-candidate"
        assert client.containers.list(all=True, filters={"label": f"prodai.deployment={candidate}"}) == []
        assert [n for n in client.networks.list() if n.name == f"{candidate}-net"] == []
        print(f"\nship (a failed gate, then a promotion): {len(traffic.failures)} of {traffic.total} requests failed")
        assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.total} failed: {traffic.failures[:5]}"
        assert traffic.ok >= 20 and {"1", "2"} <= set(traffic.versions)
    finally:
        for deployment in (name, f"{name}-candidate"):
            run_cli("deploy", "stop", deployment, cwd=docker_project, env=env, timeout=300)
