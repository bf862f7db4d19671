"""The compose target: a one-host stack (server replicas, Redis, Prometheus, optional Grafana)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from prodai_cli.deploy import records
from prodai_cli.deploy.containers import BuiltImage
from prodai_cli.deploy.outcome import DeployResult, display_host, files_record, write_files
from prodai_cli.deploy.plan import CONTAINER_PORT, DeployPlan
from prodai_cli.deploy.readiness import wait_ready
from prodai_cli.deploy.targets.docker import config_mounts
from prodai_cli.deploy.templates import METRICS, render
from prodai_cli.errors import DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings


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


def deploy_compose(
    settings: Settings, plan: DeployPlan, image: BuiltImage | None, context_dir: Path | None, *, port: int | None
) -> DeployResult:
    """Write the stack's files, ``compose up`` it and wait until every replica is ready."""
    deploy_config = settings.config.deploy
    host_port = port or deploy_config.port
    project_dir = str(settings.path.parent) if settings.path is not None else None
    if settings.path is not None:
        config_mounts(settings)  # the same readability check as the docker target
    directory = settings.state_dir / "compose" / plan.name
    bind_host = "" if deploy_config.host in {"", "0.0.0.0"} else deploy_config.host
    files = compose_files(plan, image=plan.tag, port=host_port, project_dir=project_dir, bind_host=bind_host)
    written = write_files(directory, files)
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
    shown_host = display_host(deploy_config.host)
    url = f"http://{shown_host}:{host_port}"
    replica_urls = [f"http://{shown_host}:{host_port + i}" for i in range(deploy_config.replicas)]
    try:
        waited = wait_ready(replica_urls, deploy_config.readiness_timeout_s)
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
    record = files_record(plan, image, "compose", url, directory)
    records.save(settings, record)
    steps = [
        f"{' '.join(command)} -p {plan.name} -f {directory / 'docker-compose.yml'} ps",
        "Prometheus: http://127.0.0.1:9090",
    ]
    return DeployResult(
        record, plan, context_dir, image, ready_after_s=waited, files=written, started=True, next_steps=steps
    )
