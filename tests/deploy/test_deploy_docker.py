"""`prodai deploy` against a real Docker engine: build offline, run, answer, follow ab-set live, roll back, stop.

One deployment serves the module's tests in order (building and starting a container costs tens of
seconds); the last test stops it, and the fixture's teardown removes anything left. Every redeploy and
rollback runs with a client sending predictions throughout (issue 14: a change never takes it dark).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Traffic, free_port, run_cli

# The first deploy on an empty layer cache builds the runtime (minutes): more than the default per-test timeout.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

AB_CONFIG = """\
# deployed by the docker tests
serving:
  max_wait_ms: 0
auth:
  enabled: false
# The roll-out tests' client sends from one address as fast as it is answered: per-IP limits would count
# 429s, which say nothing about a roll-out.
rate_limit:
  enabled: false
ab:
  enabled: true
  model: clf
  variants:
    v1: {version: 1, weight: 1.0}
    v2: {version: 2, weight: 0.0}
"""


def open_for_container(project: Path) -> None:
    """Make a project directory and its config readable by the container's non-root user."""
    project.chmod(0o755)
    for path in project.glob("*.yaml"):
        path.chmod(0o644)


def remove_images(client: Any, *tags: str) -> None:
    """Drop test images and their untagged layers (no dangling image left); the build stage prodai tags
    (prodai-build-stage:TAG) is not among them, so the next build still finds its cache."""
    from docker.errors import APIError, ImageNotFound

    for tag in tags:
        with contextlib.suppress(ImageNotFound, APIError):
            client.images.remove(tag, force=True, noprune=False)


def _record(deployment: dict[str, Any]) -> dict[str, Any]:
    path = deployment["project"] / ".prodai" / "deployments" / f"{deployment['name']}.json"
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _server(deployment: dict[str, Any], docker_client: Any) -> Any:
    """The deployment's (first) server replica container, from its record."""
    return docker_client.containers.get(_record(deployment)["container_id"])


def _leftovers(docker_client: Any, name: str) -> list[str]:
    """Containers, networks and volumes of deployment ``name`` the engine still has."""
    containers = docker_client.containers.list(all=True, filters={"label": f"prodai.deployment={name}"})
    networks = [n.name for n in docker_client.networks.list() if n.name == f"{name}-net"]
    volumes = [v.name for v in docker_client.volumes.list() if v.name == f"{name}-jobs"]
    return [c.name for c in containers] + networks + volumes


def _predict(url: str, text: str = "hello world", user: str = "user-1") -> dict[str, Any]:
    response = httpx.post(f"{url}/predict", json={"text": text}, headers={"X-User-ID": user}, timeout=30)
    assert response.status_code == 200, response.text
    data = response.json()
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def deployment(
    docker_client: Any, registered_project: Path, tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path
) -> Any:
    """clf versions 1 and 2 deployed with A/B config (v1 takes all traffic), on a free loopback port."""
    project = tmp_path_factory.mktemp("deployed") / "proj"
    shutil.copytree(registered_project, project, symlinks=True)
    (project / "prodai.yaml").write_text(AB_CONFIG, encoding="utf-8")
    open_for_container(project)
    port = free_port()
    name = f"prodai-test-{port}"
    env = {
        "PRODAI_CACHE_DIR": str(wheel_cache),
        "PRODAI_DEPLOY__HOST": "127.0.0.1",
        "PRODAI_DEPLOY__BASE_IMAGE": "prodai-base:bookworm",
        "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "180",
    }
    result = run_cli(
        "deploy",
        "--port",
        str(port),
        "--name",
        name,
        "--tag",
        f"prodai-test-clf:{port}",
        "--json",
        cwd=project,
        env=env,
        timeout=1500,
    )
    try:
        assert result.exit_code == 0, result.stderr[-4000:]
        yield {"project": project, "port": port, "name": name, "env": env, "result": result.json()}
    finally:
        from prodai_cli.deploy import containers as engine

        for container in docker_client.containers.list(all=True, filters={"label": f"prodai.deployment={name}"}):
            engine.remove_container(docker_client, container.id, timeout_s=5)
        engine.remove_network(docker_client, f"{name}-net")
        engine.remove_volume(docker_client, f"{name}-jobs")
        remove_images(docker_client, f"prodai-test-clf:{port}", f"prodai-test-clf2:{port}", f"prodai-test-clf1:{port}")


def test_deploy_builds_runs_and_answers(deployment: Any, docker_client: Any) -> None:
    data = deployment["result"]
    url = f"http://127.0.0.1:{deployment['port']}"
    assert data["url"] == url
    assert data["target"] == "docker"
    assert (data["model"], data["version"], data["versions"]) == ("clf", 1, [1, 2])
    assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
    prediction = _predict(url)
    assert prediction["model_version"] == "1"
    assert prediction["label"] in {"NEGATIVE", "POSITIVE"}
    # The record other commands read (load tests, checks) carries the contract keys.
    record = json.loads((deployment["project"] / ".prodai" / "deployments" / f"{deployment['name']}.json").read_text())
    for key in ("name", "url", "model", "version", "target", "image", "container_id", "previous_image", "created"):
        assert key in record
    # Replicas behind the deployment's balancer, on its own network; only the balancer holds the port.
    server = docker_client.containers.get(record["container_id"])
    assert server.name.startswith(f"{deployment['name']}-") and server.labels["prodai.role"] == "server"
    lb = docker_client.containers.get(f"{deployment['name']}-lb")
    assert lb.labels["prodai.role"] == "balancer"
    assert set(lb.attrs["NetworkSettings"]["Networks"]) == {f"{deployment['name']}-net"}
    assert f"{deployment['name']}-net" in server.attrs["NetworkSettings"]["Networks"]
    assert lb.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"] == str(deployment["port"])
    # The image says what it holds.
    image = docker_client.images.get(record["image"])
    assert image.labels["prodai.model"] == "clf"
    assert image.labels["prodai.model-versions"] == "1,2"
    assert image.labels["prodai.config-hash"] == record["config_hash"]
    assert image.attrs["Config"]["User"] == "10001:10001"
    assert image.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"


def test_image_holds_no_mlflow_and_no_wheelhouse(deployment: Any, docker_client: Any) -> None:
    image = deployment["result"]["image"]
    output = docker_client.containers.run(
        image,
        [
            "python3",
            "-c",
            "import importlib.util as u, os; "
            "print(u.find_spec('mlflow') is None, u.find_spec('torch') is not None, os.path.exists('/tmp/wheelhouse'))",
        ],
        remove=True,
        network_mode="none",
    )
    assert output.decode().split() == ["True", "True", "False"]


def test_ab_set_on_the_host_reaches_the_containers_config_live(deployment: Any, docker_client: Any) -> None:
    import yaml

    container = _server(deployment, docker_client)
    result = run_cli("ab-set", "v1=0", "v2=1", cwd=deployment["project"], env=deployment["env"])
    assert result.exit_code == 0, result.stderr
    # ab-set replaced the file (a new inode); the container must see the new one at once, unrestarted.
    code, output = container.exec_run(["cat", "/app/prodai.yaml"])
    assert code == 0
    variants = yaml.safe_load(output)["ab"]["variants"]
    assert {k: (v["version"], v["weight"]) for k, v in variants.items()} == {"v1": (1, 0.0), "v2": (2, 1.0)}
    # ...and finds version 2 baked into the image, where its registry-less resolve looks.
    code, output = container.exec_run(["cat", "/app/.prodai/models/clf/2/version.json"])
    assert code == 0, output
    assert json.loads(output)["version"] == 2


def test_ab_set_changes_the_containers_routing_without_restart(deployment: Any, docker_client: Any) -> None:
    url = f"http://127.0.0.1:{deployment['port']}"
    container = _server(deployment, docker_client)
    started_at = container.attrs["State"]["StartedAt"]
    result = run_cli("ab-set", "v1=0", "v2=1", cwd=deployment["project"], env=deployment["env"])
    assert result.exit_code == 0, result.stderr
    versions: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        versions.append(_predict(url, user=f"user-{len(versions)}")["model_version"])
        if versions[-1] == "2":
            break
        time.sleep(0.5)
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started_at, "the container restarted"
    assert versions[-1] == "2", f"routing never reached version 2 after ab-set (saw {sorted(set(versions))})"


def test_status_and_logs(deployment: Any) -> None:
    status = run_cli("deploy", "status", "--json", cwd=deployment["project"], env=deployment["env"])
    assert status.exit_code == 0, status.stderr
    entries = {e["name"]: e for e in status.json()}  # type: ignore[union-attr]
    assert entries[deployment["name"]]["state"] == "running"
    logs = run_cli(
        "deploy", "logs", deployment["name"], "--tail", "20", cwd=deployment["project"], env=deployment["env"]
    )
    assert logs.exit_code == 0, logs.stderr
    assert "/health/ready" in logs.stdout  # the server's access log of the readiness probes


def test_redeploy_then_rollback_restores_the_previous_image(deployment: Any, docker_client: Any) -> None:
    project, port, name, env = deployment["project"], deployment["port"], deployment["name"], deployment["env"]
    first_image = _server(deployment, docker_client).image.id
    second = run_cli(
        "deploy",
        "--model",
        "clf/2",
        "--port",
        str(port),
        "--name",
        name,
        "--tag",
        f"prodai-test-clf2:{port}",
        "--json",
        cwd=project,
        env=env,
        timeout=900,
    )
    assert second.exit_code == 0, second.stderr[-4000:]
    assert second.json()["previous_image"] == first_image  # type: ignore[index]
    assert _predict(f"http://127.0.0.1:{port}")["model_version"] == "2"
    rolled = run_cli("deploy", "rollback", name, "--json", cwd=project, env=env, timeout=600)
    assert rolled.exit_code == 0, rolled.stderr[-4000:]
    assert _server(deployment, docker_client).image.id == first_image
    assert rolled.json()["image_id"] == first_image  # type: ignore[index]
    assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10).status_code == 200


def test_rollback_runs_the_previous_image_as_it_ran(deployment: Any, docker_client: Any) -> None:
    """Issue 14: v2, then v1 over it, then rollback (v2 again), then rollback (v1): a client sends
    predictions throughout and not one fails; every step ends answering the expected version."""
    project, port, name, env = deployment["project"], deployment["port"], deployment["name"], deployment["env"]
    url = f"http://127.0.0.1:{port}"
    with Traffic(url) as traffic:
        for version, tag in ((2, f"prodai-test-clf2:{port}"), (1, f"prodai-test-clf1:{port}")):
            result = run_cli(
                "deploy", "--model", f"clf/{version}", "--port", str(port), "--name", name, "--tag", tag, "--json",
                cwd=project, env=env, timeout=900,
            )  # fmt: skip
            assert result.exit_code == 0, result.stderr[-4000:]
            assert _predict(url)["model_version"] == str(version)
        rolled = run_cli("deploy", "rollback", name, "--json", cwd=project, env=env, timeout=600)
        assert rolled.exit_code == 0, rolled.stderr[-4000:]
        assert _predict(url)["model_version"] == "2"
        assert rolled.json()["run"]["environment"]["PRODAI_SERVING__MODEL"] == "clf/2"  # type: ignore[index]
        # And back again: the rolled-back record remembers how the v1 image ran.
        again = run_cli("deploy", "rollback", name, "--json", cwd=project, env=env, timeout=600)
        assert again.exit_code == 0, again.stderr[-4000:]
        assert _predict(url)["model_version"] == "1"
    print(f"\nroll-outs (deploy v2, v1, rollback x2): {len(traffic.failures)} of {traffic.total} requests failed")
    assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.total} failed: {traffic.failures[:5]}"
    assert traffic.total >= 100 and {"1", "2"} <= set(traffic.versions)
    # One replica serves after each change: the old ones were retired, not left running.
    servers = docker_client.containers.list(filters={"label": [f"prodai.deployment={name}", "prodai.role=server"]})
    assert [s.id for s in servers] == [_record(deployment)["container_id"]]
    # The image a rollback would run is tagged (never dangling), and the builds left no dangling stage.
    assert docker_client.images.get(f"prodai-rollback:{name}").id == _record(deployment)["previous_image"]
    deployment["images"] = {_record(deployment)["image_id"], _record(deployment)["previous_image"]}


def test_redeploy_that_cannot_load_its_model_keeps_the_old_version_serving(deployment: Any, docker_client: Any) -> None:
    """Issue 14: an image whose weights are corrupt: exit 1 with its log lines; v1 keeps answering, 0 failures."""
    project, port, name, env = deployment["project"], deployment["port"], deployment["name"], deployment["env"]
    url = f"http://127.0.0.1:{port}"
    good = _record(deployment)
    broken_tag = f"prodai-test-corrupt:{port}"
    corrupt = deployment["project"] / "corrupt-build"
    corrupt.mkdir()
    (corrupt / "Dockerfile").write_text(
        f"FROM {good['image_id']}\nUSER root\n"
        "RUN find /app/.prodai/models -name '*.safetensors' -exec sh -c 'echo corrupt > \"$1\"' _ {} \\; \\\n"
        " && find /app/.prodai/models -name '*.safetensors' | grep -q . \\\n"
        " && ! find /app/.prodai/models -name '*.safetensors' -size +1k | grep -q .\n"
        "USER 10001:10001\n"
    )
    docker_client.images.build(path=str(corrupt), tag=broken_tag, network_mode="none", rm=True)
    try:
        with Traffic(url) as traffic:
            time.sleep(0.5)
            result = run_cli(
                "deploy", "--model", "clf/1", "--no-build", "--port", str(port), "--name", name,
                "--tag", broken_tag, cwd=project, env={**env, "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "90"}, timeout=600,
            )  # fmt: skip
            time.sleep(0.5)
        assert result.exit_code == 1, result.stdout + result.stderr
        assert "last log lines" in result.stderr and '"level"' in result.stderr  # the new container's own log
        assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.total} failed: {traffic.failures[:5]}"
        assert traffic.ok >= 10 and set(traffic.versions) == {"1"}
        # The old replica still serves, nothing of the failed one is left, and the record is unchanged.
        assert _record(deployment)["container_id"] == good["container_id"]
        servers = docker_client.containers.list(
            all=True, filters={"label": [f"prodai.deployment={name}", "prodai.role=server"]}
        )
        assert [s.id for s in servers] == [good["container_id"]]
    finally:
        remove_images(docker_client, broken_tag)


def test_the_seed_batch_predict_flow_runs_in_the_replicas_shared_jobs_volume(
    deployment: Any, docker_client: Any
) -> None:
    """The embedded jobs backend needs a writable jobs directory: the replicas share a named volume for it."""
    from prodai_cli.deploy.plan import CONTAINER_JOBS_DIR

    url = f"http://127.0.0.1:{deployment['port']}"
    servers = docker_client.containers.list(
        filters={"label": [f"prodai.deployment={deployment['name']}", "prodai.role=server"]}
    )
    assert servers
    for server in servers:
        mounts = {m["Destination"]: m for m in server.attrs["Mounts"]}
        assert mounts[CONTAINER_JOBS_DIR]["Name"] == f"{deployment['name']}-jobs", mounts
    submitted = httpx.post(f"{url}/batch_predict", json={"texts": ["good", "bad", "fine"]}, timeout=30)
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    deadline = time.monotonic() + 180
    while True:
        answer = httpx.get(f"{url}/batch_result/{task_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        if answer.json()["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(1)
    result = answer.json()
    assert result["status"] == "completed", result
    assert len(result["results"]) == 3 and all(r["label"] in {"NEGATIVE", "POSITIVE"} for r in result["results"])


def test_stop_removes_the_container(deployment: Any, docker_client: Any) -> None:
    from docker.errors import NotFound

    result = run_cli("deploy", "stop", deployment["name"], "--json", cwd=deployment["project"], env=deployment["env"])
    assert result.exit_code == 0, result.stderr
    with pytest.raises(NotFound):
        docker_client.containers.get(f"{deployment['name']}-lb")
    assert result.json()["status"] == "stopped"  # type: ignore[index]
    # Nothing of the deployment is left: no container (replicas, balancer), no network, no dangling image
    # (build stages are tagged as the next build's cache; the images a rollback needs are tagged too).
    assert _leftovers(docker_client, deployment["name"]) == []
    dangling = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    assert not dangling & deployment.get("images", set())
    assert docker_client.images.list(filters={"dangling": True, "label": "prodai.stage=build"}) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{deployment['port']}/health/ready", timeout=3)


def test_model_that_fails_to_load_fails_deploy_with_log_tail(
    docker_client: Any, container_project: Path, deploy_env: dict[str, str]
) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.registry import Registry

    (container_project / "prodai.yaml").write_text("serving:\n  model: clf/1\nauth:\n  enabled: false\n")
    open_for_container(container_project)
    resolved = Registry(load_settings(container_project / "prodai.yaml")).resolve("clf/1")
    weights = next(resolved.model_dir.glob("*.safetensors"))
    weights.write_bytes(b"this is not a safetensors file")
    # A version whose files hash as recorded yet do not load (the cache's manifest cannot tell): rewrite the
    # manifest, so the corrupt weights pass the integrity check and reach the image.
    from prodai_cli import model_cache

    model_cache.write_manifest(resolved.path)
    port = free_port()
    name = f"prodai-broken-{port}"
    try:
        result = run_cli(
            "deploy",
            "--port",
            str(port),
            "--name",
            name,
            "--tag",
            f"prodai-test-broken:{port}",
            cwd=container_project,
            env={**deploy_env, "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "90"},
            timeout=900,
        )
        assert result.exit_code == 1, result.stdout + result.stderr
        assert "last log lines" in result.stderr
        # The tail is the container's own output: the server's JSON log lines.
        assert '"level"' in result.stderr
        # The failed first deploy left nothing: no replica, no balancer, no network.
        assert _leftovers(docker_client, name) == []
    finally:
        from prodai_cli.deploy import containers as engine

        for container in docker_client.containers.list(all=True, filters={"label": f"prodai.deployment={name}"}):
            engine.remove_container(docker_client, container.id, timeout_s=2)
        engine.remove_network(docker_client, f"{name}-net")
        remove_images(docker_client, f"prodai-test-broken:{port}")


def test_build_with_networking_disabled(
    docker_client: Any, container_project: Path, wheel_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.deploy import containers as engine
    from prodai_cli.deploy.build_context import assemble
    from prodai_cli.deploy.plan import plan_deployment

    monkeypatch.setenv("PRODAI_CACHE_DIR", str(wheel_cache))
    (container_project / "prodai.yaml").write_text("serving:\n  model: emb/1\n")
    plan = plan_deployment(
        load_settings(container_project / "prodai.yaml"), base_image="prodai-base:bookworm", tag="prodai-test-offline:1"
    )
    context = assemble(plan)
    lines: list[str] = []
    image = engine.build_image(docker_client, context.directory, plan.tag, network_mode="none", progress=lines.append)
    assert image.labels["prodai.model"] == "emb"
    assert any("pip install --no-index" in line for line in lines)
    # The server's code path imports inside the image with no network at all.
    output = docker_client.containers.run(
        image.id,
        ["python3", "-c", "import prodai_cli.serving.app, sys; print('mlflow' in sys.modules)"],
        remove=True,
        network_mode="none",
    )
    assert output.decode().strip() == "False"
    remove_images(docker_client, plan.tag)
