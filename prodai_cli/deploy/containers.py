"""The Docker engine through the Docker SDK: build images, run, watch, read and remove containers.

Everything Docker-specific lives here; callers get plain dataclasses and :class:`DeployError` (never a
``docker`` exception), with the container's last log lines when a container fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prodai_cli.deploy import readiness
from prodai_cli.errors import DeployError, first_line

MANAGED_LABEL = "prodai.managed"
DEPLOYMENT_LABEL = "prodai.deployment"
ROLE_LABEL = "prodai.role"
BUILD_STAGE_REPOSITORY = "prodai-build-stage"
LOG_TAIL_LINES = 40

Progress = Callable[[str], None]


def docker_client() -> Any:
    """A Docker SDK client for the engine the environment names (``DOCKER_HOST``, else the local socket).

    Raises:
        DeployError: The SDK is not installed or the engine does not answer.

    """
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise DeployError(
            "The Docker SDK is not installed", hint="pip install 'prodai[deploy]' (or: pip install docker)"
        ) from None
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise DeployError(
            f"Cannot reach the Docker engine: {first_line(exc)}",
            hint="Start dockerd (scripts/setup-system does) or point DOCKER_HOST at an engine",
        ) from None
    return client


@dataclass(frozen=True)
class BuiltImage:
    """An image the engine holds."""

    id: str
    tag: str
    size_bytes: int
    labels: dict[str, str]


def tag_safe(text: str) -> str:
    """``text`` as a Docker tag (letters, digits, ``_.-``; at most 128 characters)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:128] or "latest"


def build_image(
    client: Any,
    context: Path,
    tag: str,
    *,
    network_mode: str = "none",
    progress: Progress | None = None,
    target: str | None = None,
) -> BuiltImage:
    """Build ``context`` (its Dockerfile) as ``tag``, streaming the build's output.

    Args:
        client: From :func:`docker_client`.
        context: The build context directory.
        tag: Image tag.
        network_mode: The build containers' network; ``none`` proves the build needs no network.
        progress: Called with each output line.
        target: Build only up to this stage of a multi-stage Dockerfile.

    Raises:
        DeployError: The build failed; the message carries its last lines.

    """
    from docker.errors import APIError

    tail: list[str] = []
    image_id: str | None = None
    context_tar = _context_tar(context)
    try:
        stream = client.api.build(
            fileobj=context_tar,
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode=network_mode,
            decode=True,
            target=target,
        )
        for chunk in stream:
            if "error" in chunk:
                message = str(chunk.get("errorDetail", {}).get("message") or chunk["error"]).strip()
                raise DeployError(
                    f"Building {tag} failed: {message}\n" + "\n".join(tail[-15:]),
                    hint=f"The build context is {context}; `docker build {context}` reproduces it",
                )
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
            text = str(chunk.get("stream") or chunk.get("status") or "").rstrip()
            for line in text.splitlines():
                tail = [*tail[-29:], line]
                if progress is not None and line.strip():
                    progress(line)
    except APIError as exc:
        raise DeployError(f"Building {tag} failed: {first_line(exc)}") from None
    finally:
        context_tar.close()
    image = client.images.get(image_id or tag)
    return BuiltImage(id=image.id, tag=tag, size_bytes=int(image.attrs.get("Size") or 0), labels=image.labels or {})


def _context_tar(context: Path) -> IO[bytes]:
    """The build context as a tar whose files belong to 0:0, whoever made them.

    The engine's layer cache keys a COPY on each file's uid and gid as well as its bytes: a context written by
    another user (a non-root deploy) would otherwise rebuild the runtime layers, minutes of pip install. COPY
    makes the image's files root's either way.
    """
    import tarfile
    import tempfile

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    # A context holds the wheelhouse (hundreds of MB): on disk, not in memory. The caller closes it.
    handle = tempfile.TemporaryFile()  # noqa: SIM115
    with tarfile.open(fileobj=handle, mode="w") as archive:
        for entry in sorted(context.iterdir()):
            archive.add(str(entry), arcname=entry.name, filter=as_root)
    handle.seek(0)
    return handle


def image_info(client: Any, ref: str) -> BuiltImage | None:
    """The image ``ref`` (tag or ID), or None when the engine has no such image."""
    from docker.errors import ImageNotFound

    try:
        image = client.images.get(ref)
    except ImageNotFound:
        return None
    tags = image.tags or [ref]
    return BuiltImage(id=image.id, tag=tags[0], size_bytes=int(image.attrs.get("Size") or 0), labels=image.labels or {})


@dataclass
class RunSpec:
    """How to start a container (a server's is kept in the deployment record for rollback).

    ``port`` None publishes ``container_port`` on an ephemeral host port (read it back with
    :func:`published_port`); ``network`` and ``aliases`` attach the container to a user network where the
    balancer finds it by alias.
    """

    name: str
    image: str
    host: str
    port: int | None
    container_port: int
    environment: dict[str, str] = field(default_factory=dict)
    # Each: {"type": "bind"|"volume", "source": str|None, "target": str, "read_only": bool}
    mounts: list[dict[str, Any]] = field(default_factory=list)
    restart_policy: str = "unless-stopped"
    gpu: bool = False
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    network: str | None = None
    aliases: list[str] = field(default_factory=list)
    command: list[str] | None = None
    # More published ports: container port -> [host address, host port or None for an ephemeral one].
    extra_ports: dict[str, list[Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_dict` (keys a newer prodai added are ignored)."""
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def run_container(client: Any, spec: RunSpec) -> str:
    """Start a detached container as ``spec`` says; returns its ID.

    Raises:
        DeployError: The engine refused (port in use, unknown image, no GPU runtime).

    """
    from docker.errors import APIError, ImageNotFound
    from docker.types import DeviceRequest, Mount

    mounts = [
        Mount(target=m["target"], source=m.get("source"), type=m["type"], read_only=bool(m.get("read_only")))
        for m in spec.mounts
    ]
    policy: dict[str, Any] = {"Name": "" if spec.restart_policy == "no" else spec.restart_policy}
    if spec.restart_policy == "on-failure":
        policy["MaximumRetryCount"] = 3
    ports: dict[str, Any] = {f"{spec.container_port}/tcp": (spec.host, spec.port)}
    for inner, (address, outer) in spec.extra_ports.items():
        ports[f"{inner}/tcp"] = (address, outer)
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "detach": True,
        "environment": spec.environment,
        "ports": ports,
        "mounts": mounts,
        "restart_policy": policy,
        "labels": {MANAGED_LABEL: "true", DEPLOYMENT_LABEL: spec.name, **spec.labels},
    }
    if spec.network:
        kwargs["network"] = spec.network
        kwargs["networking_config"] = {spec.network: client.api.create_endpoint_config(aliases=spec.aliases or None)}
    if spec.command:
        kwargs["command"] = spec.command
    if spec.user:
        kwargs["user"] = spec.user
    if spec.gpu:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    try:
        container = client.containers.run(spec.image, **kwargs)
    except ImageNotFound:
        raise DeployError(f"The engine has no image {spec.image}", hint="Build it again: prodai deploy") from None
    except APIError as exc:
        hint = "Is another process using the port? Choose one with --port" if "port" in str(exc).lower() else None
        with contextlib.suppress(APIError):  # a container created but not started must not linger
            client.api.remove_container(spec.name, force=True, v=True)
        raise DeployError(f"Starting {spec.name} failed: {exc.explanation or first_line(exc)}", hint=hint) from None
    return str(container.id)


def published_port(client: Any, ref: str, container_port: int) -> int | None:
    """The host port Docker published ``container_port`` of container ``ref`` on (None: not published)."""
    found = container(client, ref)
    if found is None:
        return None
    found.reload()
    bindings = (found.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{container_port}/tcp") or []
    for binding in bindings:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def container_address(client: Any, ref: str, network: str) -> str | None:
    """The container's IP address on ``network`` (None: not attached)."""
    found = container(client, ref)
    if found is None:
        return None
    found.reload()
    attached = (found.attrs.get("NetworkSettings", {}).get("Networks") or {}).get(network) or {}
    return attached.get("IPAddress") or None


def deployment_containers(client: Any, deployment: str, role: str | None = None) -> list[Any]:
    """Every container (running or not) labelled as part of ``deployment`` (optionally of one ``role``)."""
    labels = [f"{DEPLOYMENT_LABEL}={deployment}"]
    if role:
        labels.append(f"{ROLE_LABEL}={role}")
    return list(client.containers.list(all=True, filters={"label": labels}))


@dataclass(frozen=True)
class Network:
    """A user network: its name, IPv4 subnet and gateway (None when the engine gave it none)."""

    name: str
    subnet: str | None
    gateway: str | None


def ensure_network(client: Any, name: str, deployment: str) -> Network:
    """The user network ``name`` of ``deployment`` (created when missing).

    Raises:
        DeployError: The engine refused to create it.

    """
    from docker.errors import APIError, NotFound

    try:
        network = client.networks.get(name)
    except NotFound:
        try:
            network = client.networks.create(
                name, driver="bridge", labels={MANAGED_LABEL: "true", DEPLOYMENT_LABEL: deployment}
            )
        except APIError as exc:
            raise DeployError(f"Creating the network {name} failed: {exc.explanation or first_line(exc)}") from None
    network.reload()
    for entry in network.attrs.get("IPAM", {}).get("Config") or []:
        subnet = str(entry.get("Subnet") or "")
        if subnet and ":" not in subnet:
            return Network(name, subnet, entry.get("Gateway") or None)
    return Network(name, None, None)


def join_network(client: Any, ref: str, network: str, *, aliases: list[str]) -> None:
    """Attach the running container ``ref`` to ``network`` under ``aliases``.

    Raises:
        DeployError: The engine refused.

    """
    from docker.errors import APIError

    try:
        client.networks.get(network).connect(ref, aliases=aliases)
    except APIError as exc:
        raise DeployError(f"Attaching {ref[:12]} to {network} failed: {exc.explanation or first_line(exc)}") from None


def remove_volume(client: Any, name: str) -> bool:
    """Remove the named volume ``name`` (its containers must be gone); False when there was none."""
    from docker.errors import APIError, NotFound

    try:
        client.volumes.get(name).remove(force=True)
    except NotFound:
        return False
    except APIError as exc:
        raise DeployError(f"Removing the volume {name} failed: {exc.explanation or first_line(exc)}") from None
    return True


def remove_network(client: Any, name: str) -> bool:
    """Remove the network ``name`` (disconnecting what is left on it); False when there was none."""
    from docker.errors import APIError, NotFound

    try:
        network = client.networks.get(name)
    except NotFound:
        return False
    try:
        network.reload()
        for attached in network.containers:
            with contextlib.suppress(APIError):
                network.disconnect(attached, force=True)
        network.remove()
    except NotFound:
        return False
    except APIError as exc:
        raise DeployError(f"Removing the network {name} failed: {exc.explanation or first_line(exc)}") from None
    return True


def tag_image(client: Any, image_id: str, repository: str, tag: str) -> None:
    """Give ``image_id`` the tag ``repository:tag`` (moving it from any other image)."""
    from docker.errors import APIError, ImageNotFound

    with contextlib.suppress(ImageNotFound, APIError):
        client.images.get(image_id).tag(repository, tag)


def remove_image_if_unused(client: Any, image_id: str) -> bool:
    """Delete an image nothing tags and no container uses (the engine refuses otherwise); True when deleted."""
    from docker.errors import APIError, ImageNotFound

    try:
        image = client.images.get(image_id)
        if image.tags:
            return False
        client.images.remove(image.id, noprune=False)
    except (ImageNotFound, APIError):
        return False
    return True


def container(client: Any, ref: str) -> Any | None:
    """The container ``ref`` (name or ID), or None."""
    from docker.errors import NotFound

    try:
        return client.containers.get(ref)
    except NotFound:
        return None


def logs_tail(client: Any, ref: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a container's output (stdout and stderr)."""
    found = container(client, ref)
    if found is None:
        return ""
    data = found.logs(tail=lines, stdout=True, stderr=True)
    return bytes(data).decode("utf-8", errors="replace").rstrip()


def wait_ready(client: Any, container_id: str, url: str, timeout_s: float) -> float:
    """Wait until ``url`` (a base URL) is ready, failing early when the container exits or restarts.

    Returns:
        Seconds waited.

    Raises:
        NotReady: Not ready in time, or the container stopped; the message ends with its log tail.

    """

    def alive() -> str | None:
        found = container(client, container_id)
        if found is None:
            return f"The container {container_id[:12]} disappeared while starting"
        state = found.attrs.get("State", {})
        if state.get("Status") in {"exited", "dead"} or state.get("Restarting") or found.attrs.get("RestartCount"):
            return (
                f"The server container stopped while starting (exit code {state.get('ExitCode')}). "
                "Its last log lines:\n" + logs_tail(client, container_id)
            )
        return None

    try:
        return readiness.wait_ready(url, timeout_s, alive=alive)
    except readiness.NotReady as exc:
        if exc.died:
            raise
        raise readiness.NotReady(
            f"{exc.message}. The container's last log lines:\n" + logs_tail(client, container_id),
            hint="Raise deploy.readiness_timeout_s for a large model",
        ) from None


def remove_container(client: Any, ref: str, *, timeout_s: int = 15) -> bool:
    """Stop (SIGTERM, then SIGKILL after ``timeout_s``) and remove a container and its anonymous volumes.

    Returns:
        False when there was no such container.

    """
    from docker.errors import APIError

    found = container(client, ref)
    if found is None:
        return False
    try:
        if found.status in {"running", "restarting"}:
            found.stop(timeout=timeout_s)
        found.remove(v=True, force=True)
    except APIError as exc:
        if getattr(exc, "status_code", None) != 404:
            raise DeployError(f"Removing container {ref} failed: {exc.explanation or first_line(exc)}") from None
    return True
