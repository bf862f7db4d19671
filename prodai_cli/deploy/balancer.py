"""The load balancer in front of server replicas: HAProxy from Debian's package, in a locally built image.

No image registry is needed: the image is built ``FROM`` the deployment's (Debian-based) base image with
``apt-get install haproxy``, tagged by a hash of its Dockerfile and reused by every deployment. A user who
has an image (``haproxy:2.8``) names it in ``deploy.balancer_image``; either runs the same command.

The configuration travels in the container's environment (no host file to keep readable) and finds the
replicas through Docker's embedded DNS: every server container carries the network alias ``server``, so a
new replica joins the rotation as soon as it answers ``/health/ready``, and a draining one (503) leaves it
before its socket closes. The stats page (CSV) tells :func:`replica_states` what the balancer sees.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodai_cli.deploy.templates import render
from prodai_cli.errors import DeployError

LISTEN_PORT = 8080
STATS_PORT = 8404
# Server slots of the unchecked last-resort copy of the replicas (haproxy.cfg.j2): left out of replica states.
LAST_RESORT_PREFIX = "lastresort"
BACKEND_ALIAS = "server"
IMAGE_REPOSITORY = "prodai-balancer"
CONFIG_ENV = "PRODAI_HAPROXY_CFG"
CONFIG_PATH = "/tmp/haproxy.cfg"
# Writes the config from the environment, then replaces the shell with HAProxy (-W: master-worker,
# -db: stay in the foreground so Docker sees it).
COMMAND = ["/bin/sh", "-c", f'printf "%s\\n" "${CONFIG_ENV}" > {CONFIG_PATH} && exec haproxy -W -db -f {CONFIG_PATH}']
USER = "haproxy"

Progress = Callable[[str], None]


def dockerfile(base_image: str) -> str:
    """The balancer image's Dockerfile: Debian's haproxy package on ``base_image``."""
    return (
        f"FROM {base_image}\n"
        "RUN apt-get update \\\n"
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \\\n"
        " && rm -rf /var/lib/apt/lists/*\n"
        'LABEL prodai.managed="true" prodai.role="balancer"\n'
        f"EXPOSE {LISTEN_PORT} {STATS_PORT}\n"
        f"USER {USER}\n"
    )


def image_tag(base_image: str) -> str:
    """``prodai-balancer:<hash>``: one tag per Dockerfile, so a change of base image builds a new one."""
    digest = hashlib.sha256(dockerfile(base_image).encode()).hexdigest()[:12]
    return f"{IMAGE_REPOSITORY}:{digest}"


def ensure_image(client: Any, *, base_image: str, image: str | None = None, progress: Progress | None = None) -> str:
    """The balancer image to run: ``image`` when named, else the local build (built once, then reused).

    Raises:
        DeployError: The build failed (e.g. no Debian mirror reachable and no image named).

    """
    from prodai_cli.deploy import containers

    if image:
        if containers.image_info(client, image) is None:
            raise DeployError(
                f"The engine has no balancer image {image}",
                hint=f"docker pull {image}, or clear deploy.balancer_image to build one from Debian's haproxy",
            )
        return image
    tag = image_tag(base_image)
    if containers.image_info(client, tag) is not None:
        return tag
    if progress is not None:
        progress(f"Building the load balancer image {tag} (Debian's haproxy on {base_image}, once)")
    with tempfile.TemporaryDirectory(prefix="prodai-balancer-") as directory:
        Path(directory, "Dockerfile").write_text(dockerfile(base_image), encoding="utf-8")
        try:
            containers.build_image(client, Path(directory), tag, network_mode="default", progress=progress)
        except DeployError as exc:
            exc.hint = exc.hint or (
                "The balancer image installs Debian's haproxy package: a Debian mirror must be reachable, "
                "or name an image you have in deploy.balancer_image"
            )
            raise
    return tag


def config_text(
    *,
    backend_host: str = BACKEND_ALIAS,
    backend_port: int,
    slots: int = 16,
    maxconn: int = 4096,
    client_timeout_s: float = 60,
    server_timeout_s: float = 60,
    request_timeout_s: float = 10,
    check_interval_ms: int = 500,
    check_timeout_s: float = 5,
) -> str:
    """The HAProxy configuration: replicas by DNS, health checks on /health/ready, a stats page."""
    return render(
        "haproxy.cfg.j2",
        backend_host=backend_host,
        backend_port=backend_port,
        slots=slots,
        maxconn=maxconn,
        client_timeout_s=int(client_timeout_s),
        server_timeout_s=int(server_timeout_s),
        request_timeout_s=int(request_timeout_s),
        check_interval_ms=check_interval_ms,
        check_timeout_s=int(check_timeout_s),
        listen_port=LISTEN_PORT,
        stats_port=STATS_PORT,
        last_resort_prefix=LAST_RESORT_PREFIX,
    )


@dataclass(frozen=True)
class ReplicaState:
    """One replica slot as the balancer sees it."""

    slot: str
    address: str
    status: str
    sessions: int
    total: int
    check: str = ""

    @property
    def up(self) -> bool:
        """Taking traffic."""
        return self.status.startswith("UP")

    @property
    def in_rotation(self) -> bool:
        """Taking traffic after passing a health check of its own.

        HAProxy counts a server its DNS has just named as UP before the first check has run, so ``up`` alone
        would call a replica that is still loading (or cannot load) ready, and a rolling update would then
        retire the old replicas for it; a CI run did exactly that on compose (ready in 0.07 s, 503s after).
        """
        return self.up and self.check.lstrip("* ") in {"L7OK", "L7OKC"}


def in_rotation_ips(states: list[ReplicaState]) -> set[str]:
    """The IP addresses of the replicas that are in rotation (see :attr:`ReplicaState.in_rotation`)."""
    return {state.address.split(":")[0] for state in states if state.in_rotation}


def replica_states(stats_url: str, *, timeout_s: float = 2.0) -> list[ReplicaState]:
    """The replicas behind the balancer (slots with an address), read from its stats CSV.

    Raises:
        DeployError: The stats page did not answer.

    """
    import csv
    import io

    import httpx

    try:
        response = httpx.get(f"{stats_url}/stats;csv", timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DeployError(f"The load balancer's stats page did not answer: {type(exc).__name__}") from None
    text = response.text.lstrip("# ")
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        name = row.get("svname") or ""
        if row.get("pxname") != "servers" or name in {"FRONTEND", "BACKEND"} or name.startswith(LAST_RESORT_PREFIX):
            continue  # the last-resort slots are the same replicas again, unchecked: not a replica's state
        address = row.get("addr") or ""
        if not address or address.startswith("0.0.0.0") or row.get("status") == "MAINT (resolution)":
            continue
        out.append(
            ReplicaState(
                slot=row.get("svname", ""),
                address=address,
                status=row.get("status", ""),
                sessions=int(row.get("scur") or 0),
                total=int(row.get("stot") or 0),
                check=row.get("check_status") or "",
            )
        )
    return out


def wait_in_rotation(stats_url: str, addresses: set[str], timeout_s: float) -> float:
    """Wait until the balancer sends traffic to every IP in ``addresses``; returns the seconds waited.

    Raises:
        DeployError: Not in rotation in time (the message says what the balancer sees).

    """
    start = time.monotonic()
    seen: list[ReplicaState] = []
    while True:
        try:
            seen = replica_states(stats_url)
        except DeployError:
            seen = []
        if addresses <= in_rotation_ips(seen):
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            states = ", ".join(f"{s.address} {s.status}" for s in seen) or "no replicas"
            raise DeployError(f"The load balancer did not take {', '.join(sorted(addresses))} in time ({states})")
        time.sleep(0.2)


def wait_out_of_rotation(stats_url: str, addresses: set[str], timeout_s: float) -> bool:
    """Wait until no replica in ``addresses`` is UP or holds a session; False when time ran out."""
    start = time.monotonic()
    while time.monotonic() - start <= timeout_s:
        try:
            seen = replica_states(stats_url)
        except DeployError:
            return False
        busy = [s for s in seen if s.address.split(":")[0] in addresses and (s.up or s.sessions)]
        if not busy:
            return True
        time.sleep(0.1)
    return False


def trusted_networks(subnet: str, gateway: str | None) -> list[str]:
    """The stack's subnet without its gateway, as CIDRs: the containers of the stack, never the host.

    Traffic the host forwards into the stack (docker-proxy for a published port) comes from the gateway,
    so the gateway is the client the balancer saw, not a proxy to believe.
    """
    import ipaddress

    network = ipaddress.ip_network(subnet, strict=False)
    if not gateway:
        return [str(network)]
    excluded = ipaddress.ip_network(f"{gateway}/{network.max_prefixlen}")
    if not excluded.subnet_of(network):  # type: ignore[arg-type]
        return [str(network)]
    return sorted((str(n) for n in network.address_exclude(excluded)), key=lambda n: ipaddress.ip_network(n))  # type: ignore[arg-type]
