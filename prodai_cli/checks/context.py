"""What the checklist items share: the server under check, its config, HTTP access and the probe key.

A :class:`CheckContext` is opened once per ``prodai check`` run (or per ``prodai ship`` candidate). Items ask
it for the server's ``/health`` (cached), the versions it serves, and an API key to send:

- ``api_key`` is what ordinary check requests carry (``--api-key``, a real client's key: used only for a
  handful of requests, never for the rate-limit burst);
- the *probe key* is a key dedicated to checks, for the burst that must end in a 429 (``--probe-key``, or a
  temporary key this context creates through :mod:`prodai_cli.keys` in the config the server reads, waits
  for the server to accept, and revokes and removes when it closes). Real clients' per-key quotas are never
  touched; the burst does use up this machine's per-IP allowance for a moment.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prodai_cli.errors import UsageError

if TYPE_CHECKING:
    import httpx

    from prodai_cli.config import Settings
    from prodai_cli.deploy.records import DeploymentRecord

PREDICT_PATH = "/predict"
# The user id check requests carry, so an A/B router sends all of them to one variant (the cache item needs
# its two identical requests to reach the same version).
PROBE_USER = "prodai-check"
# When a new key is visible to the server: prodai's KeyStore re-reads a changed file on the next request at
# most a second after the last look. Every refused try counts as a failed authentication (5 a minute per IP
# by default), so the tries are few and spaced.
KEY_ACCEPT_DELAYS_S = (0.2, 1.3, 2.5)


@dataclass(frozen=True)
class ServedVersion:
    """A model version the server reports in ``/health``.

    Attributes:
        name: Registered model name (the directory name when served from a directory).
        version: Registry version, or ``local`` for a directory.
        status: ``ready``, ``loading``, ``failed``...

    """

    name: str
    version: str
    status: str

    @property
    def registered(self) -> bool:
        """Served from the registry (a version number), not from a directory."""
        return self.version.isdigit()

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_url(settings: Settings) -> str:
    """The local server the config describes (``serving.host``/``serving.port``)."""
    host = settings.config.serving.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.config.serving.port}"


@dataclass
class CheckTarget:
    """Where the server is and what else is known about it.

    Attributes:
        url: Base URL.
        deployment: The ``prodai deploy`` record, when checking a deployment.
        log_source: Returns the server's recent log text, when this machine can read it.
        manage_keys: The server reads this project's config, so a temporary probe key created there reaches it.

    """

    url: str
    deployment: DeploymentRecord | None = None
    log_source: Callable[[], str] | None = None
    manage_keys: bool = False


def resolve_target(settings: Settings, *, url: str | None = None, deployment: str | None = None) -> CheckTarget:
    """The server to check: ``--url``, ``--deployment`` (a docker deployment's record), or the config's.

    Raises:
        UsageError: Both given, an invalid URL, or an unknown (or non-docker) deployment.

    """
    from prodai_cli.loadtest.plan import normalize_url

    if url and deployment:
        raise UsageError("Give --url or --deployment, not both")
    reads_project_config = settings.path is not None
    if deployment:
        from prodai_cli.deploy import records

        record = records.load(settings, deployment)
        if record is None:
            known = ", ".join(r.name for r in records.list_records(settings)) or "none"
            raise UsageError(f"Unknown deployment {deployment!r}", hint=f"Deployments here: {known}")
        if record.target != "docker":
            raise UsageError(
                f"{deployment} is a {record.target} deployment; --deployment checks docker deployments",
                hint="Give the service's address with --url",
            )

        def container_logs() -> str:
            from prodai_cli.deploy.lifecycle import logs

            return logs(settings, deployment, lines=1000)

        # A docker deployment mounts the project's config directory: key changes reach the container.
        return CheckTarget(normalize_url(record.url), record, container_logs, reads_project_config)
    base = normalize_url(url) if url else default_url(settings)
    return CheckTarget(base, None, None, reads_project_config and is_loopback(base))


@dataclass
class CheckContext:
    """The server under check and everything the items share (see the module docstring).

    Attributes:
        settings: The config the server reads, as far as this machine knows it.
        target: Where the server is.
        api_key: Key for ordinary requests (a real client's key is fine: it sends only a few requests).
        probe_key: Key dedicated to checks (the rate-limit burst); created on demand when None and
            ``target.manage_keys``.
        pending_alias: Set by ship: the alias that moves to the served version if the checks pass.

    """

    settings: Settings
    target: CheckTarget
    api_key: str | None = field(default=None, repr=False)
    probe_key: str | None = field(default=None, repr=False)
    pending_alias: str | None = None
    cleanup_error: str | None = None
    _client: httpx.Client | None = field(default=None, repr=False)
    _health: dict[str, Any] | None = field(default=None, repr=False)
    _created_key: str | None = field(default=None, repr=False)
    _probe_problem: str | None = field(default=None, repr=False)
    _probe_tried: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------------------------------- http
    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.target.url

    @property
    def client(self) -> httpx.Client:
        """One HTTP client (keep-alive) for every item."""
        if self._client is None:
            import httpx

            self._client = httpx.Client(
                base_url=self.url, timeout=self.settings.config.check.request_timeout_s, follow_redirects=False
            )
        return self._client

    @property
    def key_header(self) -> str:
        """The header API keys travel in (``auth.header``)."""
        return self.settings.config.auth.header

    def headers(self, key: str | None, **extra: str) -> dict[str, str]:
        """Request headers: the key (when given), the probe user id, and ``extra``."""
        out = {self.settings.config.ab.user_header: PROBE_USER, **extra}
        if key:
            out[self.key_header] = key
        return out

    def predict(
        self, text: str = "prodai check", *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """``POST /predict`` with ``{"text": text}``."""
        return self.client.post(PREDICT_PATH, json={"text": text}, headers={**self.headers(key), **(headers or {})})

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` document (fetched once; empty when it is not JSON)."""
        if self._health is None:
            response = self.client.get("/health")
            try:
                data = response.json()
            except ValueError:
                data = {}
            self._health = data if isinstance(data, dict) else {}
        return self._health

    def served_versions(self) -> list[ServedVersion]:
        """The versions ``/health`` lists under ``models``."""
        models = self.health().get("models") or {}
        out = []
        if isinstance(models, dict):
            for key, state in models.items():
                state = state if isinstance(state, dict) else {}
                name, version = str(state.get("name") or ""), str(state.get("version") or "")
                if not name or not version:
                    # Not loaded yet: the pool key is NAME/VERSION (or a directory).
                    name, _, version = str(key).rpartition("/") if "/" in str(key) else ("", "", str(key))
                out.append(ServedVersion(name or str(key), version or "local", str(state.get("status") or "")))
        return out

    # ------------------------------------------------------------------------------------------- keys
    @property
    def auth_enabled(self) -> bool:
        """The config says predictions need a key."""
        return self.settings.config.auth.enabled

    def request_key(self) -> str | None:
        """The key ordinary check requests carry: ``api_key``, else the probe key (None: no auth, or none)."""
        if self.api_key:
            return self.api_key
        if not self.auth_enabled:
            return None
        return self.burst_key()

    def burst_key(self) -> str | None:
        """The probe key (given, or created now); None when auth is off or no probe key can be had."""
        if self.probe_key:
            return self.probe_key
        if not self.auth_enabled or not self.target.manage_keys:
            return None
        if not self._probe_tried:
            self._probe_tried = True
            self._create_probe_key()
        return self.probe_key

    def key_problem(self) -> str:
        """Why no probe key is available (for evidence)."""
        if self._probe_problem:
            return self._probe_problem
        if not self.target.manage_keys:
            return "this server does not read this project's config, so no temporary probe key can reach it"
        return "no probe key"

    def _create_probe_key(self) -> None:
        from prodai_cli.keys import create_key

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{self.settings.config.check.probe_key_name}-{stamp}-{uuid.uuid4().hex[:4]}"
        created = create_key(self.settings, name, ["predict"], expires_days=1)
        self._created_key = name
        for delay in KEY_ACCEPT_DELAYS_S:
            time.sleep(delay)
            status = self.predict(key=created.key).status_code
            if status != 401:
                self.probe_key = created.key
                return
        self._probe_problem = (
            f"the server still refused the temporary key {name} after {sum(KEY_ACCEPT_DELAYS_S):.0f} s: "
            f"does it read {created.stored_in}?"
        )

    # ------------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Revoke and remove the temporary probe key (if one was created) and close the HTTP client.

        A key that cannot be removed is reported in ``cleanup_error`` (it expires within a day anyway).
        """
        from prodai_cli.errors import ProdaiError

        try:
            if self._created_key is not None:
                name, self._created_key = self._created_key, None
                try:
                    forget_key(self.settings, name)
                except ProdaiError as exc:
                    self.cleanup_error = f"the temporary key {name} was not removed: {exc.message}"
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> CheckContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def forget_key(settings: Settings, name: str) -> None:
    """Revoke the key ``name``, then remove its record (a temporary key must not pile up in the config).

    Revoking first means the key is dead even if the removal fails.
    """
    from prodai_cli import keys

    keys.revoke_key(settings, name)
    # A revoked record normally stays so the server can say "revoked"; a throwaway probe key has nobody to tell.
    keys.delete_key(settings, name)
