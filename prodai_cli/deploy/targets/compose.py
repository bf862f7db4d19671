"""The compose target: a one-host stack, HAProxy in front of server replicas, Redis, Prometheus (+ Grafana).

Life cycle (docs/deploy.md, "compose"):

- **deploy**: the record is written first (so ``deploy stop NAME`` works whatever fails next), then the
  network (prodai creates it: its subnet is the replicas' trusted proxy), then ``compose up``; deploy waits
  until the balancer has every replica in rotation. A failed start removes everything it created.
- **redeploy** over a running stack is a rolling update behind the balancer: the new replicas start beside
  the old ones (``up --no-recreate --scale server=OLD+NEW``), each must be ready and in rotation, then the
  old ones are retired one at a time (SIGTERM: 503 on /health/ready for ``serving.drain_delay_s``, so the
  balancer stops routing there before the socket closes; in-flight requests finish). When the new replicas
  fail they are removed, the old ones never stopped serving, and the command fails with their logs.
- **stop** removes the stack's containers, volumes and network.

Jobs (``/v1/jobs``, ``/batch_predict``): every replica mounts one ``jobs`` volume as its jobs directory, so
any replica answers for any job. With ``deploy.workers: N`` (``--workers N``) the stack also runs N
``prodai worker`` containers of the same image on that volume, and the replicas hand their jobs to them
through Celery on the stack's Redis (database 1; the cache and rate limits use 0) instead of running them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.deploy import balancer, records, services
from prodai_cli.deploy import containers as engine
from prodai_cli.deploy.balancer import trusted_networks
from prodai_cli.deploy.containers import BuiltImage
from prodai_cli.deploy.outcome import DeployResult, Progress, display_host, files_record, write_files
from prodai_cli.deploy.plan import CONTAINER_JOBS_DIR, CONTAINER_PORT, DeployPlan, worker_environment
from prodai_cli.deploy.readiness import NotReady, wait_ready
from prodai_cli.deploy.records import DeploymentRecord
from prodai_cli.deploy.targets.docker import config_mounts
from prodai_cli.deploy.templates import METRICS, render
from prodai_cli.errors import DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings


# The Celery broker of the workers: the stack's Redis, a database of its own.
JOBS_REDIS_URL = "redis://redis:6379/1"
# How long a stopped worker may finish its running job (Celery's warm shutdown) before it is killed.
WORKER_STOP_GRACE_S = 30


@dataclass(frozen=True)
class StackImages:
    """The images of the stack's other services (each the configured one, or a local build)."""

    balancer: str
    redis: str
    prometheus: str


def network_name(name: str) -> str:
    """The stack's network (created by prodai, so the replicas can trust its subnet before they start)."""
    return f"{name}_default"


def compose_files(
    plan: DeployPlan,
    *,
    image: str,
    port: int,
    project_dir: str | None,
    bind_host: str = "",
    images: StackImages | None = None,
    trusted_proxies: Sequence[str] = (),
    replicas: int | None = None,
    workers: int | None = None,
) -> dict[str, str]:
    """The compose stack's files, by relative path: docker-compose.yml, prometheus.yml, alerts.yml (+ Grafana).

    Args:
        plan: The deployment.
        image: The server image.
        port: The host port the balancer publishes.
        project_dir: The project directory mounted read-only into the replicas (None: the baked config).
        bind_host: The host address of that port ("" for all).
        images: The balancer, Redis and Prometheus images (default: the configured ones, as named).
        trusted_proxies: The networks whose X-Forwarded-For the replicas believe (the stack's subnet).
        replicas: Server replicas (default deploy.replicas).
        workers: Job worker containers (default deploy.workers; 0: the replicas run jobs themselves).

    """
    deploy_config = plan.settings.config.deploy
    serving = plan.settings.config.serving
    replicas = replicas or deploy_config.replicas
    workers = deploy_config.workers if workers is None else workers
    # The jobs directory is the shared volume; with workers, jobs go to them through the stack's Redis.
    jobs_environment = worker_environment(JOBS_REDIS_URL) if workers else {"PRODAI_JOBS__DIR": CONTAINER_JOBS_DIR}
    if images is None:
        images = StackImages(
            balancer=deploy_config.balancer_image or balancer.image_tag(plan.base_image),
            redis=deploy_config.redis_image,
            prometheus=deploy_config.prometheus_image,
        )
    # Room for the old and the new replicas side by side during a rolling update.
    slots = max(16, 2 * replicas + 2)
    haproxy = balancer.config_text(
        backend_port=CONTAINER_PORT, slots=slots, server_timeout_s=max(60, serving.request_timeout_s + 5)
    )
    files = {
        "docker-compose.yml": render(
            "docker-compose.yml.j2",
            project=plan.name,
            name=plan.name,
            image=image,
            replicas=replicas,
            workers=workers,
            jobs_environment=jobs_environment,
            jobs_dir=CONTAINER_JOBS_DIR,
            worker_stop_grace_s=WORKER_STOP_GRACE_S,
            config_file="prodai.yaml" if project_dir is None else Path(str(plan.settings.path)).name,
            environment=plan.environment,
            project_dir=project_dir,
            port_mapping=f"{bind_host + ':' if bind_host else ''}{port}:{balancer.LISTEN_PORT}",
            container_port=CONTAINER_PORT,
            restart_policy=deploy_config.restart_policy,
            gpu=plan.gpu,
            redis_image=images.redis,
            prometheus_image=images.prometheus,
            grafana=deploy_config.grafana,
            grafana_image=deploy_config.grafana_image,
            balancer_image=images.balancer,
            balancer_user=balancer.USER,
            # compose interpolates $VAR itself: $$ reaches the container's shell as $.
            balancer_command=[part.replace("$", "$$") for part in balancer.COMMAND],
            balancer_config_env=balancer.CONFIG_ENV,
            balancer_config=haproxy.replace("$", "$$"),
            stats_port=balancer.STATS_PORT,
            trusted_proxies=list(trusted_proxies),
            stop_grace_s=int(serving.drain_delay_s + serving.grace_period_s + 5),
            network=network_name(plan.name),
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


PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
SERVER_SERVICE = "server"
BALANCER_SERVICE = "lb"
WORKER_SERVICE = "worker"


def compose_command() -> list[str] | None:
    """``docker compose`` when the plugin is there, else ``docker-compose``, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _compose(command: list[str], name: str, compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "-p", name, "-f", str(compose_file), *args], capture_output=True, text=True, check=False
    )


def stack_containers(client: Any, name: str, service: str | None = None) -> list[Any]:
    """The containers of stack ``name`` (every state), optionally of one service, oldest first."""
    labels = [f"{PROJECT_LABEL}={name}"]
    if service is not None:
        labels.append(f"{SERVICE_LABEL}={service}")
    found = client.containers.list(all=True, filters={"label": labels})
    return sorted(found, key=lambda c: str(c.attrs.get("Created", "")))


def ensure_network(client: Any, name: str) -> list[str]:
    """Create (or reuse) the stack's network; returns the networks the replicas trust as their proxy.

    Raises:
        DeployError: The engine refused, or the network has no IPv4 subnet.

    """
    network = engine.ensure_network(client, network_name(name), name)
    if not network.subnet:
        raise DeployError(f"The network {network.name} has no IPv4 subnet")
    return trusted_networks(network.subnet, network.gateway)


def remove_stack(client: Any, name: str, directory: Path | None) -> list[str]:
    """Remove everything stack ``name`` created: containers (with anonymous volumes) and its network.

    ``compose down`` first (it also drops named volumes of the file), then whatever it missed by label:
    a ``compose up`` that failed half-way leaves containers compose may not know about.

    Returns:
        What was removed (``container NAME``, ``network NAME``).

    """
    from docker.errors import APIError, NotFound

    removed: list[str] = []
    command = compose_command()
    compose_file = directory / "docker-compose.yml" if directory is not None else None
    if command is not None and compose_file is not None and compose_file.is_file():
        _compose(command, name, compose_file, "down", "-v", "--remove-orphans", "--timeout", "30")
    for found in stack_containers(client, name):
        try:
            found.remove(v=True, force=True)
            removed.append(f"container {found.name}")
        except NotFound:
            continue
        except APIError as exc:
            raise DeployError(f"Removing container {found.name} failed: {exc.explanation or exc}") from None
    for volume in client.volumes.list(filters={"label": f"{PROJECT_LABEL}={name}"}):
        try:
            volume.remove(force=True)
            removed.append(f"volume {volume.name}")
        except NotFound:
            continue
        except APIError as exc:
            raise DeployError(f"Removing volume {volume.name} failed: {exc.explanation or exc}") from None
    network = network_name(name)
    for net in client.networks.list(names=[network]):
        labels = net.attrs.get("Labels") or {}
        ours = labels.get(engine.DEPLOYMENT_LABEL) == name or labels.get(PROJECT_LABEL) == name
        if net.name != network or not ours:
            continue
        try:
            net.remove()
            removed.append(f"network {net.name}")
        except NotFound:
            continue
        except APIError as exc:
            raise DeployError(f"Removing network {net.name} failed: {exc.explanation or exc}") from None
    return removed


def _address(found: Any, network: str) -> str:
    found.reload()
    return str(
        ((found.attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(network, {}).get("IPAddress") or ""
    )


def _host_port(found: Any, container_port: int) -> int | None:
    found.reload()
    bindings = ((found.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{container_port}/tcp") or []
    for binding in bindings:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def stats_url(client: Any, name: str) -> str:
    """The balancer's stats page on this host (loopback, an ephemeral port).

    Raises:
        DeployError: The stack has no running balancer.

    """
    for found in stack_containers(client, name, BALANCER_SERVICE):
        port = _host_port(found, balancer.STATS_PORT)
        if found.status == "running" and port is not None:
            return f"http://127.0.0.1:{port}"
    raise DeployError(f"The stack {name} has no running load balancer")


def _logs(client: Any, ids: Sequence[str], lines: int = 20) -> str:
    parts = []
    for ref in ids:
        found = engine.container(client, ref)
        label = found.name if found is not None else ref[:12]
        parts.append(f"--- {label}\n{engine.logs_tail(client, ref, lines) or '(no output)'}")
    return "\n".join(parts)


def stack_state(client: Any, record: DeploymentRecord) -> dict[str, Any]:
    """The live state of a compose deployment: ``state``, ``replicas_running`` and ``workers_running``."""
    running = [c for c in stack_containers(client, record.name, SERVER_SERVICE) if c.status == "running"]
    workers = [c for c in stack_containers(client, record.name, WORKER_SERVICE) if c.status == "running"]
    state = record.status
    if record.status == "running" and not running:
        state = "missing"
    return {"state": state, "replicas_running": len(running), "workers_running": len(workers)}


def stack_logs(client: Any, name: str, lines: int = 100) -> str:
    """The last ``lines`` log lines of every server replica, job worker and the balancer of stack ``name``.

    Raises:
        DeployError: The stack has no containers.

    """
    found = [
        *stack_containers(client, name, SERVER_SERVICE),
        *stack_containers(client, name, WORKER_SERVICE),
        *stack_containers(client, name, BALANCER_SERVICE),
    ]
    if not found:
        raise DeployError(f"The stack {name} has no containers", hint=f"Start it: prodai deploy --name {name}")
    return _logs(client, [c.id for c in found], lines)


def wait_in_rotation(client: Any, name: str, ids: Sequence[str], timeout_s: float) -> float:
    """Wait until the balancer routes to every replica in ``ids`` (its check on /health/ready passed).

    Fails at once when one of them exits or restarts (a model that cannot load).

    Returns:
        Seconds waited.

    Raises:
        NotReady: Not in rotation in time, or a replica died (``died``); the message carries their logs.

    """
    network = network_name(name)
    start = time.monotonic()
    seen: list[balancer.ReplicaState] = []
    while True:
        addresses = set()
        for ref in ids:
            found = engine.container(client, ref)
            if found is None:
                raise NotReady(f"The replica {ref[:12]} disappeared while starting", died=True)
            state = found.attrs.get("State", {})
            if state.get("Status") in {"exited", "dead"} or state.get("Restarting") or found.attrs.get("RestartCount"):
                raise NotReady(
                    f"The replica {found.name} stopped while starting (exit code {state.get('ExitCode')}). "
                    "The new replicas' last log lines:\n" + _logs(client, ids),
                    died=True,
                )
            addresses.add(_address(found, network))
        try:
            seen = balancer.replica_states(stats_url(client, name))
        except DeployError:
            seen = []
        if "" not in addresses and addresses <= balancer.in_rotation_ips(seen):  # checked, not just named by DNS
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            states = ", ".join(f"{s.address} {s.status}" for s in seen) or "no replicas"
            raise NotReady(
                f"The balancer did not take the new replicas into rotation within {timeout_s:g}s "
                f"(it sees: {states}). Their last log lines:\n" + _logs(client, ids),
                hint="Raise deploy.readiness_timeout_s for a large model",
            )
        time.sleep(0.25)


def retire(client: Any, name: str, ids: Sequence[str], *, drain_s: float, stop_timeout_s: float) -> None:
    """Retire replicas one at a time: SIGTERM, out of rotation, exit (in-flight requests finish), remove."""
    from docker.errors import APIError, NotFound

    network = network_name(name)
    try:
        url: str | None = stats_url(client, name)
    except DeployError:
        url = None
    for ref in ids:
        found = engine.container(client, ref)
        if found is None:
            continue
        address = _address(found, network)
        try:
            # Without this, Docker would restart a container that exits on our SIGTERM (unless-stopped).
            found.update(restart_policy={"Name": "no"})
            found.kill(signal="SIGTERM")
        except (APIError, NotFound):
            engine.remove_container(client, ref)
            continue
        if url is not None and address:
            balancer.wait_out_of_rotation(url, {address}, timeout_s=drain_s + 5)
        # The SDK raises a transport timeout past the grace period: then remove_container kills it.
        with contextlib.suppress(Exception):
            found.wait(timeout=stop_timeout_s)
        engine.remove_container(client, ref, timeout_s=1)


def _attempt_record(plan: DeployPlan, directory: Path, url: str, port: int) -> DeploymentRecord:
    record = files_record(plan, None, "compose", url, directory)
    record.status = "starting"
    record.port = port
    return record


def deploy_compose(
    settings: Settings,
    plan: DeployPlan,
    image: BuiltImage | None,
    context_dir: Path | None,
    *,
    port: int | None,
    progress: Progress | None = None,
) -> DeployResult:
    """Start the stack, or roll a running one over to ``plan`` behind its balancer.

    Raises:
        DeployError: compose failed or the replicas did not get ready; a fresh stack is removed again, a
            rolling update removes only its new replicas (the old ones keep serving).

    """
    say = progress or (lambda _line: None)
    deploy_config = settings.config.deploy
    host_port = port or deploy_config.port
    project_dir = str(settings.path.parent) if settings.path is not None else None
    if settings.path is not None:
        config_mounts(settings)  # the same readability check as the docker target
    directory = settings.state_dir / "compose" / plan.name
    compose_file = directory / "docker-compose.yml"
    bind_host = "" if deploy_config.host in {"", "0.0.0.0"} else deploy_config.host
    command = compose_command()
    if command is None:
        files = compose_files(plan, image=plan.tag, port=host_port, project_dir=project_dir, bind_host=bind_host)
        write_files(directory, files)
        raise DeployError(
            f"Wrote the stack to {directory}, but neither `docker compose` nor `docker-compose` is installed",
            hint="Install the compose plugin (or docker-compose) and run: "
            f"docker compose -p {plan.name} -f {compose_file} up -d",
        )
    client = engine.docker_client()
    url = f"http://{display_host(deploy_config.host)}:{host_port}"
    before = records.load(settings, plan.name)
    old = [
        c.id
        for c in stack_containers(client, plan.name, SERVER_SERVICE)
        if c.status in {"running", "restarting"} and before is not None and before.target == "compose"
    ]
    # A redeploy keeps the running number of replicas unless --replicas or deploy.replicas says otherwise.
    explicit = "replicas" in deploy_config.model_fields_set
    replicas = deploy_config.replicas if explicit or not old else len(old)
    # The same for job workers: a redeploy keeps as many as run unless --workers or deploy.workers says.
    running_workers = [c for c in stack_containers(client, plan.name, WORKER_SERVICE) if c.status == "running"]
    explicit_workers = "workers" in deploy_config.model_fields_set
    workers = deploy_config.workers if explicit_workers or not old else len(running_workers)
    if not old:
        # Written before anything is created: whatever fails below, `deploy stop NAME` finds the stack.
        records.save(settings, _attempt_record(plan, directory, url, host_port))
    images = StackImages(
        balancer=balancer.ensure_image(
            client, base_image=plan.base_image, image=deploy_config.balancer_image, progress=say
        ),
        redis=services.resolve_image(
            client,
            services.REDIS,
            deploy_config.redis_image,
            base_image=plan.base_image,
            offline=deploy_config.offline,
            progress=say,
        ),
        prometheus=services.resolve_image(
            client,
            services.PROMETHEUS,
            deploy_config.prometheus_image,
            base_image=plan.base_image,
            offline=deploy_config.offline,
            progress=say,
        ),
    )
    if old:
        waited = _rolling_update(
            settings, plan, client, command, directory, old, (replicas, workers), images, host_port, bind_host
        )
    else:
        waited = _fresh_start(
            settings, plan, client, command, directory, (replicas, workers), images, host_port, bind_host
        )
    record = files_record(plan, image, "compose", url, directory)
    record.port = host_port
    record.run = {"replicas": replicas, "workers": workers, "network": network_name(plan.name)}
    if before is not None and old:
        record.previous_image = before.image_id
    records.save(settings, record)
    steps = [
        f"{' '.join(command)} -p {plan.name} -f {compose_file} ps",
        f"Balancer stats: {stats_url(client, plan.name)}/stats",
    ]
    for found in stack_containers(client, plan.name, "prometheus"):
        prometheus_port = _host_port(found, 9090)
        if prometheus_port is not None:
            steps.append(f"Prometheus: http://127.0.0.1:{prometheus_port}")
    return DeployResult(
        record,
        plan,
        context_dir,
        image,
        ready_after_s=waited,
        files=[str(p) for p in sorted(directory.rglob("*")) if p.is_file()],
        started=True,
        next_steps=steps,
    )


def _write_stack(
    plan: DeployPlan,
    directory: Path,
    counts: tuple[int, int],
    images: StackImages,
    trusted: list[str],
    host_port: int,
    bind_host: str,
) -> dict[str, str]:
    project_dir = str(plan.settings.path.parent) if plan.settings.path is not None else None
    files = compose_files(
        plan,
        image=plan.tag,
        port=host_port,
        project_dir=project_dir,
        bind_host=bind_host,
        images=images,
        # The user's own proxies (in front of this host) stay trusted: the env replaces the config's list.
        trusted_proxies=list(dict.fromkeys([*plan.settings.config.rate_limit.trusted_proxies, *trusted])),
        replicas=counts[0],
        workers=counts[1],
    )
    write_files(directory, files)
    for relative in files:
        # Prometheus and Grafana run as their own users: the mounted files must be readable by them.
        (directory / relative).chmod(0o644)
    return files


def _fresh_start(
    settings: Settings,
    plan: DeployPlan,
    client: Any,
    command: list[str],
    directory: Path,
    counts: tuple[int, int],
    images: StackImages,
    host_port: int,
    bind_host: str,
) -> float:
    deploy_config = settings.config.deploy
    compose_file = directory / "docker-compose.yml"
    replicas, workers = counts
    scale = ["--scale", f"{SERVER_SERVICE}={replicas}"]
    if workers:
        scale += ["--scale", f"{WORKER_SERVICE}={workers}"]
    try:
        trusted = ensure_network(client, plan.name)
        _write_stack(plan, directory, counts, images, trusted, host_port, bind_host)
        up = _compose(command, plan.name, compose_file, "up", "-d", *scale)
        if up.returncode != 0:
            raise DeployError(f"`compose up` of {plan.name} failed:\n{(up.stderr or up.stdout).strip()[-2000:]}")
        ids = [c.id for c in stack_containers(client, plan.name, SERVER_SERVICE)]
        waited = wait_in_rotation(client, plan.name, ids, deploy_config.readiness_timeout_s)
        url = f"http://{display_host(deploy_config.host)}:{host_port}"
        waited += wait_ready(url, deploy_config.readiness_timeout_s)
    except DeployError as exc:
        removed = remove_stack(client, plan.name, directory)
        record = records.load(settings, plan.name)
        if record is not None:
            record.status = "failed"
            records.save(settings, record)
        exc.message += f"\nRemoved what the failed start created ({len(removed)} containers and networks)."
        raise
    return waited


def _rolling_update(
    settings: Settings,
    plan: DeployPlan,
    client: Any,
    command: list[str],
    directory: Path,
    old: list[str],
    counts: tuple[int, int],
    images: StackImages,
    host_port: int,
    bind_host: str,
) -> float:
    deploy_config = settings.config.deploy
    serving = settings.config.serving
    compose_file = directory / "docker-compose.yml"
    replicas, workers = counts
    previous = {
        p.relative_to(directory).as_posix(): p.read_text(encoding="utf-8") for p in directory.rglob("*") if p.is_file()
    }
    trusted = ensure_network(client, plan.name)
    _write_stack(plan, directory, counts, images, trusted, host_port, bind_host)
    total = len(old) + replicas
    up = _compose(command, plan.name, compose_file, "up", "-d", "--no-recreate", "--scale", f"{SERVER_SERVICE}={total}")
    new = [c.id for c in stack_containers(client, plan.name, SERVER_SERVICE) if c.id not in old]
    try:
        if up.returncode != 0:
            raise DeployError(f"`compose up` of the new replicas failed:\n{(up.stderr or up.stdout).strip()[-2000:]}")
        if len(new) != replicas:
            raise DeployError(f"compose started {len(new)} new replicas, not {replicas}")
        waited = wait_in_rotation(client, plan.name, new, deploy_config.readiness_timeout_s)
    except DeployError as exc:
        for ref in new:
            engine.remove_container(client, ref, timeout_s=1)
        # The file describes what runs: the old replicas.
        write_files(directory, previous)
        exc.message += f"\nRemoved the {len(new)} new replicas; the {len(old)} running ones keep serving."
        raise
    retire(
        client,
        plan.name,
        old,
        drain_s=serving.drain_delay_s,
        stop_timeout_s=serving.drain_delay_s + serving.grace_period_s + 5,
    )
    _update_workers(client, command, plan.name, compose_file, workers)
    return waited


def _update_workers(client: Any, command: list[str], name: str, compose_file: Path, workers: int) -> None:
    """Put the job workers on the new image once the new servers serve (a running job resumes on a new one).

    Raises:
        DeployError: compose could not start them (the servers are updated and serve).

    """
    if workers:
        # compose recreates the workers whose image or settings changed (warm shutdown first).
        up = _compose(
            command,
            name,
            compose_file,
            "up",
            "-d",
            "--no-deps",
            "--scale",
            f"{WORKER_SERVICE}={workers}",
            WORKER_SERVICE,
        )
        if up.returncode != 0:
            raise DeployError(f"`compose up` of the job workers failed:\n{(up.stderr or up.stdout).strip()[-2000:]}")
        return
    for found in stack_containers(client, name, WORKER_SERVICE):  # workers no longer wanted
        engine.remove_container(client, found.id, timeout_s=WORKER_STOP_GRACE_S)


def stop_compose(settings: Settings, record: DeploymentRecord) -> list[str]:
    """Remove everything the compose deployment ``record`` created; returns what was removed."""
    client = engine.docker_client()
    return remove_stack(client, record.name, Path(record.files_dir) if record.files_dir else None)
