"""A deployment's life cycle: deploy to a target, then status, logs, stop and rollback from its record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.deploy import containers as engine
from prodai_cli.deploy import records
from prodai_cli.deploy.outcome import DeployResult, Progress, record_or_error
from prodai_cli.deploy.plan import plan_deployment
from prodai_cli.deploy.records import DeploymentRecord
from prodai_cli.deploy.targets import TARGETS, compose, docker, k8s
from prodai_cli.errors import DeployError, UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings


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
    if settings.config.deploy.workers:
        if target == "k8s":
            k8s.require_worker_redis(settings)  # before a build that would be wasted
        elif target == "docker":
            plan.warnings.append("deploy.workers applies to the compose and k8s targets; the docker target runs none")
    image: engine.BuiltImage | None = None
    context_dir: Path | None = None
    needs_engine = build or target != "k8s"
    client = engine.docker_client() if needs_engine else None
    if build:
        from prodai_cli.deploy.build_context import assemble

        context = assemble(plan, progress=progress)
        context_dir = context.directory
        say(f"Building {plan.tag} (network disabled)")
        image = _build(settings, client, context.directory, plan.tag, progress)
    elif client is not None:
        image = engine.image_info(client, plan.tag)
        if image is None:
            raise DeployError(f"--no-build, but the engine has no image {plan.tag}", hint="Drop --no-build")
    if target == "docker":
        assert image is not None
        return docker.deploy_docker(settings, plan, client, image, context_dir, port=port, progress=progress)
    if target == "compose":
        return compose.deploy_compose(settings, plan, image, context_dir, port=port, progress=progress)
    return k8s.deploy_k8s(settings, plan, image, context_dir)


def _build(settings: Settings, client: Any, directory: Path, tag: str, progress: Progress | None) -> engine.BuiltImage:
    """Build ``tag`` leaving no dangling image behind.

    The build stage is tagged ``prodai-build-stage:<tag>`` (it is the layer cache of the next build, and a
    tagged image is not dangling); an image the new build displaced from ``tag`` or from that stage tag is
    deleted unless a container or a deployment record still uses it.
    """
    stage_tag = f"{engine.BUILD_STAGE_REPOSITORY}:{engine.tag_safe(tag)}"
    displaced = [found for found in (engine.image_info(client, tag), engine.image_info(client, stage_tag)) if found]
    engine.build_image(client, directory, stage_tag, network_mode="none", progress=progress, target="build")
    image = engine.build_image(client, directory, tag, network_mode="none", progress=progress)
    kept = {image.id, getattr(engine.image_info(client, stage_tag), "id", "")}
    for record in records.list_records(settings):
        kept.update(i for i in (record.image_id, record.previous_image) if i)
    for old in displaced:
        if old.id not in kept:
            engine.remove_image_if_unused(client, old.id)
    return image


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
    client = engine.docker_client() if any(r.target in {"docker", "compose"} for r in found) else None
    out = []
    for record in found:
        entry = record.to_dict()
        entry.pop("run", None)
        entry.pop("previous_run", None)
        if client is not None and record.target == "docker" and record.replicas:
            live_states = [getattr(engine.container(client, cid), "status", "missing") for cid in record.replicas]
            entry["replicas_running"] = sum(1 for s in live_states if s == "running")
            if record.balancer:
                entry["balancer_state"] = getattr(engine.container(client, record.balancer), "status", "missing")
        if client is not None and record.target == "docker" and record.container_id:
            live = engine.container(client, record.container_id)
            if live is None:
                entry["state"] = "missing"
            else:
                state = live.attrs.get("State", {})
                entry["state"] = state.get("Status")
                entry["health"] = (state.get("Health") or {}).get("Status")
                entry["started_at"] = state.get("StartedAt")
        elif client is not None and record.target == "compose":
            entry.update(compose.stack_state(client, record))
        else:
            entry["state"] = record.status
        out.append(entry)
    return out


def logs(settings: Settings, name: str, *, lines: int = 100) -> str:
    """The last ``lines`` log lines of a docker deployment's container."""
    record = record_or_error(settings, name)
    client = engine.docker_client()
    if record.target == "compose":
        return compose.stack_logs(client, record.name, lines)
    ref = record.container_id or record.name
    if engine.container(client, ref) is None:
        raise DeployError(f"The container of {name} is gone ({record.status})")
    return engine.logs_tail(client, ref, lines)


def follow_logs(settings: Settings, name: str, *, lines: int = 100) -> Iterator[str]:
    """Stream a container's log lines as they come (until it stops or the caller interrupts)."""
    record = record_or_error(settings, name)
    client = engine.docker_client()
    found = engine.container(client, record.container_id or record.name)
    if found is None:
        raise DeployError(f"The container of {name} is gone ({record.status})")
    for chunk in found.logs(stream=True, follow=True, tail=lines):
        yield bytes(chunk).decode("utf-8", errors="replace")


def stop(settings: Settings, name: str) -> DeploymentRecord:
    """Stop and remove a deployment's container (docker) or stack (compose); the record stays for rollback."""
    record = record_or_error(settings, name)
    if record.target == "docker":
        docker.stop(settings, record)
    elif record.target == "compose":
        # Containers, anonymous volumes and the network, also of a start that failed half-way.
        compose.stop_compose(settings, record)
    else:
        raise DeployError(
            "prodai does not stop Kubernetes deployments itself",
            hint=f"kubectl delete -f {record.files_dir}",
        )
    record.status = "stopped"
    record.container_id = None
    record.replicas = []
    records.save(settings, record)
    return record


def rollback(settings: Settings, name: str, *, progress: Progress | None = None) -> DeploymentRecord:
    """Roll the previous image of a deployment out again, exactly as it ran (:func:`targets.docker.rollback`)."""
    return docker.rollback(settings, name, progress=progress)
