"""The deploy targets: one container (docker), a one-host stack (compose), manifests for a cluster (k8s).

Plus the life cycle of what the docker target started: status, logs, stop and rollback, driven by the
deployment records.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.deploy import engine, records
from prodai_cli.deploy.plan import CONTAINER_PORT, CONTAINER_UID, K8S_KEYS_FILE, DeployPlan, plan_deployment
from prodai_cli.deploy.records import DeploymentRecord
from prodai_cli.deploy.templates import METRICS, render
from prodai_cli.errors import DeployError, UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings

TARGETS = ("docker", "compose", "k8s")
Progress = Callable[[str], None]


@dataclass
class DeployResult:
    """What a deploy did."""

    record: DeploymentRecord
    plan: DeployPlan
    context_dir: Path | None
    image: engine.BuiltImage | None
    ready_after_s: float | None = None
    files: list[str] = field(default_factory=list)
    started: bool = False
    next_steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            **self.record.to_dict(),
            "context_dir": str(self.context_dir) if self.context_dir else None,
            "ready_after_s": round(self.ready_after_s, 2) if self.ready_after_s is not None else None,
            "files": self.files,
            "started": self.started,
            "warnings": self.plan.warnings,
            "next_steps": self.next_steps,
        }


def deploy(
    settings: Settings,
    *,
    target: str | None = None,
    model_ref: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    port: int | None = None,
    gpu: bool | None = None,
    base_image: str | None = None,
    build: bool = True,
    progress: Progress | None = None,
) -> DeployResult:
    """Plan, build (unless ``build`` is False) and deploy to ``target``.

    Raises:
        UsageError: Bad target or nothing to deploy.
        DeployError: The build, the engine or the container failed (with the container's log tail).

    """
    target = target or settings.config.deploy.target
    if target not in TARGETS:
        raise UsageError(f"Unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    say = progress or (lambda _line: None)
    plan = plan_deployment(settings, model_ref=model_ref, tag=tag, name=name, gpu=gpu, base_image=base_image)
    image: engine.BuiltImage | None = None
    context_dir: Path | None = None
    needs_engine = build or target != "k8s"
    client = engine.docker_client() if needs_engine else None
    if build:
        from prodai_cli.deploy.context import assemble

        context = assemble(plan, progress=progress)
        context_dir = context.directory
        say(f"Building {plan.tag} (network disabled)")
        image = engine.build_image(client, context.directory, plan.tag, network_mode="none", progress=progress)
    elif client is not None:
        image = engine.image_info(client, plan.tag)
        if image is None:
            raise DeployError(f"--no-build, but the engine has no image {plan.tag}", hint="Drop --no-build")
    if target == "docker":
        assert image is not None
        return _deploy_docker(settings, plan, client, image, context_dir, port=port, progress=progress)
    if target == "compose":
        return _deploy_compose(settings, plan, image, context_dir, port=port)
    return _deploy_k8s(settings, plan, image, context_dir)


# ------------------------------------------------------------------------------------------------ docker


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host


def predict_hint(settings: Settings, url: str) -> list[str]:
    """Shell lines for a first request that works: with auth on (the default) they create and send a key.

    The container reads the project's live config directory and reloads keys, so a key created after the
    deploy is accepted without a redeploy (issue 15, item 2: the bare curl got 401).
    """
    body = "-H 'Content-Type: application/json' -d '{\"text\": \"hello\"}'"
    auth = settings.config.auth
    if not auth.enabled:
        return [f"curl -s -X POST {url}/predict {body}"]
    return [
        "KEY=$(prodai keys create --name first-client --scope predict)",
        f'curl -s -X POST {url}/predict -H "{auth.header}: $KEY" {body}',
    ]


def config_mounts(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, str], str | None]:
    """Mounts, environment and user that let a container read the project's live prodai.yaml.

    The config's *directory* is mounted read-only at ``/app`` (a single-file mount would keep the old file
    forever: ``ab-set`` and ``keys`` replace the file atomically, i.e. with a new inode). An anonymous
    volume over ``/app/.prodai`` keeps the models baked into the image visible there (Docker fills a new
    volume from the image) and hides the host's registry files.

    Returns:
        (mounts, environment, user): user is None when the image's own non-root user can read the config.

    Raises:
        DeployError: Only root could read the config; the hint says how to open it up.

    """
    if settings.path is None:
        return [], {}, None
    config_dir = settings.path.parent
    (config_dir / ".prodai").mkdir(exist_ok=True)  # the volume's mount point inside the read-only mount
    mounts: list[dict[str, Any]] = [
        {"type": "bind", "source": str(config_dir), "target": "/app", "read_only": True},
        {"type": "volume", "source": None, "target": "/app/.prodai", "read_only": False},
    ]
    environment = {"PRODAI_CONFIG": f"/app/{settings.path.name}"}
    dir_mode = config_dir.stat().st_mode
    file_stat = settings.path.stat()
    if dir_mode & stat.S_IXOTH and file_stat.st_mode & stat.S_IROTH:
        return mounts, environment, None
    if file_stat.st_uid != 0:
        # The file's owner can read it; run as that user (still not root).
        return mounts, environment, f"{file_stat.st_uid}:{file_stat.st_gid}"
    raise DeployError(
        f"The container's user (uid {CONTAINER_UID}) cannot read {settings.path}, and prodai will not run "
        "the server as root to get around it",
        hint=f"chmod o+x {config_dir} && chmod o+r {settings.path}",
    )


def _deploy_docker(
    settings: Settings,
    plan: DeployPlan,
    client: Any,
    image: engine.BuiltImage,
    context_dir: Path | None,
    *,
    port: int | None,
    progress: Progress | None,
) -> DeployResult:
    say = progress or (lambda _line: None)
    deploy_config = settings.config.deploy
    host_port = port or deploy_config.port
    mounts, environment, user = config_mounts(settings)
    spec = engine.RunSpec(
        name=plan.name,
        image=image.id,
        host=deploy_config.host,
        port=host_port,
        container_port=CONTAINER_PORT,
        environment={**plan.environment, **environment},
        mounts=mounts,
        restart_policy=deploy_config.restart_policy,
        gpu=plan.gpu,
        user=user,
        labels={"prodai.model": plan.model, "prodai.serving-version": str(plan.version)},
    )
    before = records.load(settings, plan.name)
    existing = engine.container(client, plan.name)
    previous_image = str(existing.image.id) if existing is not None else (before.image_id if before else None)
    if existing is not None:
        say(f"Replacing the running container {plan.name}")
        engine.remove_container(client, plan.name)
    url = f"http://{_display_host(spec.host)}:{host_port}"
    say(f"Starting {plan.name} on {url}")
    container_id = engine.run_container(client, spec)
    try:
        waited = engine.wait_ready(client, container_id, f"{url}/health/ready", deploy_config.readiness_timeout_s)
    except DeployError as exc:
        engine.remove_container(client, container_id, timeout_s=5)
        restored = _restore(client, before, existing is not None, deploy_config.readiness_timeout_s)
        if restored:
            exc.message += f"\nThe previous deployment ({before.image if before else '?'}) was started again."
        raise
    record = DeploymentRecord(
        name=plan.name,
        url=url,
        model=plan.model,
        version=plan.version,
        target="docker",
        image=plan.tag,
        container_id=container_id,
        previous_image=previous_image if previous_image != image.id else (before.previous_image if before else None),
        created=records.now_iso(),
        image_id=image.id,
        versions=plan.versions,
        port=host_port,
        config_hash=plan.config_hash,
        image_size_bytes=image.size_bytes,
        run=spec.to_dict(),
        previous_run=_previous_run(before, image.id),
    )
    records.save(settings, record)
    steps = [
        *predict_hint(settings, url),
        f"prodai deploy logs {plan.name}",
        f"prodai loadtest --url {url}",
    ]
    return DeployResult(record, plan, context_dir, image, ready_after_s=waited, started=True, next_steps=steps)


def _rollback_spec(record: DeploymentRecord, previous: engine.BuiltImage) -> engine.RunSpec:
    """How to run the previous image: as it ran (recorded), else the current spec pinned to its own model."""
    if record.previous_run:
        return engine.RunSpec.from_dict({**record.previous_run, "image": previous.id})
    # Older records kept no previous spec: the current one names the *current* model, which the previous
    # image does not hold. Pin the model its labels say it serves.
    run = {**record.run, "image": previous.id}
    environment = dict(run.get("environment") or {})
    model, version = previous.labels.get("prodai.model"), previous.labels.get("prodai.serving-version")
    if "PRODAI_SERVING__MODEL" in environment and model and version:
        environment["PRODAI_SERVING__MODEL"] = f"{model}/{version}"
    run["environment"] = environment
    labels = dict(run.get("labels") or {})
    labels.update({k: v for k, v in previous.labels.items() if k in ("prodai.model", "prodai.serving-version")})
    run["labels"] = labels
    return engine.RunSpec.from_dict(run)


def _restore(client: Any, before: DeploymentRecord | None, was_running: bool, timeout_s: float) -> bool:
    """After a failed replacement, start the deployment that ran before (best effort)."""
    if not was_running or before is None or not before.run or not before.image_id:
        return False
    try:
        spec = engine.RunSpec.from_dict({**before.run, "image": before.image_id})
        container_id = engine.run_container(client, spec)
        engine.wait_ready(client, container_id, f"{before.url}/health/ready", timeout_s)
    except (DeployError, TypeError):
        return False
    return True


# ------------------------------------------------------------------------------------------------ compose


def compose_files(
    plan: DeployPlan, *, image: str, port: int, project_dir: str | None, bind_host: str = ""
) -> dict[str, str]:
    """The compose stack's files, by relative path: docker-compose.yml, prometheus.yml, alerts.yml (+ Grafana)."""
    deploy_config = plan.settings.config.deploy
    replicas = deploy_config.replicas
    ports = f"{port}-{port + replicas - 1}" if replicas > 1 else str(port)
    files = {
        "docker-compose.yml": render(
            "docker-compose.yml.j2",
            project=plan.name,
            name=plan.name,
            image=image,
            replicas=replicas,
            config_file="prodai.yaml" if project_dir is None else Path(str(plan.settings.path)).name,
            environment=plan.environment,
            project_dir=project_dir,
            port_mapping=f"{bind_host + ':' if bind_host else ''}{ports}:{CONTAINER_PORT}",
            container_port=CONTAINER_PORT,
            restart_policy=deploy_config.restart_policy,
            gpu=plan.gpu,
            redis_image=deploy_config.redis_image,
            prometheus_image=deploy_config.prometheus_image,
            prometheus_port=9090,
            grafana=deploy_config.grafana,
            grafana_image=deploy_config.grafana_image,
            grafana_port=3000,
        ),
        "prometheus.yml": render(
            "prometheus.yml.j2", scrape_interval="15s", service="server", container_port=CONTAINER_PORT
        ),
        "alerts.yml": alert_rules(),
    }
    if deploy_config.grafana:
        files["grafana/provisioning/datasources/prometheus.yml"] = render("grafana/datasource.yml.j2")
        files["grafana/provisioning/dashboards/prodai.yml"] = render("grafana/dashboards.yml.j2")
        files["grafana/dashboards/prodai.json"] = dashboard(plan.name)
    return files


def alert_rules(*, error_rate: float = 0.01, p99_seconds: float = 1.0, rate_limited_share: float = 0.05) -> str:
    """The Prometheus alert rules (error rate, p99 latency, breaker open, rate-limit saturation, down)."""
    return render(
        "alerts.yml.j2",
        metrics=METRICS,
        error_rate=error_rate,
        p99_seconds=p99_seconds,
        rate_limited_share=rate_limited_share,
    )


def dashboard(name: str) -> str:
    """The provisioned Grafana dashboard (JSON)."""
    requests, latency = METRICS["requests"], METRICS["latency"]
    panels = [
        {
            "title": "Requests/s by status",
            "unit": "reqps",
            "legend": "{{status}}",
            "expr": f"sum by (status) (rate({requests}[1m]))",
        },
        {
            "title": "Latency p50 / p99",
            "unit": "s",
            "legend": "p99",
            "expr": f"histogram_quantile(0.99, sum by (le) (rate({latency}_bucket[5m])))",
        },
        {
            "title": "Requests/s by model version and variant",
            "unit": "reqps",
            "legend": "{{model_version}} {{variant}}",
            "expr": f"sum by (model_version, variant) (rate({requests}[1m]))",
        },
        {
            "title": "Mean micro-batch size",
            "unit": "none",
            "legend": "batch",
            "expr": f"rate({METRICS['batch_size']}_sum[5m]) / rate({METRICS['batch_size']}_count[5m])",
        },
        {"title": "Queue depth", "unit": "none", "legend": "queued", "expr": f"sum({METRICS['queue_depth']})"},
        {
            "title": "Breakers open",
            "unit": "none",
            "legend": "{{model_version}}",
            "expr": f"max by (model_version) ({METRICS['breaker_open']})",
        },
    ]
    return render("grafana/prodai-dashboard.json.j2", name=name, panels=panels)


def compose_command() -> list[str] | None:
    """``docker compose`` when the plugin is there, else ``docker-compose``, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _write_files(directory: Path, files: dict[str, str]) -> list[str]:
    from prodai_cli.config import write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        write_atomic(directory / relative, text)
    return [str(directory / relative) for relative in files]


def _deploy_compose(
    settings: Settings, plan: DeployPlan, image: engine.BuiltImage | None, context_dir: Path | None, *, port: int | None
) -> DeployResult:
    deploy_config = settings.config.deploy
    host_port = port or deploy_config.port
    project_dir = str(settings.path.parent) if settings.path is not None else None
    if settings.path is not None:
        config_mounts(settings)  # the same readability check as the docker target
    directory = settings.state_dir / "compose" / plan.name
    bind_host = "" if deploy_config.host in {"", "0.0.0.0"} else deploy_config.host
    files = compose_files(plan, image=plan.tag, port=host_port, project_dir=project_dir, bind_host=bind_host)
    written = _write_files(directory, files)
    command = compose_command()
    if command is None:
        raise DeployError(
            f"Wrote the stack to {directory}, but neither `docker compose` nor `docker-compose` is installed",
            hint="Install the compose plugin (or docker-compose) and run: "
            f"docker compose -p {plan.name} -f {directory / 'docker-compose.yml'} up -d",
        )
    up = [
        *command,
        "-p",
        plan.name,
        "-f",
        str(directory / "docker-compose.yml"),
        "up",
        "-d",
        "--scale",
        f"server={deploy_config.replicas}",
    ]
    result = subprocess.run(up, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DeployError(f"`{' '.join(up)}` failed:\n{(result.stderr or result.stdout).strip()[-2000:]}")
    display_host = _display_host(deploy_config.host)
    url = f"http://{display_host}:{host_port}"
    replica_urls = [f"http://{display_host}:{host_port + i}" for i in range(deploy_config.replicas)]
    try:
        waited = wait_http_ready(replica_urls, deploy_config.readiness_timeout_s)
    except DeployError as exc:
        logs = subprocess.run(
            [
                *command,
                "-p",
                plan.name,
                "-f",
                str(directory / "docker-compose.yml"),
                "logs",
                "--no-color",
                "--tail",
                "20",
                "server",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        exc.message += "\nThe server replicas' last log lines:\n" + (logs.stdout or logs.stderr).strip()
        raise
    record = _files_record(plan, image, "compose", url, directory)
    records.save(settings, record)
    steps = [
        f"{' '.join(command)} -p {plan.name} -f {directory / 'docker-compose.yml'} ps",
        "Prometheus: http://127.0.0.1:9090",
    ]
    return DeployResult(
        record, plan, context_dir, image, ready_after_s=waited, files=written, started=True, next_steps=steps
    )


def wait_http_ready(urls: list[str], timeout_s: float) -> float:
    """Wait until every ``URL/health/ready`` answers 200; returns the seconds waited.

    Raises:
        DeployError: One was not ready in time (the message says which and what it answered).

    """
    import time

    import httpx

    start = time.monotonic()
    pending = list(urls)
    last: dict[str, str] = {}
    with httpx.Client(timeout=2.0) as http:
        while pending:
            for url in list(pending):
                try:
                    response = http.get(f"{url}/health/ready")
                    if response.status_code == 200:
                        pending.remove(url)
                        continue
                    last[url] = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last[url] = type(exc).__name__
            if pending and time.monotonic() - start > timeout_s:
                states = ", ".join(f"{u} ({last.get(u, 'no answer')})" for u in pending)
                raise DeployError(f"Not ready after {timeout_s:g}s: {states}")
            if pending:
                time.sleep(0.5)
    return time.monotonic() - start


def _files_record(
    plan: DeployPlan, image: engine.BuiltImage | None, target: str, url: str, directory: Path
) -> DeploymentRecord:
    before = records.load(plan.settings, plan.name)
    return DeploymentRecord(
        name=plan.name,
        url=url,
        model=plan.model,
        version=plan.version,
        target=target,
        image=plan.tag,
        container_id=None,
        previous_image=before.image_id if before else None,
        created=records.now_iso(),
        image_id=image.id if image else None,
        versions=plan.versions,
        config_hash=plan.config_hash,
        image_size_bytes=image.size_bytes if image else None,
        files_dir=str(directory),
    )


# ------------------------------------------------------------------------------------------------ k8s


def k8s_manifests(plan: DeployPlan, *, image: str) -> dict[str, str]:
    """The Kubernetes manifests by file name: Deployment, Service, HPA, ConfigMap, Secret."""
    deploy_config = plan.settings.config.deploy
    labels = {
        "app.kubernetes.io/name": "prodai",
        "app.kubernetes.io/instance": plan.name,
        "app.kubernetes.io/managed-by": "prodai",
        "prodai.dev/model": _label_value(plan.model),
        "prodai.dev/model-versions": _label_value("-".join(str(v) for v in plan.versions)),
    }
    common = {"name": plan.name, "namespace": deploy_config.namespace, "labels": labels}
    config_text = plan.config_text(keys_file=K8S_KEYS_FILE)
    grace = plan.settings.config.serving.grace_period_s
    return {
        "deployment.yaml": render(
            "k8s/deployment.yaml.j2",
            **common,
            replicas=deploy_config.replicas,
            image=image,
            config_hash=plan.config_hash,
            container_port=CONTAINER_PORT,
            uid=CONTAINER_UID,
            environment=plan.environment,
            cpu=deploy_config.cpu,
            memory=deploy_config.memory,
            gpu=plan.gpu,
            termination_grace_s=int(grace) + 5,
        ),
        "service.yaml": render("k8s/service.yaml.j2", **common),
        "hpa.yaml": render(
            "k8s/hpa.yaml.j2",
            **common,
            replicas=deploy_config.replicas,
            max_replicas=max(deploy_config.max_replicas, deploy_config.replicas),
            cpu_target_percent=70,
        ),
        "configmap.yaml": render("k8s/configmap.yaml.j2", **common, config_text=config_text),
        "secret.yaml": render("k8s/secret.yaml.j2", **common, keys_text=plan.keys_text()),
    }


def _label_value(text: str) -> str:
    import re

    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or "none"


def kubectl_context() -> str | None:
    """The current kubectl context, or None when kubectl or a context is missing."""
    if not shutil.which("kubectl"):
        return None
    result = subprocess.run(
        ["kubectl", "config", "current-context"], capture_output=True, text=True, check=False, timeout=30
    )
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def _deploy_k8s(
    settings: Settings, plan: DeployPlan, image: engine.BuiltImage | None, context_dir: Path | None
) -> DeployResult:
    directory = settings.state_dir / "k8s" / plan.name
    written = _write_files(directory, k8s_manifests(plan, image=plan.tag))
    context = kubectl_context()
    started = False
    steps = []
    if context is not None:
        result = subprocess.run(
            ["kubectl", "apply", "-f", str(directory)], capture_output=True, text=True, check=False, timeout=300
        )
        if result.returncode != 0:
            raise DeployError(f"kubectl apply (context {context}) failed:\n{result.stderr.strip()[-2000:]}")
        started = True
        steps.append(f"kubectl -n {settings.config.deploy.namespace} rollout status deployment/{plan.name}")
    else:
        steps.append(f"Push {plan.tag} to a registry your cluster pulls from, then: kubectl apply -f {directory}")
    namespace = settings.config.deploy.namespace
    url = f"http://{plan.name}.{namespace}.svc.cluster.local"
    record = _files_record(plan, image, "k8s", url, directory)
    record.status = "applied" if started else "written"
    records.save(settings, record)
    return DeployResult(record, plan, context_dir, image, files=written, started=started, next_steps=steps)


# ------------------------------------------------------------------------------------------------ life cycle


def _record_or_error(settings: Settings, name: str) -> DeploymentRecord:
    record = records.load(settings, name)
    if record is None:
        known = ", ".join(r.name for r in records.list_records(settings)) or "none"
        raise DeployError(f"No deployment named {name!r}", hint=f"Deployments here: {known}")
    return record


def default_name(settings: Settings, name: str | None) -> str:
    """``name``, or the only deployment of this project."""
    if name:
        return name
    found = records.list_records(settings)
    if len(found) == 1:
        return found[0].name
    if not found:
        raise DeployError("No deployments in this project yet", hint="Run: prodai deploy")
    raise UsageError("Several deployments exist; name one", hint="Deployments: " + ", ".join(r.name for r in found))


def status(settings: Settings) -> list[dict[str, Any]]:
    """Every recorded deployment with the live state of its container (docker target)."""
    found = records.list_records(settings)
    client = engine.docker_client() if any(r.target == "docker" for r in found) else None
    out = []
    for record in found:
        entry = record.to_dict()
        entry.pop("run", None)
        if client is not None and record.target == "docker" and record.container_id:
            live = engine.container(client, record.container_id)
            if live is None:
                entry["state"] = "missing"
            else:
                state = live.attrs.get("State", {})
                entry["state"] = state.get("Status")
                entry["health"] = (state.get("Health") or {}).get("Status")
                entry["started_at"] = state.get("StartedAt")
        else:
            entry["state"] = record.status
        out.append(entry)
    return out


def logs(settings: Settings, name: str, *, lines: int = 100) -> str:
    """The last ``lines`` log lines of a docker deployment's container."""
    record = _record_or_error(settings, name)
    client = engine.docker_client()
    ref = record.container_id or record.name
    if engine.container(client, ref) is None:
        raise DeployError(f"The container of {name} is gone ({record.status})")
    return engine.logs_tail(client, ref, lines)


def follow_logs(settings: Settings, name: str, *, lines: int = 100) -> Iterator[str]:
    """Stream a container's log lines as they come (until it stops or the caller interrupts)."""
    record = _record_or_error(settings, name)
    client = engine.docker_client()
    found = engine.container(client, record.container_id or record.name)
    if found is None:
        raise DeployError(f"The container of {name} is gone ({record.status})")
    for chunk in found.logs(stream=True, follow=True, tail=lines):
        yield bytes(chunk).decode("utf-8", errors="replace")


def stop(settings: Settings, name: str) -> DeploymentRecord:
    """Stop and remove a deployment's container (docker) or stack (compose); the record stays for rollback."""
    record = _record_or_error(settings, name)
    if record.target == "docker":
        client = engine.docker_client()
        engine.remove_container(client, record.container_id or record.name)
        engine.remove_container(client, record.name)
    elif record.target == "compose":
        command = compose_command()
        compose_file = Path(record.files_dir or "") / "docker-compose.yml"
        if command is None or not compose_file.is_file():
            raise DeployError("Cannot stop the compose stack: no compose command or no compose file")
        result = subprocess.run(
            [*command, "-p", record.name, "-f", str(compose_file), "down", "-v"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DeployError(f"compose down failed:\n{result.stderr.strip()[-2000:]}")
    else:
        raise DeployError(
            "prodai does not stop Kubernetes deployments itself",
            hint=f"kubectl delete -f {record.files_dir}",
        )
    record.status = "stopped"
    record.container_id = None
    records.save(settings, record)
    return record


def _previous_run(before: DeploymentRecord | None, new_image_id: str) -> dict[str, Any]:
    """The run spec of the image a redeploy replaces, kept so a rollback runs it as it ran."""
    if before is None:
        return {}
    if before.image_id and before.image_id != new_image_id:
        return dict(before.run)
    # Same image deployed again: the image to roll back to is still the one before it.
    return dict(before.previous_run)


def rollback(settings: Settings, name: str) -> DeploymentRecord:
    """Run the previous image of a docker deployment again, the way the current one runs.

    Raises:
        DeployError: No previous image, the engine lost it, or it does not become ready.

    """
    record = _record_or_error(settings, name)
    if record.target != "docker":
        raise DeployError(f"rollback works on docker deployments; {name} is a {record.target} deployment")
    if not record.previous_image or not record.run:
        raise DeployError(f"{name} has no previous image to roll back to")
    client = engine.docker_client()
    previous = engine.image_info(client, record.previous_image)
    if previous is None:
        raise DeployError(f"The engine no longer has the previous image {record.previous_image[:19]}")
    spec = _rollback_spec(record, previous)
    timeout_s = settings.config.deploy.readiness_timeout_s
    # One host port: the current container must go before the previous image can bind it. If the previous
    # image does not become ready, the current deployment is started again: a rollback never leaves the
    # deployment down.
    was_running = engine.container(client, record.name) is not None
    engine.remove_container(client, record.container_id or record.name)
    engine.remove_container(client, record.name)
    try:
        container_id = engine.run_container(client, spec)
        engine.wait_ready(client, container_id, f"{record.url}/health/ready", timeout_s)
    except DeployError as exc:
        engine.remove_container(client, record.name, timeout_s=5)
        if _restore(client, record, was_running, timeout_s):
            exc.message += f"\nThe current deployment ({record.image}) was started again; nothing changed."
        raise
    labels = previous.labels
    version = int(labels.get("prodai.serving-version") or record.version)
    versions = [int(v) for v in labels.get("prodai.model-versions", "").split(",") if v.strip().isdigit()]
    rolled = DeploymentRecord(
        name=record.name,
        url=record.url,
        model=labels.get("prodai.model", record.model),
        version=version,
        target="docker",
        image=previous.tag if not previous.tag.startswith("sha256:") else record.previous_image,
        container_id=container_id,
        previous_image=record.image_id,
        created=records.now_iso(),
        image_id=previous.id,
        versions=versions or [version],
        port=record.port,
        config_hash=labels.get("prodai.config-hash"),
        image_size_bytes=previous.size_bytes,
        run=spec.to_dict(),
        previous_run=dict(record.run),
    )
    records.save(settings, rolled)
    return rolled
