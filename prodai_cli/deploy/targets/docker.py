"""The docker target: server replicas behind a load balancer on one host port; redeploy and rollback.

The layout of deployment NAME: a user network ``NAME-net``; server containers ``NAME-<hex>`` on it, each
with the network alias ``server`` (and its port on an ephemeral loopback port, for prodai's own checks);
the balancer ``NAME-lb`` (HAProxy, :mod:`prodai_cli.deploy.balancer`) publishing ``deploy.host:port``.

Every change of a running deployment (redeploy, rollback, ship's promotion) is the same roll-out: start
the new replicas, wait until each is ready and answers a real prediction, wait until the balancer sends
them traffic, and only then stop the old ones (SIGTERM: a replica answers 503 on /health/ready for
``serving.drain_delay_s`` while it still serves, so the balancer stops routing to it before its socket
closes). If the new replicas fail, they are removed and the old ones never stopped serving.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any

from prodai_cli.deploy import balancer, readiness, records, secrets
from prodai_cli.deploy import containers as engine
from prodai_cli.deploy.outcome import DeployResult, Progress, display_host, record_or_error
from prodai_cli.deploy.plan import CONTAINER_JOBS_DIR, CONTAINER_PORT, DeployPlan
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


ROLE_SERVER = "server"
ROLE_BALANCER = "balancer"
ROLLBACK_REPOSITORY = "prodai-rollback"
PROBE_TEXT = "prodai deploy readiness probe"
KEY_ACCEPT_WAIT_S = 5.0


def balancer_name(name: str) -> str:
    """The balancer container of deployment ``name``."""
    return f"{name}-lb"


def network_name(name: str) -> str:
    """The user network of deployment ``name``."""
    return f"{name}-net"


def jobs_volume_name(name: str) -> str:
    """The named volume every server replica of deployment ``name`` keeps its jobs in."""
    return f"{name}-jobs"


def server_spec(settings: Settings, plan: DeployPlan, image: engine.BuiltImage) -> engine.RunSpec:
    """What a server replica of ``plan`` runs (image, env, mounts, user); placement is added at start.

    The replicas run jobs themselves (the embedded backend) in one named volume they all mount, so a job
    accepted by one replica is answered for by any other behind the balancer, and survives a redeploy; a new
    volume takes the owner of the image's directory it covers, the image's non-root user.
    """
    deploy_config = settings.config.deploy
    mounts, environment, user = config_mounts(settings)
    mounts = [*mounts, {"type": "volume", "source": jobs_volume_name(plan.name), "target": CONTAINER_JOBS_DIR}]
    environment = {"PRODAI_JOBS__DIR": CONTAINER_JOBS_DIR, **environment}
    return engine.RunSpec(
        name=plan.name,
        image=image.id,
        host="127.0.0.1",
        port=None,
        container_port=CONTAINER_PORT,
        environment={**plan.environment, **environment},
        mounts=mounts,
        restart_policy=deploy_config.restart_policy,
        gpu=plan.gpu,
        user=user,
        labels={"prodai.model": plan.model, "prodai.serving-version": str(plan.version)},
    )


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
    """Roll the built image out as deployment ``plan.name`` (new replicas ready before old ones stop).

    Raises:
        DeployError: The new replicas did not become ready or failed the probe (the old ones keep serving;
            the message ends with the new container's log lines).

    """
    say = progress or (lambda _line: None)
    deploy_config = settings.config.deploy
    host_port = port or deploy_config.port
    spec = server_spec(settings, plan, image)
    before = records.load(settings, plan.name)
    url = f"http://{display_host(deploy_config.host)}:{host_port}"
    rolled = roll_out(
        settings,
        client,
        name=plan.name,
        spec=spec,
        host=deploy_config.host,
        port=host_port,
        replicas=deploy_config.replicas,
        expected_versions=set(plan.versions),
        say=say,
    )
    previous_id = before.image_id if before is not None and before.image_id != image.id else None
    record = DeploymentRecord(
        name=plan.name,
        url=url,
        model=plan.model,
        version=plan.version,
        target="docker",
        image=plan.tag,
        container_id=rolled.replicas[0],
        previous_image=previous_id or (before.previous_image if before else None),
        created=records.now_iso(),
        image_id=image.id,
        versions=plan.versions,
        port=host_port,
        config_hash=plan.config_hash,
        image_size_bytes=image.size_bytes,
        run=spec.to_dict(),
        previous_run=_previous_run(before, image.id),
        replicas=rolled.replicas,
        balancer=rolled.balancer,
        stats_url=rolled.stats_url,
        network=rolled.network,
    )
    records.save(settings, record)
    _keep_rollback_image(client, record, before)
    steps = [
        *predict_hint(settings, url),
        f"prodai deploy logs {plan.name}",
        f"prodai loadtest --url {url}",
    ]
    return DeployResult(record, plan, context_dir, image, ready_after_s=rolled.waited_s, started=True, next_steps=steps)


@dataclass(frozen=True)
class RolledOut:
    """What :func:`roll_out` started."""

    replicas: list[str]
    balancer: str
    stats_url: str
    network: str
    waited_s: float


def roll_out(
    settings: Settings,
    client: Any,
    *,
    name: str,
    spec: engine.RunSpec,
    host: str,
    port: int,
    replicas: int,
    expected_versions: set[int],
    say: Progress,
) -> RolledOut:
    """Start ``replicas`` new servers from ``spec`` behind the balancer, then retire the old ones.

    Raises:
        DeployError: A new replica did not become ready, failed the prediction probe, or the balancer did
            not take it; the new replicas are removed and the old ones keep serving.

    """
    deploy_config = settings.config.deploy
    timeout_s = deploy_config.readiness_timeout_s
    started = time.monotonic()
    net = engine.ensure_network(client, network_name(name), name)
    network = net.name
    old = engine.deployment_containers(client, name, ROLE_SERVER)
    legacy = _legacy_container(client, name)
    new_ids: list[str] = []
    try:
        for _ in range(replicas):
            placed = _placed(settings, spec, name, net)
            say(f"Starting replica {placed.name}")
            new_ids.append(engine.run_container(client, placed))
        for container_id in new_ids:
            direct = f"http://127.0.0.1:{engine.published_port(client, container_id, CONTAINER_PORT)}"
            engine.wait_ready(client, container_id, direct, timeout_s)
            say(f"Replica {container_id[:12]} is ready; sending a real prediction")
            _probe(settings, client, container_id, direct, expected_versions)
            # Only a ready replica joins the network under the balancer's alias: HAProxy takes a server its
            # DNS just named as UP before the first check, so a loading one would get traffic.
            engine.join_network(client, container_id, network, aliases=[balancer.BACKEND_ALIAS])
        lb, stats_url = _ensure_balancer(settings, client, name, network, host, port, legacy, say)
        addresses = {engine.container_address(client, cid, network) or "" for cid in new_ids}
        say("Waiting until the load balancer sends the new replicas traffic")
        balancer.wait_in_rotation(stats_url, addresses, min(timeout_s, 60.0))
    except DeployError:
        for container_id in new_ids:
            engine.remove_container(client, container_id, timeout_s=5)
        if not old and legacy is None:
            # Nothing ran before: leave nothing behind either.
            engine.remove_container(client, balancer_name(name), timeout_s=5)
            engine.remove_network(client, network)
            engine.remove_volume(client, jobs_volume_name(name))
        raise
    drain_s = int(settings.config.serving.drain_delay_s + settings.config.serving.grace_period_s + 5)
    for container in old:
        if container.id in new_ids:
            continue
        say(f"Retiring {container.name} (it drains for serving.drain_delay_s first)")
        engine.remove_container(client, container.id, timeout_s=drain_s)
    return RolledOut(new_ids, lb, stats_url, network, time.monotonic() - started)


def _placed(settings: Settings, spec: engine.RunSpec, name: str, net: engine.Network) -> engine.RunSpec:
    """``spec`` as replica of ``name``: its own container name, on the network, trusting the balancer."""
    environment = dict(spec.environment)
    if net.subnet:
        # The balancer is the replicas' proxy: trust its X-Forwarded-For (it drops the client's own), so
        # per-IP limits and logs see the client it saw. Trusted: the network without its gateway, through
        # which the host forwards traffic (so a process on the host that reaches a replica is never believed).
        trusted = [*settings.config.rate_limit.trusted_proxies, *balancer.trusted_networks(net.subnet, net.gateway)]
        environment["PRODAI_RATE_LIMIT__TRUSTED_PROXIES"] = json.dumps(list(dict.fromkeys(trusted)))
    labels = {**spec.labels, engine.DEPLOYMENT_LABEL: name, engine.ROLE_LABEL: ROLE_SERVER}
    return engine.RunSpec.from_dict(
        {
            **spec.to_dict(),
            "name": f"{name}-{token_hex(3)}",
            "host": "127.0.0.1",
            "port": None,
            "environment": environment,
            "labels": labels,
            "network": None,
            "aliases": [],
        }
    )


def _legacy_container(client: Any, name: str) -> Any | None:
    """A server container of a deployment made before the balancer (it runs as NAME on the port)."""
    found = engine.container(client, name)
    if found is None or found.labels.get(engine.ROLE_LABEL):
        return None
    return found


def _ensure_balancer(
    settings: Settings, client: Any, name: str, network: str, host: str, port: int, legacy: Any | None, say: Progress
) -> tuple[str, str]:
    """The running balancer of ``name`` on ``host:port`` (started, or replaced when its port changed)."""
    deploy_config = settings.config.deploy
    image = balancer.ensure_image(
        client, base_image=deploy_config.base_image, image=deploy_config.balancer_image, progress=say
    )
    lb_name = balancer_name(name)
    found = engine.container(client, lb_name)
    if found is not None:
        bound = engine.published_port(client, lb_name, balancer.LISTEN_PORT)
        wanted = engine.image_info(client, image)
        if found.status == "running" and bound == port and wanted is not None and found.image.id == wanted.id:
            return lb_name, _stats_url(client, lb_name)
        say(f"Replacing the load balancer {lb_name} (its port or image changed)")
        engine.remove_container(client, lb_name, timeout_s=5)
    if legacy is not None:
        # Deployed before prodai had a balancer: its container holds the port, so this one switch-over
        # has a gap of about a second.
        say(f"Retiring {legacy.name}, deployed before the load balancer")
        engine.remove_container(client, legacy.id, timeout_s=10)
    serving = settings.config.serving
    spec = engine.RunSpec(
        name=lb_name,
        image=image,
        host=host,
        port=port,
        container_port=balancer.LISTEN_PORT,
        environment={
            balancer.CONFIG_ENV: balancer.config_text(
                backend_port=CONTAINER_PORT,
                slots=max(16, 2 * deploy_config.replicas),
                request_timeout_s=serving.request_read_timeout_s,
                server_timeout_s=max(60.0, serving.grace_period_s + 30),
            )
        },
        restart_policy=deploy_config.restart_policy,
        labels={engine.DEPLOYMENT_LABEL: name, engine.ROLE_LABEL: ROLE_BALANCER},
        network=network,
        command=balancer.COMMAND,
        extra_ports={str(balancer.STATS_PORT): ["127.0.0.1", None]},
    )
    say(f"Starting the load balancer {lb_name} on {host}:{port}")
    engine.run_container(client, spec)
    stats_url = _stats_url(client, lb_name)
    public = f"http://{display_host(host)}:{port}"
    try:
        readiness.wait_ready(public, 30.0)
    except readiness.NotReady as exc:
        raise DeployError(
            f"The load balancer did not answer: {exc.message}\n" + engine.logs_tail(client, lb_name)
        ) from None
    return lb_name, stats_url


def _stats_url(client: Any, lb_name: str) -> str:
    return f"http://127.0.0.1:{engine.published_port(client, lb_name, balancer.STATS_PORT)}"


def _probe(settings: Settings, client: Any, container_id: str, url: str, expected_versions: set[int]) -> None:
    """Send the new replica one real prediction; a 5xx, an error or a version it should not serve fails it.

    ``expected_versions`` are the versions the image holds (A/B routing, live, picks among them).

    With auth on (the default) a temporary key is created in the project's keys (the replica reads them
    live) and deleted after; where none can reach the replica, /health/ready (a warmed model) must do.
    """
    import httpx

    from prodai_cli.errors import ProdaiError

    headers: dict[str, str] = {}
    created_name: str | None = None
    auth = settings.config.auth
    if auth.enabled:
        if settings.path is None:
            return
        from prodai_cli.keys import create_key

        created_name = f"prodai-deploy-probe-{token_hex(4)}"
        try:
            headers[auth.header] = create_key(settings, created_name, ["predict"], expires_days=1).key
        except ProdaiError:
            return
    try:
        deadline = time.monotonic() + KEY_ACCEPT_WAIT_S
        while True:
            try:
                response = httpx.post(f"{url}/predict", json={"text": PROBE_TEXT}, headers=headers, timeout=30)
            except httpx.HTTPError as exc:
                raise DeployError(
                    f"The new replica did not answer a prediction ({type(exc).__name__}). Its last log lines:\n"
                    + engine.logs_tail(client, container_id)
                ) from None
            if response.status_code == 401 and created_name and time.monotonic() < deadline:
                time.sleep(0.25)  # the replica re-reads the keys file at most once a second
                continue
            break
        if response.status_code >= 500:
            raise DeployError(
                f"The new replica answered a prediction with HTTP {response.status_code}: {response.text[:300]}. "
                "Its last log lines:\n" + engine.logs_tail(client, container_id)
            )
        answered = response.headers.get("x-model-version")
        allowed = {str(v) for v in expected_versions}
        if response.status_code == 200 and allowed and answered is not None and answered not in allowed:
            raise DeployError(
                f"The new replica answered with version {answered}; its image holds {', '.join(sorted(allowed))}"
            )
    finally:
        if created_name is not None:
            from prodai_cli.keys import delete_key

            with contextlib.suppress(ProdaiError):
                delete_key(settings, created_name)


def _keep_rollback_image(client: Any, record: DeploymentRecord, before: DeploymentRecord | None) -> None:
    """Tag the image a rollback would run (never a dangling image); drop the one it replaces as target."""
    tag = record.name.lower()[:128]
    displaced = engine.image_info(client, f"{ROLLBACK_REPOSITORY}:{tag}")
    if record.previous_image:
        engine.tag_image(client, record.previous_image, ROLLBACK_REPOSITORY, tag)
    if displaced is not None and displaced.id not in {record.previous_image, record.image_id}:
        engine.remove_image_if_unused(client, displaced.id)


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


def _previous_run(before: DeploymentRecord | None, new_image_id: str) -> dict[str, Any]:
    """The run spec of the image a redeploy replaces, kept so a rollback runs it as it ran."""
    if before is None:
        return {}
    if before.image_id and before.image_id != new_image_id:
        return dict(before.run)
    # Same image deployed again: the image to roll back to is still the one before it.
    return dict(before.previous_run)


def rollback(settings: Settings, name: str, *, progress: Progress | None = None) -> DeploymentRecord:
    """Roll the previous image of a docker deployment out again, exactly as it ran before.

    The same roll-out as a redeploy: the previous image's replicas must be ready and answer a prediction
    before the current ones stop, so a rollback that fails leaves the current deployment serving.

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
    labels = previous.labels
    version = int(labels.get("prodai.serving-version") or record.version)
    versions = [int(v) for v in labels.get("prodai.model-versions", "").split(",") if v.strip().isdigit()]
    host = record.run.get("host") if record.balancer else None
    rolled_out = roll_out(
        settings,
        client,
        name=record.name,
        spec=spec,
        host=str(host or settings.config.deploy.host),
        port=int(record.port or settings.config.deploy.port),
        replicas=max(1, len(record.replicas) or settings.config.deploy.replicas),
        expected_versions=set(versions) or {version},
        say=progress or (lambda _line: None),
    )
    rolled = DeploymentRecord(
        name=record.name,
        url=record.url,
        model=labels.get("prodai.model", record.model),
        version=version,
        target="docker",
        image=previous.tag if not previous.tag.startswith("sha256:") else record.previous_image,
        container_id=rolled_out.replicas[0],
        previous_image=record.image_id,
        created=records.now_iso(),
        image_id=previous.id,
        versions=versions or [version],
        port=record.port,
        config_hash=labels.get("prodai.config-hash"),
        image_size_bytes=previous.size_bytes,
        run=spec.to_dict(),
        previous_run=dict(record.run),
        replicas=rolled_out.replicas,
        balancer=rolled_out.balancer,
        stats_url=rolled_out.stats_url,
        network=rolled_out.network,
    )
    records.save(settings, rolled)
    _keep_rollback_image(client, rolled, record)
    return rolled


def stop(settings: Settings, record: DeploymentRecord) -> None:
    """Remove every container of the deployment (replicas, balancer, a pre-balancer one) and its network."""
    client = engine.docker_client()
    drain_s = int(settings.config.serving.drain_delay_s + settings.config.serving.grace_period_s + 5)
    for container in engine.deployment_containers(client, record.name):
        engine.remove_container(client, container.id, timeout_s=drain_s)
    legacy = _legacy_container(client, record.name)
    if legacy is not None:
        engine.remove_container(client, legacy.id, timeout_s=drain_s)
    engine.remove_network(client, record.network or network_name(record.name))
    engine.remove_volume(client, jobs_volume_name(record.name))
