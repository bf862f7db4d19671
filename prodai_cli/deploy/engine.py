"""The Docker engine, through the Docker SDK: build images, run, watch, read and remove containers.

Everything Docker-specific lives here; callers get plain dataclasses and :class:`DeployError` (never a
``docker`` exception), with the container's last log lines when a container fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prodai_cli.errors import DeployError
from prodai_cli.errors import first_line as _first_line

MANAGED_LABEL = "prodai.managed"
DEPLOYMENT_LABEL = "prodai.deployment"
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
            f"Cannot reach the Docker engine: {_first_line(exc)}",
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


def build_image(
    client: Any, context: Path, tag: str, *, network_mode: str = "none", progress: Progress | None = None
) -> BuiltImage:
    """Build ``context`` (its Dockerfile) as ``tag``, streaming the build's output.

    Args:
        client: From :func:`docker_client`.
        context: The build context directory.
        tag: Image tag.
        network_mode: The build containers' network; ``none`` proves the build needs no network.
        progress: Called with each output line.

    Raises:
        DeployError: The build failed; the message carries its last lines.

    """
    from docker.errors import APIError

    tail: list[str] = []
    image_id: str | None = None
    try:
        stream = client.api.build(
            path=str(context), tag=tag, rm=True, forcerm=True, pull=False, network_mode=network_mode, decode=True
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
        raise DeployError(f"Building {tag} failed: {_first_line(exc)}") from None
    image = client.images.get(image_id or tag)
    return BuiltImage(id=image.id, tag=tag, size_bytes=int(image.attrs.get("Size") or 0), labels=image.labels or {})


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
    """How to start a server container (kept in the deployment record for rollback)."""

    name: str
    image: str
    host: str
    port: int
    container_port: int
    environment: dict[str, str] = field(default_factory=dict)
    # Each: {"type": "bind"|"volume", "source": str|None, "target": str, "read_only": bool}
    mounts: list[dict[str, Any]] = field(default_factory=list)
    restart_policy: str = "unless-stopped"
    gpu: bool = False
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


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
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "detach": True,
        "environment": spec.environment,
        "ports": {f"{spec.container_port}/tcp": (spec.host, spec.port)},
        "mounts": mounts,
        "restart_policy": policy,
        "labels": {MANAGED_LABEL: "true", DEPLOYMENT_LABEL: spec.name, **spec.labels},
    }
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
        raise DeployError(f"Starting {spec.name} failed: {exc.explanation or _first_line(exc)}", hint=hint) from None
    return str(container.id)


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
    """Wait until ``url`` answers 200, failing early when the container exits or restarts.

    Returns:
        Seconds waited.

    Raises:
        DeployError: Not ready in time, or the container stopped; the message ends with its log tail.

    """
    import httpx

    start = time.monotonic()
    deadline = start + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as http:
        while True:
            found = container(client, container_id)
            if found is None:
                raise DeployError(f"The container {container_id[:12]} disappeared while starting")
            state = found.attrs.get("State", {})
            if state.get("Status") in {"exited", "dead"} or state.get("Restarting") or found.attrs.get("RestartCount"):
                code = state.get("ExitCode")
                raise DeployError(
                    f"The server container stopped while starting (exit code {code}). Its last log lines:\n"
                    + logs_tail(client, container_id)
                )
            try:
                response = http.get(url)
                if response.status_code == 200:
                    return time.monotonic() - start
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"{url} was not ready after {timeout_s:g}s (last: {last}). The container's last log lines:\n"
                    + logs_tail(client, container_id),
                    hint="Raise deploy.readiness_timeout_s for a large model",
                )
            time.sleep(0.5)


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
            raise DeployError(f"Removing container {ref} failed: {exc.explanation or _first_line(exc)}") from None
    return True
