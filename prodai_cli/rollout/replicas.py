"""A rollout against a docker or compose deployment: every replica reloads each step, their counters add up.

The replicas mount the config's directory, so the split a step writes reaches all of them; but through the
balancer's URL ``/metrics`` answers from one replica at a time, and two reads of two different replicas
make no window. :class:`Replicas` has the interface of the engine's ``Server`` and reads each replica
directly, at its address on the deployment's own network (reachable from the host on Linux, where the
engine runs; no port is published for it):

- a step's config counts as loaded when **every** running replica reports a reload newer than the write;
- the window is the **sum** of each replica's window, from snapshots keyed by container id. A replica that
  restarted counts from zero (:func:`prodai_cli.rollout.window.window`), and one that joined mid-step (a
  replacement) has no snapshot and so counts from zero too; a replica that went away takes its requests of
  the step with it.

The address was chosen over ``docker exec`` (a process per replica per poll, and it needs an HTTP client in
the image) and over published ports (compose replicas publish none, on purpose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ProdaiError, UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.deploy.records import DeploymentRecord
    from prodai_cli.rollout.window import Window

# The key of a replicas baseline in the state file (a single server's baseline is one snapshot).
REPLICAS_KEY = "replicas"
TARGETS = ("docker", "compose")


def resolve_deployment(settings: Settings, name: str | None, url: str | None) -> DeploymentRecord | None:
    """The docker or compose deployment a rollout judges: ``--deployment NAME``, or the one whose URL is ``--url``.

    A URL that is a deployment's balancer is resolved to the deployment on purpose: judged through the
    balancer, each read of ``/metrics`` would come from whichever replica it picked.

    Raises:
        UsageError: No such deployment, a k8s one (its plan is rendered with ``--render``), or one not running.

    """
    from prodai_cli.deploy import records

    if name is None:
        if url is None:
            return None
        wanted = url.rstrip("/")
        found = [
            r
            for r in records.list_records(settings)
            if r.target in TARGETS and r.status == "running" and r.url.rstrip("/") == wanted
        ]
        if not found:
            return None
        record = found[0]
    else:
        loaded = records.load(settings, name)
        if loaded is None:
            known = ", ".join(r.name for r in records.list_records(settings)) or "none"
            raise UsageError(f"No deployment named {name!r} in this project (known: {known})")
        record = loaded
    if record.target not in TARGETS:
        raise UsageError(
            f"Deployment {record.name!r} is a {record.target} target: prodai cannot move its pods' traffic",
            hint="Render the equivalent Argo Rollouts plan: prodai rollout MODEL@CANDIDATE --render DIR",
        )
    if record.status != "running":
        raise UsageError(f"Deployment {record.name!r} is {record.status}, not running")
    return record


@dataclass
class Member:
    """One running server replica: its container id and the base URL of its address on the network."""

    container_id: str
    url: str


@dataclass
class Replicas:
    """The engine's ``Server`` over every server replica of a docker or compose deployment."""

    url: str  # the balancer (what clients use); reported, never read for metrics
    headers: dict[str, str]
    deployment: str
    target: str
    # Makes the engine's one-server reader for a replica's URL (passed in: this module sits below the engine).
    single: Callable[[str, dict[str, str]], Any]
    _client: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ the replicas

    def members(self) -> list[Member]:
        """Every running server replica and its URL on the deployment's network.

        Raises:
            ProdaiError: Docker cannot be reached, or no replica runs (or none has an address).

        """
        from prodai_cli.deploy import containers as engine
        from prodai_cli.deploy.plan import CONTAINER_PORT
        from prodai_cli.deploy.targets import compose, docker

        if self._client is None:
            self._client = engine.docker_client()
        if self.target == "compose":
            found = compose.stack_containers(self._client, self.deployment, compose.SERVER_SERVICE)
            network = compose.network_name(self.deployment)
        else:
            found = engine.deployment_containers(self._client, self.deployment, docker.ROLE_SERVER)
            network = docker.network_name(self.deployment)
        out = []
        for container in found:
            if container.status != "running":
                continue
            attached = (container.attrs.get("NetworkSettings", {}).get("Networks") or {}).get(network) or {}
            address = attached.get("IPAddress")
            if address:
                out.append(Member(container.id, f"http://{address}:{CONTAINER_PORT}"))
        if not out:
            raise ProdaiError(
                f"Deployment {self.deployment!r} has no running server replica on its network {network}",
                hint=f"See it with: prodai deploy status {self.deployment}",
            )
        return out

    def _server(self, member: Member) -> Any:
        return self.single(member.url, self.headers)

    def _read(self, member: Member, how: str = "metrics") -> Any:
        try:
            return getattr(self._server(member), how)()
        except ProdaiError as exc:
            raise ProdaiError(
                f"Replica {member.container_id[:12]} of {self.deployment}: {exc.message}",
                hint="Replicas are read at their address on the deployment's network: the host must route to "
                "Docker's bridge networks (Linux does; Docker Desktop does not)",
            ) from None

    # ------------------------------------------------------------------ the Server interface

    def require_ab_routing(self) -> None:
        """Every replica must route A/B (see ``Server.require_ab_routing``)."""
        for member in self.members():
            self._server(member).require_ab_routing()

    def _reload_states(self) -> dict[str, tuple[float, float]]:
        return {member.container_id: self._read(member, "reload_state") for member in self.members()}

    def reload_state(self) -> tuple[float, float]:
        """(the latest config load of any replica, 0.0 when any replica's last reload failed).

        Waiting for loads newer than the latest one means every replica, including the most recent to load,
        must load again after the write (replicas share the host's clock).
        """
        states = self._reload_states().values()
        return max(loaded for loaded, _ in states), min(ok for _, ok in states)

    def wait_reloaded(self, since: float, *, timeout_s: float, sleep: Callable[[float], None]) -> None:
        """Wait until every running replica has loaded a config newer than ``since``.

        Raises:
            ProdaiError: A replica refused the new config, or one did not load it within ``timeout_s``.

        """
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            states = self._reload_states()
            refused = [cid[:12] for cid, (loaded, ok) in states.items() if loaded > since and ok < 1]
            if refused:
                raise ProdaiError(f"Replica(s) {', '.join(refused)} of {self.deployment} refused the new A/B config")
            behind = [cid[:12] for cid, (loaded, _) in states.items() if loaded <= since]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ProdaiError(
                    f"Replica(s) {', '.join(behind)} of {self.deployment} did not reload prodai.yaml within "
                    f"{timeout_s:.0f}s",
                    hint="Does the deployment mount this project's directory? Its replicas' logs say why",
                )
            sleep(0.25)

    def baseline(self, variant: str) -> dict[str, Any]:
        """Each replica's counters of ``variant`` now, keyed by container id (every replica must answer)."""
        from prodai_cli.rollout.window import snapshot

        return {REPLICAS_KEY: {m.container_id: snapshot(self._read(m), variant).to_dict() for m in self.members()}}

    def window(self, baseline: dict[str, Any], variant: str, seconds: float) -> Window:
        """The sum of every running replica's window since ``baseline`` (new replicas count from zero).

        A replica that does not answer this once is left out of this read (the next one counts it again:
        its snapshot is kept); when none answers, the error is raised.
        """
        from prodai_cli.rollout.window import Snapshot, combine, snapshot, window

        before = baseline.get(REPLICAS_KEY) or {}
        parts: list[Window] = []
        error: ProdaiError | None = None
        for member in self.members():
            try:
                text = self._read(member)
            except ProdaiError as exc:
                error = exc
                continue
            start = before.get(member.container_id)
            parts.append(window(Snapshot.from_dict(start) if start else Snapshot(), snapshot(text, variant), seconds))
        if not parts and error is not None:
            raise error
        return combine(parts, seconds)
