"""The compose stack's Redis and Prometheus: the images the user names, or local ones from Debian's packages.

No registry is needed: with ``--offline`` (``deploy.offline``), or when pulling the configured image fails,
prodai builds ``prodai-redis:<hash>`` / ``prodai-prometheus:<hash>`` ``FROM`` the deployment's (Debian-based)
base image with ``apt-get install redis-server`` / ``prometheus``, the way the balancer image is built.
Each is tagged by a hash of its Dockerfile, so it is built once and reused by every deployment.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodai_cli.errors import DeployError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Service:
    """A stack service that prodai can build from a Debian package."""

    name: str
    package: str
    repository: str
    # Appended to the Dockerfile after the install: how the image runs (user, workdir, entrypoint).
    tail: str


REDIS = Service(
    name="redis",
    package="redis-server",
    repository="prodai-redis",
    tail='USER redis\nWORKDIR /tmp\nEXPOSE 6379\nCMD ["redis-server"]\n',
)
PROMETHEUS = Service(
    name="prometheus",
    package="prometheus",
    repository="prodai-prometheus",
    # Like the official image: data under /prometheus, the binary as entrypoint (the stack passes its flags).
    tail=(
        "RUN mkdir -p /prometheus && chown prometheus:prometheus /prometheus\n"
        "USER prometheus\nWORKDIR /prometheus\nEXPOSE 9090\n"
        'ENTRYPOINT ["/usr/bin/prometheus"]\n'
    ),
)
SERVICES = (REDIS, PROMETHEUS)


def dockerfile(service: Service, base_image: str) -> str:
    """The Dockerfile of a local service image: Debian's package on ``base_image``."""
    return (
        f"FROM {base_image}\n"
        "RUN apt-get update \\\n"
        f" && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {service.package} \\\n"
        " && rm -rf /var/lib/apt/lists/*\n"
        f'LABEL prodai.managed="true" prodai.role="{service.name}"\n'
        f"{service.tail}"
    )


def image_tag(service: Service, base_image: str) -> str:
    """``prodai-<service>:<hash>``: one tag per Dockerfile (a new base image builds a new one)."""
    digest = hashlib.sha256(dockerfile(service, base_image).encode()).hexdigest()[:12]
    return f"{service.repository}:{digest}"


def build_local(client: Any, service: Service, *, base_image: str, progress: Progress | None = None) -> str:
    """The local image of ``service`` (built once from Debian's package, then reused); returns its tag.

    Raises:
        DeployError: The build failed (no Debian mirror reachable).

    """
    from prodai_cli.deploy import containers

    tag = image_tag(service, base_image)
    if containers.image_info(client, tag) is not None:
        return tag
    if progress is not None:
        progress(f"Building {tag} (Debian's {service.package} on {base_image}, once)")
    with tempfile.TemporaryDirectory(prefix=f"prodai-{service.name}-") as directory:
        Path(directory, "Dockerfile").write_text(dockerfile(service, base_image), encoding="utf-8")
        try:
            containers.build_image(client, Path(directory), tag, network_mode="default", progress=progress)
        except DeployError as exc:
            exc.hint = exc.hint or (
                f"The local {service.name} image installs Debian's {service.package} package: a Debian mirror "
                f"must be reachable, or name an image you have in deploy.{service.name}_image"
            )
            raise
    return tag


def _pull(client: Any, image: str) -> str | None:
    """Pull ``image``; returns None when it worked, else why not (one line)."""
    from docker.errors import DockerException

    try:
        client.images.pull(image)
    except DockerException as exc:
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return None


def resolve_image(
    client: Any,
    service: Service,
    configured: str,
    *,
    base_image: str,
    offline: bool,
    progress: Progress | None = None,
) -> str:
    """The image the stack runs for ``service``.

    ``offline``: the local build. Otherwise ``configured`` when the engine has it or can pull it, else the
    local build (a pull that fails is not fatal: the stack still starts, from Debian's packages).

    Raises:
        DeployError: The local build failed too (the message says why the pull failed).

    """
    from prodai_cli.deploy import containers

    if offline:
        return build_local(client, service, base_image=base_image, progress=progress)
    if containers.image_info(client, configured) is not None:
        return configured
    if progress is not None:
        progress(f"Pulling {configured}")
    failure = _pull(client, configured)
    if failure is None:
        return configured
    if progress is not None:
        progress(f"Pulling {configured} failed ({failure}); building {service.name} from Debian's packages")
    try:
        return build_local(client, service, base_image=base_image, progress=progress)
    except DeployError as exc:
        exc.message = f"Pulling {configured} failed ({failure}), and {exc.message}"
        raise
