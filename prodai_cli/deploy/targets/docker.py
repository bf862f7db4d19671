"""The docker target: the server in one container on a host port, and its rollback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.deploy import containers as engine
from prodai_cli.deploy import records, secrets
from prodai_cli.deploy.outcome import DeployResult, Progress, display_host, record_or_error
from prodai_cli.deploy.plan import CONTAINER_PORT, DeployPlan
from prodai_cli.deploy.records import DeploymentRecord
from prodai_cli.errors import DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings


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
        DeployError: Only root could read the config, and gid 10001 has members on this host (deploy/secrets.py).

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
    # Private (0600) files stay private: run as their owner, or for root's give them the container's group.
    return mounts, environment, secrets.container_access(settings).user


def deploy_docker(
    settings: Settings,
    plan: DeployPlan,
    client: Any,
    image: engine.BuiltImage,
    context_dir: Path | None,
    *,
    port: int | None,
    progress: Progress | None,
) -> DeployResult:
    """Run the built image as the deployment's container and wait until it is ready."""
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
    url = f"http://{display_host(spec.host)}:{host_port}"
    say(f"Starting {plan.name} on {url}")
    container_id = engine.run_container(client, spec)
    try:
        waited = engine.wait_ready(client, container_id, url, deploy_config.readiness_timeout_s)
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
        engine.wait_ready(client, container_id, before.url, timeout_s)
    except (DeployError, TypeError):
        return False
    return True


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
    record = record_or_error(settings, name)
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
        engine.wait_ready(client, container_id, record.url, timeout_s)
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
