"""Deploy's files without a Docker engine: templates render strictly, and what they render validates with the
real tools (Kubernetes JSON schemas offline, docker-compose, promtool); plan, wheel and records behave."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from helpers import run_cli

from prodai_cli.config import load_settings
from prodai_cli.deploy import balancer, records
from prodai_cli.deploy.build_context import dockerfile_text
from prodai_cli.deploy.plan import plan_deployment
from prodai_cli.deploy.targets import compose as compose_target
from prodai_cli.deploy.targets import docker, k8s
from prodai_cli.deploy.templates import render, template_names
from prodai_cli.deploy.wheelhouse import build_prodai_wheel, missing_requirements, torch_requirement
from prodai_cli.errors import DeployError, UsageError

K8S_VERSION = "1.30.0"
AB_CONFIG = """\
auth:
  keys:
    - {name: ci, hash: "%s", scopes: [predict]}
ab:
  enabled: true
  model: clf
  variants:
    main: {version: production, weight: 0.75}
    canary: {version: 2, weight: 0.25}
deploy:
  replicas: 2
  grafana: true
""" % ("a" * 64)


@pytest.fixture
def ab_plan(registered_copy: Path) -> Any:
    (registered_copy / "prodai.yaml").write_text(AB_CONFIG, encoding="utf-8")
    return plan_deployment(load_settings(registered_copy / "prodai.yaml"))


def _with_workers(plan: Any, workers: int = 2) -> Any:
    """``plan`` with ``deploy.workers`` and a jobs Redis set, as ``--workers`` and the config would set them."""
    import dataclasses

    config = plan.settings.config
    update = {
        "deploy": config.deploy.model_copy(update={"workers": workers}),
        "jobs": config.jobs.model_copy(update={"redis_url": "redis://redis.jobs.svc:6379/1"}),
    }
    plan.settings = dataclasses.replace(plan.settings, config=config.model_copy(update=update))
    return plan


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/setup-system installs it")
    return path


# ------------------------------------------------------------------------------------------ templates


def test_every_template_renders_and_strict_undefined_catches_a_missing_variable(ab_plan: Any, tmp_path: Path) -> None:
    rendered: dict[str, str] = {"Dockerfile.j2": dockerfile_text(ab_plan, "prodai-0-py3-none-any.whl")}
    for relative, text in compose_target.compose_files(
        ab_plan, image="img:1", port=8080, project_dir=str(tmp_path)
    ).items():
        rendered[relative] = text
    for relative, text in k8s.k8s_manifests(ab_plan, image="img:1").items():
        rendered[f"k8s/{relative}"] = text
    workers_plan = _with_workers(ab_plan)
    rendered["docker-compose.yml (workers)"] = compose_target.compose_files(
        workers_plan, image="img:1", port=8080, project_dir=str(tmp_path)
    )["docker-compose.yml"]
    for relative, text in k8s.k8s_manifests(workers_plan, image="img:1").items():
        rendered[f"k8s/{relative} (workers)"] = text
    rendered["haproxy.cfg.j2"] = balancer.config_text(backend_port=8000)
    # Every packaged template was exercised by the renders above.
    produced = {
        "Dockerfile.j2",
        "docker-compose.yml.j2",
        "prometheus.yml.j2",
        "alerts.yml.j2",
        "grafana/datasource.yml.j2",
        "grafana/dashboards.yml.j2",
        "grafana/prodai-dashboard.json.j2",
        "haproxy.cfg.j2",
        *(f"k8s/{name}.j2" for name in k8s.k8s_manifests(workers_plan, image="img:1")),
        # The rollout's Argo hand-off: rendered and parsed by tests/ab/test_rollout_deployments.py.
        "argo/rollout.yaml.j2",
        "argo/analysis-template.yaml.j2",
    }
    assert set(template_names()) == produced
    for name, text in rendered.items():
        assert "{%" not in text, name
        if not name.startswith(("alerts", "grafana")):  # those carry Prometheus/Grafana's own {{ }} on purpose
            assert "{{" not in text, name
    with pytest.raises(jinja2.UndefinedError):
        render("k8s/service.yaml.j2", name="x", namespace="default")  # labels missing


def test_dockerfile_variants(ab_plan: Any) -> None:
    cpu = dockerfile_text(ab_plan, "prodai.whl")
    assert cpu.count("FROM python:3.11-slim") == 2  # multi-stage on the default base
    assert "--no-index" in cpu and "USER 10001:10001" in cpu and "HEALTHCHECK" in cpu
    assert "/health/ready" in cpu and "NVIDIA_VISIBLE_DEVICES" not in cpu
    assert 'prodai.model-versions="1,2"' in cpu
    ab_plan.variant = "cuda"
    cuda = dockerfile_text(ab_plan, "prodai.whl")
    assert "NVIDIA_VISIBLE_DEVICES=all" in cuda and "PRODAI_SERVING__DEVICE=cuda" in cuda


def test_k8s_manifests_validate_against_the_kubernetes_schemas(ab_plan: Any) -> None:
    import kubernetes_validate

    manifests = k8s.k8s_manifests(ab_plan, image="registry.example/prodai-clf:1-2")
    kinds = []
    for text in manifests.values():
        document = yaml.safe_load(text)
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        kinds.append(document["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    deployment = yaml.safe_load(manifests["deployment.yaml"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert deployment["spec"]["replicas"] == 2
    # The ConfigMap's prodai.yaml is valid, names versions only, and keeps key hashes out (they are in the Secret).
    config_text = yaml.safe_load(manifests["configmap.yaml"])["data"]["prodai.yaml"]
    config = yaml.safe_load(config_text)
    assert config["auth"] == {**config["auth"], "keys": [], "keys_file": "/etc/prodai/keys/keys.yaml"}
    assert {v["version"] for v in config["ab"]["variants"].values()} == {1, 2}
    secret = yaml.safe_load(yaml.safe_load(manifests["secret.yaml"])["stringData"]["keys.yaml"])
    assert secret["keys"][0]["hash"] == "a" * 64
    # No workers: the server runs jobs itself, in a writable pod-local directory (the root filesystem is read-only).
    from prodai_cli.deploy.plan import CONTAINER_JOBS_DIR

    pod = deployment["spec"]["template"]["spec"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["jobs"] == CONTAINER_JOBS_DIR
    assert {v["name"]: v for v in pod["volumes"]}["jobs"] == {"name": "jobs", "emptyDir": {"sizeLimit": "10Gi"}}
    assert {e["name"]: e.get("value") for e in container["env"]}["PRODAI_JOBS__DIR"] == CONTAINER_JOBS_DIR
    ab_plan.variant = "cuda"
    gpu = yaml.safe_load(k8s.k8s_manifests(ab_plan, image="img:1")["deployment.yaml"])
    kubernetes_validate.validate(gpu, K8S_VERSION, strict=True)
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_k8s_schema_validation_rejects_a_broken_manifest(ab_plan: Any) -> None:
    import kubernetes_validate

    document = yaml.safe_load(k8s.k8s_manifests(ab_plan, image="img:1")["deployment.yaml"])
    document["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


# The Pod Security Standards' "restricted" profile as the Kubernetes docs state it (v1.30), applied to a pod
# template: the baseline controls prodai could break, plus restricted's own. No cluster (and so no admission
# controller) is reachable from the tests, hence this literal reading of the rules.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps ``pod`` (a PodSpec) out of the Pod Security "restricted" profile; empty when it fits."""
    problems: list[str] = []
    pod_context = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} is of type {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    containers = [*(pod.get("initContainers") or []), *pod["containers"]]
    for container in containers:
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{name}: hostPort")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
    return problems


def _pod(plan: Any) -> dict[str, Any]:
    deployment = yaml.safe_load(k8s.k8s_manifests(plan, image="img:1")["deployment.yaml"])
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _drop(document: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        document = document[int(part)] if part.isdigit() else document[part]  # type: ignore[index]
    assert last in document, path  # the field is rendered: removing it is a real change
    del document[last]


def test_k8s_pod_meets_the_restricted_pod_security_profile_with_no_cluster(ab_plan: Any) -> None:
    pod = _pod(ab_plan)
    assert restricted_violations(pod) == []
    # Beyond the profile: no API token in the pod, nothing written outside the bounded emptyDirs (/tmp, jobs).
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    # HOME=/tmp in the image; the jobs directory for the jobs the server runs itself; nowhere else.
    assert writable == {"/tmp", "/var/lib/prodai/jobs"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == k8s.TMP_SIZE
    assert volumes["jobs"]["emptyDir"]["sizeLimit"]
    assert volumes["keys"]["secret"]["defaultMode"] == 0o440  # key hashes: owner and fsGroup only
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]  # ...which is the server's
    assert {v["name"] for v in pod["volumes"]} == {"config", "keys", "tmp", "jobs"}
    assert pod["securityContext"]["runAsUser"] != 0


@pytest.mark.parametrize(
    ("removed", "complaint"),
    [
        ("securityContext.seccompProfile", "seccompProfile"),
        ("containers.0.securityContext.allowPrivilegeEscalation", "allowPrivilegeEscalation"),
        ("containers.0.securityContext.capabilities", "drop ALL"),
    ],
)
def test_restricted_profile_check_catches_a_removed_field(ab_plan: Any, removed: str, complaint: str) -> None:
    pod = _pod(ab_plan)
    # The container repeats seccompProfile and runAsNonRoot (either level satisfies the profile): drop both.
    if removed == "securityContext.seccompProfile":
        _drop(pod, "containers.0.securityContext.seccompProfile")
    _drop(pod, removed)
    assert any(complaint in problem for problem in restricted_violations(pod)), restricted_violations(pod)


def test_restricted_profile_check_catches_root_and_a_host_path(ab_plan: Any) -> None:
    pod = _pod(ab_plan)
    _drop(pod, "securityContext.runAsNonRoot")
    _drop(pod, "containers.0.securityContext.runAsNonRoot")
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = restricted_violations(pod)
    assert any("runAsNonRoot" in p for p in problems) and any("hostPath" in p for p in problems)


def test_k8s_rollout_keeps_ready_pods_behind_the_service_with_no_cluster(registered_copy: Path) -> None:
    import kubernetes_validate

    from prodai_cli.serving.routes import HEALTH_ROUTES

    (registered_copy / "prodai.yaml").write_text(
        "serving:\n  model: emb\n  drain_delay_s: 7.5\n  grace_period_s: 20\n"
        "deploy:\n  replicas: 3\n  readiness_timeout_s: 300\n"
    )
    plan = plan_deployment(load_settings(registered_copy / "prodai.yaml"))
    manifests = k8s.k8s_manifests(plan, image="img:1")
    deployment = yaml.safe_load(manifests["deployment.yaml"])
    pdb = yaml.safe_load(manifests["pdb.yaml"])
    service = yaml.safe_load(manifests["service.yaml"])
    kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
    # A rolling update adds a ready pod before it removes one: never fewer ready pods than replicas.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The Service and the PDB select exactly this Deployment's pods; the Service routes to the named port.
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"] == "http"
    # Probes hit routes the server has: readiness gates the Service, liveness restarts a hung process.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in HEALTH_ROUTES
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    # The kubelet waits for the drain (7.5 s of 503 on /health/ready) and the grace period (20 s) and more.
    assert pod["terminationGracePeriodSeconds"] == 28 + k8s.TERMINATION_MARGIN_S
    # A drain evicts one pod of three at a time, and never the last of one.
    assert pdb["spec"]["minAvailable"] == 2
    assert [k8s.min_available(n) for n in (1, 2, 3, 5)] == [1, 1, 2, 4]


def test_compose_file_validates_with_docker_compose(ab_plan: Any, tmp_path: Path) -> None:
    compose = _tool("docker-compose")
    files = compose_target.compose_files(ab_plan, image="prodai-clf:1-2", port=8080, project_dir=str(tmp_path))
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [compose, "-f", str(tmp_path / "docker-compose.yml"), "config"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    normalised = yaml.safe_load(result.stdout)
    assert set(normalised["services"]) == {"lb", "server", "redis", "prometheus", "grafana"}
    server = normalised["services"]["server"]
    assert server["deploy"]["replicas"] == 2
    # Only the balancer publishes the service port; the replicas publish nothing and trust the stack network.
    assert "ports" not in server
    assert normalised["services"]["lb"]["ports"][0]["published"] == 8080
    assert yaml.safe_load(server["environment"]["PRODAI_RATE_LIMIT__TRUSTED_PROXIES"]) == []
    # compose's own $-interpolation must leave the balancer's shell variable intact (it prints it escaped).
    assert "$PRODAI_HAPROXY_CFG" in " ".join(normalised["services"]["lb"]["command"])
    assert "server-template replica" in normalised["services"]["lb"]["environment"]["PRODAI_HAPROXY_CFG"]
    assert server["environment"]["PRODAI_REDIS_URL"] == "redis://redis:6379/0"
    assert f"{tmp_path}:/app:ro" in server["volumes"]  # docker-compose 1.x prints the short syntax
    json.loads(files["grafana/dashboards/prodai.json"])  # the dashboard is valid JSON
    # A broken file is refused by the same check.
    (tmp_path / "docker-compose.yml").write_text(files["docker-compose.yml"].replace("services:", "servicez:"))
    broken = subprocess.run(
        [compose, "-f", str(tmp_path / "docker-compose.yml"), "config"], capture_output=True, text=True, check=False
    )
    assert broken.returncode != 0


def test_prometheus_config_and_alert_rules_pass_promtool(ab_plan: Any, tmp_path: Path) -> None:
    promtool = _tool("promtool")
    files = compose_target.compose_files(ab_plan, image="img:1", port=8080, project_dir=None)
    (tmp_path / "prometheus.yml").write_text(files["prometheus.yml"])
    (tmp_path / "alerts.yml").write_text(files["alerts.yml"])
    config = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "alerts.yml")], capture_output=True, text=True, check=False
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 5 rules found" in rules.stdout
    names = {r["alert"] for g in yaml.safe_load(files["alerts.yml"])["groups"] for r in g["rules"]}
    assert {"ProdaiHighErrorRate", "ProdaiHighLatencyP99", "ProdaiBreakerOpen", "ProdaiRateLimitSaturation"} <= names
    (tmp_path / "alerts.yml").write_text(files["alerts.yml"].replace("> 0.01", "> > 0.01"))
    bad = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "alerts.yml")], capture_output=True, text=True, check=False
    )
    assert bad.returncode != 0


# ------------------------------------------------------------------------------------------ plan


def test_plan_resolves_aliases_to_versions_for_a_registry_less_container(ab_plan: Any) -> None:
    assert (ab_plan.model, ab_plan.version, ab_plan.versions) == ("clf", 1, [1, 2])
    assert ab_plan.tag == "prodai-clf:1-2" and ab_plan.name == "prodai-clf"
    assert any("alias 'production'" in w for w in ab_plan.warnings)
    config = yaml.safe_load(ab_plan.config_text())
    assert config["serving"]["host"] == "0.0.0.0" and config["serving"]["port"] == 8080
    assert config["serving"]["model"] == "clf/1" and config["registry"]["tracking_uri"] is None
    assert {k: v["version"] for k, v in config["ab"]["variants"].items()} == {"main": 1, "canary": 2}
    for model in ab_plan.models:
        assert (model.source / "version.json").is_file()
        assert model.relative_dir == f"clf/{model.version}"


def test_plan_with_model_option_serves_one_version_and_switches_ab_off(registered_copy: Path) -> None:
    (registered_copy / "prodai.yaml").write_text(AB_CONFIG, encoding="utf-8")
    plan = plan_deployment(load_settings(registered_copy / "prodai.yaml"), model_ref="clf@staging", gpu=True)
    assert plan.versions == [2] and plan.tag == "prodai-clf:2-cuda"
    assert plan.environment == {"PRODAI_SERVING__MODEL": "clf/2", "PRODAI_AB__ENABLED": "false"}
    assert yaml.safe_load(plan.config_text())["serving"]["device"] == "cuda"


def test_deploy_without_a_model_is_a_usage_error(cli: Any) -> None:
    result = cli("deploy", "--target", "k8s", "--no-build")
    assert result.exit_code == 2
    assert "No model to deploy" in result.stderr


def test_k8s_target_writes_manifests_without_an_engine(registered_copy: Path) -> None:
    (registered_copy / "prodai.yaml").write_text("serving:\n  model: emb\n")
    result = run_cli(
        "deploy",
        "--target",
        "k8s",
        "--no-build",
        "--json",
        cwd=registered_copy,
        env={"KUBECONFIG": str(registered_copy / "no-kubeconfig")},
    )
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert data["target"] == "k8s" and data["image"] == "prodai-emb:1" and data["started"] is False
    written = sorted(Path(p).name for p in data["files"])
    assert written == ["configmap.yaml", "deployment.yaml", "hpa.yaml", "pdb.yaml", "secret.yaml", "service.yaml"]
    record = records.load(load_settings(registered_copy / "prodai.yaml"), "prodai-emb")
    assert record is not None and record.status == "written" and record.version == 1


def test_bad_tag_and_unknown_deployment_are_clear_errors(registered_copy: Path) -> None:
    (registered_copy / "prodai.yaml").write_text("serving:\n  model: emb\n")
    settings = load_settings(registered_copy / "prodai.yaml")
    with pytest.raises(UsageError, match="Invalid image tag"):
        plan_deployment(settings, tag="Bad Tag")
    result = run_cli("deploy", "stop", "nope", cwd=registered_copy)
    assert result.exit_code == 1 and "No deployment named 'nope'" in result.stderr


def test_config_mounts_mount_the_live_config_directory(tmp_path: Path) -> None:
    # Private (0600) configs: tests/deploy/test_deploy_secrets.py.
    project = tmp_path / "proj"
    project.mkdir(mode=0o700)
    (project / "prodai.yaml").write_text("serving:\n  port: 9000\n")
    settings = load_settings(project / "prodai.yaml")
    project.chmod(0o755)
    (project / "prodai.yaml").chmod(0o644)
    mounts, environment, user = docker.config_mounts(settings)
    assert user is None and environment == {"PRODAI_CONFIG": "/app/prodai.yaml"}
    assert [(m["type"], m["target"], m["read_only"]) for m in mounts] == [
        ("bind", "/app", True),
        ("volume", "/app/.prodai", False),
    ]
    assert mounts[0]["source"] == str(project)


# ------------------------------------------------------------------------------------------ wheels, records


def test_prodai_wheel_is_reproducible_and_installs(tmp_path: Path) -> None:
    first = build_prodai_wheel(tmp_path / "a")
    second = build_prodai_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()  # same code, same bytes: Docker reuses the layer
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
    assert "prodai_cli/templates/Dockerfile.j2" in names and "prodai_cli/serving/app.py" in names
    assert not any("__pycache__" in n for n in names)
    target = tmp_path / "site"
    result = subprocess.run(
        ["python3", "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(first)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (target / "prodai_cli" / "templates" / "k8s" / "deployment.yaml.j2").is_file()
    entry_points = next(target.glob("prodai-*.dist-info")) / "entry_points.txt"
    assert "prodai = prodai_cli.cli:main" in entry_points.read_text()


def test_missing_requirements_follow_the_images_python_markers(tmp_path: Path) -> None:
    def wheel(name: str, requires: list[str]) -> None:
        with zipfile.ZipFile(tmp_path / f"{name}-1.0-py3-none-any.whl", "w") as archive:
            lines = "".join(f"Requires-Dist: {r}\n" for r in requires)
            archive.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n{lines}")

    wheel(
        "redis",
        [
            'async-timeout>=4.0.3; python_full_version < "3.11.3"',
            'pywin; sys_platform == "win32"',
            'extra-thing; extra == "ocsp"',
            "dep",
        ],
    )
    wheel("dep", [])
    assert missing_requirements(tmp_path, "3.11") == ["async-timeout>=4.0.3"]


def test_cpu_variant_pins_the_cpu_torch_build() -> None:
    line, _indexes = torch_requirement("cpu")
    assert line.startswith("torch==") and line.endswith("+cpu")
    cuda_line, cuda_indexes = torch_requirement("cuda")
    assert "+" not in cuda_line and cuda_indexes == []


def test_records_round_trip_and_ignore_unknown_keys(project: Path) -> None:
    settings = load_settings()
    record = records.DeploymentRecord(
        name="d",
        url="http://127.0.0.1:1",
        model="m",
        version=3,
        target="docker",
        image="prodai-m:3",
        container_id="abc",
        previous_image=None,
        created=records.now_iso(),
    )
    path = records.save(settings, record)
    data = json.loads(path.read_text())
    data["added_by_a_newer_prodai"] = True
    path.write_text(json.dumps(data))
    loaded = records.load(settings, "d")
    assert loaded == record
    assert [r.name for r in records.list_records(settings)] == ["d"]
    assert not path.stat().st_mode & stat.S_IWOTH


def test_compose_replicas_trust_their_stack_network_but_never_its_gateway() -> None:
    import ipaddress

    networks = [ipaddress.ip_network(n) for n in compose_target.trusted_networks("172.24.0.0/16", "172.24.0.1")]

    def trusted(address: str) -> bool:
        return any(ipaddress.ip_address(address) in n for n in networks)

    # The host forwards published-port traffic from the gateway: that is the client, not a proxy.
    assert not trusted("172.24.0.1")
    assert trusted("172.24.0.2") and trusted("172.24.255.254") and trusted("172.24.0.0")
    assert not trusted("172.25.0.2") and not trusted("10.0.0.1")
    assert compose_target.trusted_networks("10.5.0.0/24", None) == ["10.5.0.0/24"]


def test_local_service_images_come_from_debian_packages_tagged_by_their_dockerfile() -> None:
    from prodai_cli.deploy import services

    redis = services.dockerfile(services.REDIS, "prodai-base:bookworm")
    assert redis.startswith("FROM prodai-base:bookworm\n") and "apt-get install" in redis and "redis-server" in redis
    assert "USER redis" in redis
    prometheus = services.dockerfile(services.PROMETHEUS, "prodai-base:bookworm")
    assert 'ENTRYPOINT ["/usr/bin/prometheus"]' in prometheus and "USER prometheus" in prometheus
    tag = services.image_tag(services.REDIS, "prodai-base:bookworm")
    assert tag.startswith("prodai-redis:") and tag == services.image_tag(services.REDIS, "prodai-base:bookworm")
    assert tag != services.image_tag(services.REDIS, "debian:bookworm")


@pytest.mark.docker
def test_balancer_config_is_valid_haproxy_and_hides_client_forwarding_headers(docker_client: Any) -> None:
    """The rendered HAProxy config passes `haproxy -c` in the balancer image prodai builds from Debian's package,
    and it replaces (never forwards) a client's own X-Forwarded-For/Forwarded headers."""
    from prodai_cli.deploy import containers

    text = balancer.config_text(backend_port=8000, slots=4)
    assert "http-request del-header X-Forwarded-For" in text and "option forwardfor" in text
    assert text.index("del-header X-Forwarded-For") < text.index("option forwardfor")
    assert "server-template replica 1-4 server:8000" in text and "http-check send meth GET uri /health/ready" in text
    image = balancer.ensure_image(docker_client, base_image="prodai-base:bookworm")
    assert containers.image_info(docker_client, image) is not None
    check = ["/bin/sh", "-c", f'printf "%s\\n" "${balancer.CONFIG_ENV}" > /tmp/h.cfg && haproxy -c -f /tmp/h.cfg']
    output = docker_client.containers.run(
        image, check, environment={balancer.CONFIG_ENV: text}, remove=True, stderr=True, network_mode="none"
    )
    assert b"Configuration file is valid" in output
    broken = text.replace("backend servers", "backend servers\n    no-such-keyword 1")
    from docker.errors import ContainerError

    with pytest.raises(ContainerError):
        docker_client.containers.run(
            image, check, environment={balancer.CONFIG_ENV: broken}, remove=True, stderr=True, network_mode="none"
        )


# ------------------------------------------------------------------------------------------ job workers

WORKERS_CONFIG = AB_CONFIG + (
    "  workers: 2\n  max_workers: 6\n  jobs_storage_class: nfs-client\n"
    "jobs:\n  redis_url: redis://redis.jobs.svc:6379/1\n"
)


@pytest.fixture
def workers_plan(registered_copy: Path) -> Any:
    (registered_copy / "prodai.yaml").write_text(WORKERS_CONFIG, encoding="utf-8")
    return plan_deployment(load_settings(registered_copy / "prodai.yaml"))


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's volumes as {target: source}, whichever syntax `docker-compose config` prints."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found[volume["target"]] = str(volume.get("source", ""))
        else:
            source, _, rest = volume.partition(":")
            found[rest.split(":")[0] if rest else source] = source if rest else ""
    return found


def _compose_config(files: dict[str, str], directory: Path) -> dict[str, Any]:
    for relative, text in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(directory / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    normalised: dict[str, Any] = yaml.safe_load(result.stdout)
    return normalised


def test_compose_workers_take_the_jobs_through_the_stacks_redis_on_one_shared_volume(
    workers_plan: Any, tmp_path: Path
) -> None:
    from prodai_cli.deploy.plan import CONTAINER_JOBS_DIR

    files = compose_target.compose_files(workers_plan, image="prodai-clf:1-2", port=8080, project_dir=str(tmp_path))
    normalised = _compose_config(files, tmp_path)
    services = normalised["services"]
    assert set(services) == {"lb", "server", "worker", "redis", "prometheus", "grafana"}
    server, worker = services["server"], services["worker"]
    assert worker["deploy"]["replicas"] == 2 and server["deploy"]["replicas"] == 2
    # The server's image, running `prodai worker`: no port, and not the image's HTTP health check.
    assert worker["image"] == server["image"] == "prodai-clf:1-2"
    assert worker["command"] == ["/opt/venv/bin/prodai", "worker"] and "ports" not in worker
    # `disable: true`, which docker-compose 1.x prints as the equivalent test NONE.
    assert worker["healthcheck"].get("disable") is True or worker["healthcheck"]["test"] == ["NONE"], worker
    assert worker["labels"]["prodai.role"] == "worker"
    for service in (server, worker):
        environment = service["environment"]
        # Both hand jobs to Celery on the stack's Redis, database 1 (the cache and rate limits use 0).
        assert environment["PRODAI_JOBS__BACKEND"] == "celery"
        assert environment["PRODAI_JOBS__REDIS_URL"] == compose_target.JOBS_REDIS_URL == "redis://redis:6379/1"
        assert environment["PRODAI_JOBS__DIR"] == CONTAINER_JOBS_DIR
        mounts = _mounts(service)
        assert mounts[CONTAINER_JOBS_DIR] == "jobs", mounts  # one named volume, the same for all
        assert mounts["/app"] == str(tmp_path)  # the same live prodai.yaml (and registry-less models) as the server
        assert environment["PRODAI_CONFIG"] == "/app/prodai.yaml"
    assert server["environment"]["PRODAI_REDIS_URL"] == "redis://redis:6379/0"
    assert "jobs" in normalised["volumes"]
    # Without workers the replicas run jobs themselves (embedded), still on the shared volume: any replica
    # behind the balancer answers for a job another one accepted.
    plain = _compose_config(
        compose_target.compose_files(workers_plan, image="img:1", port=8080, project_dir=None, workers=0),
        tmp_path / "plain",
    )
    assert "worker" not in plain["services"]
    environment = plain["services"]["server"]["environment"]
    assert "PRODAI_JOBS__BACKEND" not in environment and environment["PRODAI_JOBS__DIR"] == CONTAINER_JOBS_DIR
    assert _mounts(plain["services"]["server"]) == {CONTAINER_JOBS_DIR: "jobs"}
    # The image makes that directory its user's, so a fresh volume mounted there is writable by the server.
    dockerfile = dockerfile_text(workers_plan, "prodai.whl")
    assert f"install -d -o 10001 -g 10001 -m 0750 {CONTAINER_JOBS_DIR}" in dockerfile


def test_an_image_with_workers_installs_celery_and_redis_and_one_without_does_not() -> None:
    from prodai_cli.deploy.wheelhouse import runtime_requirements

    plain, _ = runtime_requirements("cpu")
    with_jobs, _ = runtime_requirements("cpu", jobs=True)
    names = {line.split("==")[0] for line in with_jobs.splitlines()}
    assert {"celery", "redis"} <= names
    assert not {"celery", "redis"} & {line.split("==")[0] for line in plain.splitlines()}
    assert set(plain.splitlines()) < set(with_jobs.splitlines())


def test_k8s_workers_scale_on_the_jobs_backlog_and_share_the_jobs_volume_with_the_server(workers_plan: Any) -> None:
    import kubernetes_validate

    from prodai_cli.deploy.plan import CONTAINER_JOBS_DIR

    manifests = k8s.k8s_manifests(workers_plan, image="registry.example/prodai-clf:1-2")
    docs = {name: yaml.safe_load(text) for name, text in manifests.items()}
    for document in docs.values():
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    assert sorted(d["kind"] for d in docs.values()) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    server, worker = docs["deployment.yaml"], docs["worker-deployment.yaml"]
    hpa, pvc = docs["worker-hpa.yaml"], docs["jobs-pvc.yaml"]
    pod = worker["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["terminationGracePeriodSeconds"] == k8s.WORKER_TERMINATION_GRACE_S
    container = pod["containers"][0]
    assert container["command"] == ["/opt/venv/bin/prodai", "worker"] and "ports" not in container
    assert container["image"] == server["spec"]["template"]["spec"]["containers"][0]["image"]
    # The server's Service, PDB and Deployment never select a worker pod; the worker Deployment selects its own.
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    for selector in (
        docs["service.yaml"]["spec"]["selector"],
        docs["pdb.yaml"]["spec"]["selector"]["matchLabels"],
        server["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= worker_labels.items(), selector
    assert worker["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    # Server and workers mount one ReadWriteMany claim as the jobs directory and hand jobs over through Celery.
    for spec in (pod, server["spec"]["template"]["spec"]):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["jobs"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["jobs"] == CONTAINER_JOBS_DIR
        environment = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert environment["PRODAI_JOBS__BACKEND"] == "celery" and environment["PRODAI_JOBS__DIR"] == CONTAINER_JOBS_DIR
    assert "keys" not in {v["name"] for v in pod["volumes"]}  # a worker needs no API key hashes
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "nfs-client"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # The broker is the config's (the ConfigMap's prodai.yaml, which the workers read too).
    config = yaml.safe_load(docs["configmap.yaml"]["data"]["prodai.yaml"])
    assert config["jobs"]["redis_url"] == "redis://redis.jobs.svc:6379/1"
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {
        docs["configmap.yaml"]["metadata"]["name"]
    }
    # The HPA scales the worker Deployment between deploy.workers and deploy.max_workers, one worker per job.
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == k8s.BACKLOG_METRIC
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {
        "app_kubernetes_io_instance": server["metadata"]["name"]
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == k8s.SCALE_DOWN_WINDOW_S
    # The metric the HPA reads is documented with the prometheus-adapter rule that serves it.
    guide = (Path(__file__).resolve().parents[2] / "docs" / "jobs.md").read_text(encoding="utf-8")
    assert f"as: {k8s.BACKLOG_METRIC}" in guide and 'prodai_jobs{status=~"queued|running"' in guide


def test_k8s_workers_flag_writes_worker_manifests_and_switching_them_off_removes_them(registered_copy: Path) -> None:
    env = {"KUBECONFIG": str(registered_copy / "no-kubeconfig")}
    (registered_copy / "prodai.yaml").write_text("serving:\n  model: emb\n")

    def deploy(*args: str) -> Any:
        return run_cli("deploy", "--target", "k8s", "--no-build", "--json", *args, cwd=registered_copy, env=env)

    # No Redis for the workers: refused before anything is written, naming the keys.
    refused = deploy("--workers", "2")
    assert refused.exit_code == 2, refused.stderr
    assert "deploy.workers" in refused.stderr and "jobs.redis_url" in refused.stderr
    assert not (registered_copy / ".prodai" / "k8s").exists()
    (registered_copy / "prodai.yaml").write_text("serving:\n  model: emb\njobs:\n  redis_url: redis://r:6379/1\n")
    result = deploy("--workers", "3")
    assert result.exit_code == 0, result.stderr
    written = sorted(Path(p).name for p in result.json()["files"])  # type: ignore[index]
    assert written == [
        "configmap.yaml",
        "deployment.yaml",
        "hpa.yaml",
        "jobs-pvc.yaml",
        "pdb.yaml",
        "secret.yaml",
        "service.yaml",
        "worker-deployment.yaml",
        "worker-hpa.yaml",
    ]
    directory = registered_copy / ".prodai" / "k8s" / "prodai-emb"
    assert yaml.safe_load((directory / "worker-deployment.yaml").read_text())["spec"]["replicas"] == 3
    again = deploy()  # deploy.workers is 0: `kubectl apply -f DIR` must not bring the workers back
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in directory.iterdir()) == [
        "configmap.yaml",
        "deployment.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "secret.yaml",
        "service.yaml",
    ]
    too_many = deploy("--workers", "65")
    assert too_many.exit_code == 2 and "--workers" in too_many.stderr


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("  workers: 65", "deploy.workers: Input should be less than or equal to 64"),
        ("  workers: -1", "deploy.workers: Input should be greater than or equal to 0"),
        ("  max_workers: 0", "deploy.max_workers: Input should be greater than or equal to 1"),
        ("  jobs_volume_size: lots", "deploy.jobs_volume_size: String should match pattern"),
        ("  jobs_storage_class: Bad_Class", "deploy.jobs_storage_class: String should match pattern"),
    ],
)
def test_bad_worker_keys_name_the_key_and_line(tmp_path: Path, line: str, complaint: str) -> None:
    from prodai_cli.errors import ConfigError

    (tmp_path / "prodai.yaml").write_text(f"serving:\n  port: 9000\ndeploy:\n  replicas: 1\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "prodai.yaml")
    assert complaint in caught.value.message and "line 5" in caught.value.message, caught.value.message


def test_a_replica_is_in_rotation_only_after_a_health_check_of_its_own() -> None:
    """HAProxy calls a server its DNS just named UP before any check ran (check_status INI): not ready.

    A CI run's compose update took a loading replica for ready that way in 0.07 s and retired the serving ones.
    The stats page is a real HTTP server here, serving the CSV columns HAProxy's ``/stats;csv`` has.
    """
    import http.server
    import threading

    header = "# pxname,svname,qcur,scur,stot,status,check_status,addr\n"
    rows = [
        "servers,replica1,0,0,10,UP,L7OK,10.0.0.3:8000",  # checked and passing
        "servers,replica2,0,0,0,UP,INI,10.0.0.4:8000",  # named by DNS a moment ago, never checked
        "servers,replica3,0,0,0,UP,* L7OK,10.0.0.5:8000",  # passing, the next check under way
        "servers,replica4,0,1,3,DOWN,L7STS,10.0.0.6:8000",  # draining: answers 503
        f"servers,{balancer.LAST_RESORT_PREFIX}1,0,0,0,UP,,10.0.0.3:8000",  # the unchecked copy: not a replica
        "servers,BACKEND,0,1,13,UP,,",
    ]
    body = (header + "\n".join(rows) + "\n").encode()

    class Stats(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        states = {s.slot: s for s in balancer.replica_states(url)}
        assert sorted(states) == ["replica1", "replica2", "replica3", "replica4"]
        assert [s for s in sorted(states) if states[s].up] == ["replica1", "replica2", "replica3"]
        assert [s for s in sorted(states) if states[s].in_rotation] == ["replica1", "replica3"]
        assert balancer.wait_in_rotation(url, {"10.0.0.3", "10.0.0.5"}, timeout_s=2) < 1
        with pytest.raises(DeployError, match=r"did not take 10\.0\.0\.4"):
            balancer.wait_in_rotation(url, {"10.0.0.4"}, timeout_s=0.5)  # the old code returned at once
    finally:
        server.shutdown()
