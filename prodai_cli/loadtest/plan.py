"""What a load test will do, checked before anything starts: target, payloads, SLOs, load shape, reports.

Everything a user can get wrong (bad SLO syntax, an empty data file, an unreachable URL, an unknown deployment)
is found here and raised as :class:`~prodai_cli.errors.UsageError` (exit 2), before a single request is sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from prodai_cli.errors import UsageError
from prodai_cli.slo import Slo, parse_duration, parse_slos

if TYPE_CHECKING:
    import httpx

    from prodai_cli.config import Settings

Mode = Literal["local", "master", "worker"]
DEPLOYMENTS_DIRNAME = "deployments"
LOADTESTS_DIRNAME = "loadtests"
DEFAULT_MASTER_PORT = 5557
READY_PATH = "/health/ready"


@dataclass(frozen=True)
class Target:
    """The server under test and, when known, the registered version it serves.

    Attributes:
        url: Base URL (no trailing slash).
        deployment: The deployment record it came from, if any.
        model: Registered model name (for logging the run to the registry).
        version: Registered version number.

    """

    url: str
    deployment: str | None = None
    model: str | None = None
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"url": self.url, "deployment": self.deployment, "model": self.model, "version": self.version}


@dataclass
class LoadtestPlan:
    """A checked load test, ready to run.

    ``mode`` is ``local`` (one Locust process, or a master with ``workers`` local worker processes),
    ``master`` (wait for ``workers`` workers started elsewhere) or ``worker`` (serve a remote master).
    """

    target: Target | None
    users: int = 10
    spawn_rate: float = 10.0
    duration_s: float = 30.0
    warmup_s: float = 0.0
    slos: list[Slo] = field(default_factory=list)
    payloads: list[str] | None = None
    data_path: Path | None = None
    path: str = "/predict"
    api_key: str | None = field(default=None, repr=False)
    api_key_header: str = "X-API-Key"
    user_ids: int = 0
    user_header: str = "X-User-ID"
    request_timeout_s: float = 30.0
    mode: Mode = "local"
    workers: int = 0
    master_host: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    master_bind_host: str = "*"
    worker_timeout_s: float = 60.0
    report_dir: Path | None = None
    scale_latency: bool = False
    max_latency_scale: float = 10.0

    def settings_dict(self) -> dict[str, Any]:
        """The load shape as recorded in summary.json and MLflow params (no secrets)."""
        return {
            "mode": self.mode,
            "users": self.users,
            "spawn_rate": self.spawn_rate,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "workers": self.workers,
            "path": self.path,
            "data": str(self.data_path) if self.data_path else None,
            "payloads": len(self.payloads) if self.payloads else 0,
            "user_ids": self.user_ids,
            "api_key": bool(self.api_key),
            "slos": [slo.text for slo in self.slos],
            "scale_latency": self.scale_latency,
        }


def load_payloads(path: Path, field_name: str = "text") -> list[str]:
    """Read the texts of a JSONL file (one ``{"text": ...}`` per line; blank lines skipped).

    Raises:
        UsageError: Missing or unreadable file, a line that is not a JSON object with a string ``text``
            (the message names the line), or no payload at all.

    """
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"Data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read data file {path}: {exc}") from None
    texts: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field_name), str):
            raise UsageError(
                f"{path} line {number}: expected an object with a string {field_name!r} field",
                hint='Each line of a payload file looks like {"text": "great movie"}',
            )
        texts.append(record[field_name])
    if not texts:
        raise UsageError(f"Data file {path} is empty: it holds no payloads", hint='Add lines like {"text": "..."}')
    return texts


def normalize_url(url: str) -> str:
    """Check a base URL (http or https with a host) and drop a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"Invalid URL {url!r}", hint="Give the server's base URL, e.g. http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise UsageError(f"Invalid URL {url!r}: bad port") from None
    return url.strip().rstrip("/")


def deployment_record(state_dir: Path, name: str) -> dict[str, Any]:
    """Read ``.prodai/deployments/<name>.json`` (written by ``prodai deploy``).

    Args:
        state_dir: The project's ``.prodai`` directory.
        name: The deployment's name.

    Raises:
        UsageError: No such deployment (the hint lists the known ones), or a record without a URL.

    """
    directory = state_dir / DEPLOYMENTS_DIRNAME
    path = directory / f"{name}.json"
    if "/" in name or "\\" in name or not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        hint = f"Known deployments: {', '.join(known)}" if known else "Deploy one first: prodai deploy REF"
        raise UsageError(f"Unknown deployment {name!r} (no {path})", hint=hint)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read deployment record {path}: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str):
        raise UsageError(f"Deployment record {path} has no 'url'")
    return record


def resolve_target(settings: Settings, *, url: str | None, deployment: str | None, model: str | None) -> Target:
    """The server to test and the registered version behind it.

    Args:
        settings: Loaded settings (the deployment records and the registry hang off them).
        url: ``--url``.
        deployment: ``--deployment`` (its record gives the URL, model and version).
        model: ``--model REF``: the version under test when the URL alone does not say.

    Raises:
        UsageError: Neither or both of url and deployment.
        ModelNotFoundError: The model or version is not in the registry.

    """
    if url and deployment:
        raise UsageError("Give --url or --deployment, not both")
    if not url and not deployment:
        raise UsageError("Nothing to test: give --url URL or --deployment NAME")
    model_name: str | None = None
    version_ref: str | None = None
    if deployment:
        record = deployment_record(settings.state_dir, deployment)
        url = record["url"]
        if record.get("model"):
            model_name = str(record["model"])
            version_ref = str(record["version"]) if record.get("version") is not None else None
    assert url is not None
    base = normalize_url(url)
    if model:
        from prodai_cli.refs import parse_model_ref

        ref = parse_model_ref(model)
        model_name, version_ref = ref.name, (ref.alias or (str(ref.version) if ref.version is not None else None))
    version: int | None = None
    if model_name:
        version = _registered_version(settings, model_name, version_ref)
    return Target(url=base, deployment=deployment, model=model_name, version=version)


def _registered_version(settings: Settings, name: str, version_ref: str | None) -> int:
    """The version number of ``name`` at ``version_ref`` (a number, ``v3``, an alias, or None for latest)."""
    from prodai_cli.config import AB_VERSION_PATTERN
    from prodai_cli.refs import ModelRef
    from prodai_cli.registry import Registry

    text = (version_ref or "").strip()
    number = re.fullmatch(AB_VERSION_PATTERN, text)
    if number:
        ref = ModelRef(name=name, version=int(number.group(1)))
    elif text:
        ref = ModelRef(name=name, alias=text)
    else:
        ref = ModelRef(name=name)
    return Registry(settings).get_version(ref).version


def check_reachable(url: str, timeout_s: float = 5.0) -> int:
    """Ask the server's readiness route; fail early when nothing answers or it is not ready.

    Returns:
        The HTTP status of ``/health/ready`` (any answer but 503 counts as reachable: a gateway may not
        route health checks).

    Raises:
        UsageError: Connection refused, DNS failure or timeout; or 503 (not ready).

    """
    import httpx

    try:
        response = httpx.get(url + READY_PATH, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise UsageError(
            f"Cannot reach {url}: {type(exc).__name__}: {exc}",
            hint="Start the server first (prodai serve, prodai deploy) or check --url",
        ) from None
    if response.status_code == 503:
        raise UsageError(
            f"{url} is not ready ({READY_PATH} answered 503)",
            hint="Wait until the model is loaded; a load test of a server that is starting or draining measures errors",
        )
    return response.status_code


# A 429 to the preflight request that asks to come back this soon is waited out once (ship's fresh probe key,
# a client's quota refilling); a longer Retry-After stops the run.
PREFLIGHT_MAX_RETRY_WAIT_S = 5.0


def preflight(
    url: str,
    *,
    path: str = "/predict",
    text: str = "prodai loadtest preflight",
    api_key: str | None = None,
    api_key_header: str = "X-API-Key",
    timeout_s: float = 30.0,
) -> int:
    """Send the load test's request once, before any load, and stop when the server refuses it.

    A load test whose every request gets 401, 403 or 429 measures nothing but the refusal (an error rate of
    100% and a CSV of 429s); saying so up front, with what to change, is what the user needs.

    Returns:
        The status of the request (anything but 401, 403 and 429: a 5xx is the load test's to measure).

    Raises:
        UsageError: The server refused the request (401, 403, 429), or it could not be sent.

    """
    import time

    import httpx

    headers = {api_key_header: api_key} if api_key else {}
    for attempt in range(2):
        try:
            response = httpx.post(url + path, json={"text": text}, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise UsageError(
                f"The first request to {url}{path} failed: {type(exc).__name__}: {exc}",
                hint="Check --url and that the server answers predictions",
            ) from None
        status = response.status_code
        reason = _reason(response)
        if status in (401, 403):
            key = f"the key in {api_key_header} was refused" if api_key else f"no API key was sent ({api_key_header})"
            hint = (
                "Pass a valid client key: --api-key KEY (or PRODAI_API_KEY); create one with "
                "prodai keys create --name loadtest on the server's config"
                if status == 401
                else "The key lacks the scope this route needs: create one with --scope predict"
            )
            raise UsageError(f"{url}{path} refused the load test's first request ({status}{reason}): {key}", hint=hint)
        if status == 429:
            retry = response.headers.get("retry-after", "")
            if attempt == 0 and retry.isdigit() and int(retry) <= PREFLIGHT_MAX_RETRY_WAIT_S:
                time.sleep(int(retry) + 0.2)
                continue
            raise UsageError(
                f"{url}{path} rate-limited the load test's first request (429{reason}; Retry-After: {retry or '-'})",
                hint="Wait for the limit to refill, and load-test with a key whose rate_limit.per_key admits the "
                "load (a load test measures the server, not its rate limiter)",
            )
        return status
    raise AssertionError("unreachable")  # pragma: no cover


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("reason")
    return f": {str(detail)[:160]}" if isinstance(detail, str) and detail else ""


def default_report_dir(state_dir: Path, target: Target | None) -> Path:
    """``<state_dir>/loadtests/<UTC time>-<deployment or host_port>/`` (``state_dir``: the project's ``.prodai``)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if target is None:
        label = "worker"
    elif target.deployment:
        label = target.deployment
    else:
        parts = urlsplit(target.url)
        label = f"{parts.hostname}_{parts.port}" if parts.port else str(parts.hostname)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    return state_dir / LOADTESTS_DIRNAME / f"{stamp}-{label}"


def build_plan(
    settings: Settings,
    *,
    url: str | None = None,
    deployment: str | None = None,
    model: str | None = None,
    users: int | None = None,
    spawn_rate: float | None = None,
    duration: str | None = None,
    warmup: str | None = None,
    slos: list[str] | None = None,
    data: Path | None = None,
    api_key: str | None = None,
    user_ids: int = 0,
    workers: int = 0,
    master: bool = False,
    worker: bool = False,
    master_host: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    master_bind_host: str = "*",
    report_dir: Path | None = None,
    check_target: bool = True,
    scale_latency: bool | None = None,
) -> LoadtestPlan:
    """Check every input and return a plan; config values fill what the caller leaves None.

    Order matters for the user: cheap syntax checks (SLOs, durations, numbers) come first, then the data
    file, then the registry and the network.

    Raises:
        UsageError: Any input problem (exit 2), before anything runs.

    """
    cfg = settings.config.loadtest
    if master and worker:
        raise UsageError("--master and --worker exclude each other")
    if worker:
        if master_host is None:
            raise UsageError("--worker needs --master-host HOST (the machine running prodai loadtest --master)")
        given = [
            name
            for name, value in (
                ("--url", url),
                ("--deployment", deployment),
                ("--data", data),
                ("--slo", slos),
                ("--api-key", api_key),
                ("--model", model),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} cannot be used with --worker",
                hint="A worker takes the target, payloads and options from its master",
            )
        _check_port(master_port, "--master-port")
        return LoadtestPlan(
            target=None, mode="worker", master_host=master_host, master_port=master_port, report_dir=report_dir
        )
    if master_host is not None:
        raise UsageError("--master-host is for --worker; the master binds --master-bind-host")

    slo_list = parse_slos(list(slos) if slos else list(cfg.slo))
    duration_s = parse_duration(duration if duration is not None else cfg.duration, what="--duration")
    warmup_s = parse_duration(warmup if warmup is not None else cfg.warmup, what="--warmup", allow_zero=True)
    if warmup_s >= duration_s:
        raise UsageError(
            f"--warmup ({warmup_s:g}s) must be shorter than --duration ({duration_s:g}s)",
            hint="The warm-up is the leading part of the run left out of the SLOs",
        )
    users = cfg.users if users is None else users
    spawn_rate = cfg.spawn_rate if spawn_rate is None else spawn_rate
    if users < 1:
        raise UsageError(f"--users must be at least 1, got {users}")
    if spawn_rate <= 0:
        raise UsageError(f"--spawn-rate must be above 0, got {spawn_rate:g}")
    if user_ids < 0:
        raise UsageError(f"--user-ids must be 0 or more, got {user_ids}")
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    if master and workers < 1:
        raise UsageError("--master needs --workers N: how many workers (started with --worker) to wait for")
    if master:
        _check_port(master_port, "--master-port")
    payloads = load_payloads(data) if data is not None else None

    target = resolve_target(settings, url=url, deployment=deployment, model=model)
    if check_target:
        check_reachable(target.url)
        if cfg.preflight:
            preflight(
                target.url,
                text=payloads[0] if payloads else "prodai loadtest preflight",
                api_key=api_key,
                api_key_header=settings.config.auth.header,
                timeout_s=cfg.request_timeout_s,
            )
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise UsageError(f"--report-dir {report_dir} exists and is not a directory")
    return LoadtestPlan(
        target=target,
        users=users,
        spawn_rate=spawn_rate,
        duration_s=duration_s,
        warmup_s=warmup_s,
        slos=slo_list,
        payloads=payloads,
        data_path=data,
        api_key=api_key,
        api_key_header=settings.config.auth.header,
        user_ids=user_ids,
        user_header=settings.config.ab.user_header,
        request_timeout_s=cfg.request_timeout_s,
        mode="master" if master else "local",
        workers=workers,
        master_port=master_port,
        master_bind_host=master_bind_host,
        worker_timeout_s=300.0 if master else 60.0,
        report_dir=report_dir or default_report_dir(settings.state_dir, target),
        scale_latency=cfg.scale_latency if scale_latency is None else scale_latency,
        max_latency_scale=cfg.max_latency_scale,
    )


def _check_port(port: int, option: str) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"{option} must be a TCP port (1-65535), got {port}")
