"""The production checklist: one small function per item, each proving its property where it can.

Every function takes the :class:`~prodai_cli.checks.context.CheckContext` and returns a
:class:`~prodai_cli.checks.result.CheckResult` whose evidence says what was observed on the live server
(statuses, headers, log lines, registry tags), not only what the config claims.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prodai_cli.checks.result import CheckResult, failed, passed, skipped, warned
from prodai_cli.errors import ModelNotFoundError, ProdaiError

if TYPE_CHECKING:
    import httpx

    from prodai_cli.abconfig import StaleVariant
    from prodai_cli.checks.context import CheckContext, ServedVersion
    from prodai_cli.registry import ModelVersionInfo

CheckFn = Callable[["CheckContext"], CheckResult]

# The series the server documents in prodai_cli/serving/metrics.py (dashboards and alerts read them).
EXPECTED_SERIES = (
    "prodai_requests_total",
    "prodai_request_latency_seconds",
    "prodai_batch_size",
    "prodai_queue_depth",
    "prodai_inflight_requests",
    "prodai_model_errors_total",
)
# A refused key-less request during the auth-failure lockout: wait this long at most, once, and ask again.
MAX_RETRY_AFTER_WAIT_S = 15.0
# The burst sends a wave of requests all at once: on a busy machine a server answers fewer requests a second
# than its limit refills, so a few requests at a time never drain the bucket, while a wave sized from the
# advertised limit reaches the limiter faster than it refills. A wave never opens more connections than this.
BURST_MAX_WAVE = 256
LOG_WAIT_S = 3.0


def _probe_text() -> str:
    # Lowercase letters and digits only: every tokenizer has them. Unique, so the first request is a miss.
    return f"prodai check probe {uuid.uuid4().hex[:12]}"


def _served_registered(ctx: CheckContext) -> tuple[list[ServedVersion], list[str]]:
    """The registered versions the server serves, and problems with the others."""
    served = ctx.served_versions()
    problems = [f"{v} is served from a directory, not from the registry" for v in served if not v.registered]
    if not served:
        problems.append("/health lists no model versions")
    return [v for v in served if v.registered], problems


def _registry_info(ctx: CheckContext, served: ServedVersion) -> ModelVersionInfo:
    from prodai_cli.refs import ModelRef
    from prodai_cli.registry import Registry

    return Registry(ctx.settings).get_version(ModelRef(name=served.name, version=int(served.version)))


def _key_or_skip(ctx: CheckContext, item: str) -> tuple[str | None, CheckResult | None]:
    """The key for ordinary requests, or a skip result saying why there is none."""
    key = ctx.request_key()
    if ctx.auth_enabled and key is None:
        return None, skipped(
            item,
            f"predictions need an API key and none is available: {ctx.key_problem()}",
            "Pass --api-key KEY (a client key; check sends it only a few requests)",
        )
    return key, None


def _age(iso: str | None) -> float | None:
    """Days since an ISO timestamp (None when missing or unreadable)."""
    if not iso:
        return None
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds() / 86400


def _show_age(days: float) -> str:
    if days < 1 / 24:
        return f"{max(days * 1440, 0):.0f} min"
    if days < 2:
        return f"{days * 24:.1f} h"
    return f"{days:.1f} days"


# --------------------------------------------------------------------------------------------------- items


def check_health(ctx: CheckContext) -> CheckResult:
    """``/health/live`` and ``/health/ready`` answer 200 and ``/health`` reports every model loaded."""
    live = ctx.client.get("/health/live")
    ready = ctx.client.get("/health/ready")
    health = ctx.health()
    evidence = (
        f"/health/live {live.status_code}, /health/ready {ready.status_code}, /health status {health.get('status')!r}"
    )
    if live.status_code == 200 and ready.status_code == 200:
        return passed("health", evidence)
    if ready.status_code == 503:
        reason = ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(ready.json().get("reason") or "")
        return failed(
            "health",
            f"{evidence}; not ready: {reason or 'no reason given'}",
            "Wait until the model is loaded (see the server's log for a load error), then run check again",
        )
    return failed("health", evidence, "Serve with prodai serve (it has /health/live and /health/ready)")


def check_registry(ctx: CheckContext) -> CheckResult:
    """Every served version is a registered version, and one of them carries an alias."""
    registered, problems = _served_registered(ctx)
    notes = []
    aliased = False
    for served in registered:
        try:
            info = _registry_info(ctx, served)
        except ModelNotFoundError:
            problems.append(f"{served} is not in the registry ({ctx.settings.tracking_uri.split('?')[0]})")
            continue
        if info.aliases:
            aliased = True
        notes.append(f"{served} registered, aliases: {', '.join(info.aliases) or 'none'}")
    if problems:
        return failed(
            "registry",
            "; ".join(problems + notes),
            "Serve registered versions: prodai register DIR --name NAME, then prodai serve --model NAME@production",
        )
    stale = _stale_variants(ctx)
    if stale:
        from prodai_cli.abconfig import resplit_command

        model = ctx.settings.config.ab.model or ""
        return warned(
            "registry",
            "; ".join(notes + [f"{s.describe(model)}: it still serves v{s.version}" for s in stale]),
            f"Make the variants follow their aliases again: {resplit_command(ctx.settings.config)} "
            "(the server picks the new split up without a restart)",
        )
    if not aliased:
        if ctx.pending_alias:
            notes.append(f"alias {ctx.pending_alias} moves here when ship passes")
            return passed("registry", "; ".join(notes))
        names = sorted({v.name for v in registered})
        return failed(
            "registry",
            "; ".join(notes) + "; no served version has an alias",
            f"Point an alias at it: prodai ship {registered[0]} (gated), or prodai models promote "
            f"{names[0]} {registered[0].version} --alias production",
        )
    return passed("registry", "; ".join(notes))


def _stale_variants(ctx: CheckContext) -> list[StaleVariant]:
    """A/B variants set by alias whose alias moved since (see docs/ab.md); empty when that cannot be asked."""
    from prodai_cli.abconfig import registry_alias_version, stale_variants

    try:
        return stale_variants(ctx.settings.config, registry_alias_version(ctx.settings))
    except ProdaiError:
        return []


def check_docs(ctx: CheckContext) -> CheckResult:
    """``/docs`` and ``/openapi.json`` answer, and every served version has a description."""
    docs = ctx.client.get("/docs")
    spec = ctx.client.get("/openapi.json")
    problems = []
    assets_note = ""
    if docs.status_code != 200:
        problems.append(f"/docs answered {docs.status_code}")
    else:
        offline_problems, assets_note = _docs_offline(ctx, docs.text)
        problems.extend(offline_problems)
    paths: dict[str, object] = {}
    if spec.status_code == 200:
        try:
            paths = spec.json().get("paths") or {}
        except (ValueError, AttributeError):
            problems.append("/openapi.json is not a JSON object")
    else:
        problems.append(f"/openapi.json answered {spec.status_code}")
    if spec.status_code == 200 and "/predict" not in paths:
        problems.append("/openapi.json does not describe /predict")
    registered, served_problems = _served_registered(ctx)
    undescribed: list[str] = []
    described: list[str] = []
    for served in registered:
        try:
            info = _registry_info(ctx, served)
        except ModelNotFoundError:
            undescribed.append(f"{served} (not in the registry)")
            continue
        (described if info.description.strip() else undescribed).append(str(served))
    if undescribed:
        problems.append(f"no description: {', '.join(undescribed)}")
    problems.extend(served_problems)
    evidence = f"/docs {docs.status_code}{assets_note}, /openapi.json {spec.status_code} ({len(paths)} paths)"
    if described:
        evidence += f"; described: {', '.join(described)}"
    if problems:
        offline = any("external host" in p or "asset" in p or "no script" in p for p in problems)
        hints = []
        if offline:
            hints.append(
                "Serve /docs with its assets from the server itself (prodai serve does: Swagger UI from the "
                "swagger-ui-bundle package under /docs/assets/)"
            )
        if undescribed or not offline:
            hints.append(
                "Describe versions when registering (prodai register DIR --name NAME --description TEXT); "
                "an existing version's description can be set in the MLflow UI"
            )
        hint = "; ".join(hints)
        return failed("docs", f"{evidence}; {'; '.join(problems)}", hint)
    return passed("docs", evidence)


def _docs_offline(ctx: CheckContext, html: str) -> tuple[list[str], str]:
    """Problems with ``/docs`` offline (assets from other hosts, or its own assets not answering), and a note."""
    from prodai_cli.serving.docs import external_hosts, local_assets

    problems = []
    hosts = external_hosts(html)
    if hosts:
        problems.append(f"/docs loads assets from external host(s) {', '.join(hosts)}: it is blank offline")
    assets = local_assets(html)
    broken = [f"{path} {status}" for path in assets if (status := ctx.client.get(path).status_code) != 200]
    if broken:
        problems.append(f"/docs assets do not answer: {', '.join(broken)}")
    if not assets and not hosts:
        problems.append("/docs loads no script: it is not an interactive API page")
    note = f" ({len(assets)} assets served by the server, no external host)" if assets and not problems else ""
    return problems, note


def _metric_names(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            # The parser strips _total from counter families; the exposed samples carry it.
            names.add(f"{family.name}_total")
    return names


def check_metrics(ctx: CheckContext) -> CheckResult:
    """``/metrics`` answers in Prometheus format with every documented series."""
    response = ctx.client.get("/metrics")
    if response.status_code in (401, 403) and ctx.request_key():
        response = ctx.client.get("/metrics", headers=ctx.headers(ctx.request_key()))
    if response.status_code != 200:
        hint = "Set monitoring.metrics: true in prodai.yaml and restart the server (Prometheus scrapes /metrics)"
        if response.status_code in (401, 403):
            hint = "Let Prometheus scrape /metrics without a client key (or pass --api-key)"
        return failed("metrics", f"GET /metrics answered {response.status_code}", hint)
    try:
        names = _metric_names(response.text)
    except ValueError as exc:
        return failed("metrics", f"/metrics is not Prometheus text: {exc}", "Serve /metrics with prometheus_client")
    missing = [series for series in EXPECTED_SERIES if series not in names]
    if missing:
        return failed(
            "metrics",
            f"/metrics lacks {', '.join(missing)} ({len(names)} series exposed)",
            "Run a prodai server of this release: dashboards and alerts read these series",
        )
    return passed("metrics", f"/metrics 200 with all {len(EXPECTED_SERIES)} expected series ({len(names)} in all)")


def _log_evidence(ctx: CheckContext, request_id: str) -> CheckResult | None:
    """Judge the server's own log lines, when they can be read from here (None otherwise)."""
    source = ctx.target.log_source
    if source is None:
        return None
    deadline = time.monotonic() + LOG_WAIT_S
    lines: list[str] = []
    mine: list[str] = []
    while True:
        try:
            lines = [line for line in source().splitlines() if line.strip()]
        except ProdaiError as exc:
            return failed("logging", f"cannot read the server's log: {exc.message}", exc.hint or "")
        mine = [line for line in lines if request_id in line]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not mine:
        return failed(
            "logging",
            f"no log line carries the request id {request_id} ({len(lines)} lines read)",
            "Set monitoring.access_log: true (one JSON line per request, with its id)",
        )
    try:
        record = json.loads(mine[-1])
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("request_id") != request_id:
        return failed(
            "logging",
            f"the request's log line is not a JSON object with its request_id: {mine[-1][:120]!r}",
            "Set monitoring.log_format: json",
        )
    plain = []
    for line in lines:
        try:
            if not isinstance(json.loads(line), dict):
                plain.append(line)
        except ValueError:
            plain.append(line)
    fields = ", ".join(sorted(record)[:8])
    evidence = f"X-Request-ID echoed; its log line is JSON ({fields})"
    if plain:
        return warned(
            "logging",
            f"{evidence}; but {len(plain)} of {len(lines)} log lines are not JSON, e.g. {plain[0][:100]!r}",
            "Route every library's output through the server's logging (warnings printed to stderr bypass it)",
        )
    return passed("logging", f"{evidence}; all {len(lines)} log lines read parse as JSON")


def check_logging(ctx: CheckContext) -> CheckResult:
    """Logs are JSON lines with a request id, and the server echoes ``X-Request-ID``."""
    request_id = f"prodai-check-{uuid.uuid4().hex[:12]}"
    response = ctx.client.get("/health/live", headers={"X-Request-ID": request_id})
    echoed = response.headers.get("x-request-id")
    if echoed != request_id:
        return failed(
            "logging",
            f"X-Request-ID {request_id} was not echoed (got {echoed!r})",
            "Serve through prodai's server (it echoes X-Request-ID); a proxy in front must pass the header on",
        )
    monitoring = ctx.settings.config.monitoring
    where = ctx.settings.path.name if ctx.settings.path else "embedded defaults"
    if monitoring.log_format != "json":
        return failed(
            "logging",
            f"X-Request-ID echoed, but monitoring.log_format is {monitoring.log_format!r} ({where})",
            "Set monitoring.log_format: json (log shippers parse one JSON object per line)",
        )
    if not monitoring.access_log:
        return failed(
            "logging",
            f"X-Request-ID echoed, but monitoring.access_log is false ({where}): requests leave no log line",
            "Set monitoring.access_log: true",
        )
    judged = _log_evidence(ctx, request_id)
    if judged is not None:
        return judged
    return passed(
        "logging",
        f"X-Request-ID echoed; monitoring.log_format json and access_log on ({where}); "
        "the server's log is not readable from here",
    )


def check_errors(ctx: CheckContext) -> CheckResult:
    """Malformed requests get 4xx (never 5xx), and a fallback version is configured."""
    key, skip = _key_or_skip(ctx, "errors")
    if skip is not None:
        return skip
    base = ctx.headers(key)
    json_headers = {**base, "Content-Type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("invalid JSON", b'{"text": ', json_headers),
        ("text not a string", b'{"text": 5}', json_headers),
        ("unknown field", b'{"text": "x", "prodai_check": 1}', json_headers),
        ("empty object", b"{}", json_headers),
        ("text/plain body", b"hello", {**base, "Content-Type": "text/plain"}),
    ]
    statuses: dict[str, int] = {}
    for name, body, headers in cases:
        statuses[name] = ctx.client.post("/predict", content=body, headers=headers).status_code
    shown = ", ".join(f"{name} -> {status}" for name, status in statuses.items())
    if any(status in (401, 403) for status in statuses.values()):
        return failed("errors", f"the key was refused: {shown}", "Pass a valid --api-key")
    if any(status == 429 for status in statuses.values()):
        return skipped("errors", f"rate limited while probing: {shown}", "Run check again after Retry-After")
    server_errors = [name for name, status in statuses.items() if status >= 500]
    accepted = [name for name, status in statuses.items() if status < 400]
    if server_errors or accepted:
        what = []
        if server_errors:
            what.append(f"5xx for {', '.join(server_errors)}")
        if accepted:
            what.append(f"accepted {', '.join(accepted)}")
        return failed(
            "errors",
            f"{'; '.join(what)} ({shown})",
            "Malformed input must get 4xx with a reason: serve with prodai's server (validation before the model)",
        )
    ab = ctx.settings.config.ab
    live = len(ctx.served_versions())
    if ab.enabled and (len(ab.variants) > 1 or ab.fallback):
        fallback = ab.fallback or "the highest-weight healthy variant"
        return passed(
            "errors",
            f"malformed input -> 4xx ({shown}); fallback: {len(ab.variants)} A/B variants, failures go to "
            f"{fallback}; {live} version(s) loaded here",
        )
    return warned(
        "errors",
        f"malformed input -> 4xx ({shown}); but no fallback: "
        + ("ab is off" if not ab.enabled else "ab has one variant and no ab.fallback"),
        "Split traffic over two versions (prodai ab-set v1=0.9 v2=0.1): a failing variant's traffic then goes "
        "to the other through its circuit breaker",
    )


def check_cache(ctx: CheckContext) -> CheckResult:
    """The same request twice: the second answer comes from the cache (``X-Cache: HIT``)."""
    key, skip = _key_or_skip(ctx, "cache")
    if skip is not None:
        return skip
    text = _probe_text()
    first = ctx.predict(text, key=key)
    second = ctx.predict(text, key=key)
    if first.status_code != 200 or second.status_code != 200:
        return failed(
            "cache",
            f"the probe requests answered {first.status_code} and {second.status_code}",
            "See the errors and health items; the cache can only be checked on successful predictions",
        )
    states = (first.headers.get("x-cache"), second.headers.get("x-cache"))
    evidence = f"same request twice: X-Cache {states[0] or '-'} then {states[1] or '-'}"
    cache = ctx.settings.config.cache
    if states[1] == "HIT":
        return passed("cache", f"{evidence} ({cache.backend} backend)")
    if states[1] is None:
        hint = (
            "Set cache.enabled: true in prodai.yaml"
            if not cache.enabled
            else "The server sends no X-Cache header: serve with a prodai server that has the response cache"
        )
        return failed("cache", f"{evidence}: no X-Cache header", hint)
    if states[1] == "BYPASS":
        hint = (
            "Set cache.enabled: true in prodai.yaml"
            if not cache.enabled
            else "The cache backend is unreachable: check redis_url and that Redis is up (requests bypass it)"
        )
        return failed("cache", f"{evidence}: the cache is bypassed", hint)
    return failed(
        "cache",
        f"{evidence}: a repeated request was not served from the cache",
        "Check cache.max_entry_bytes (larger answers are not stored) and cache.ttl_seconds",
    )


def _plaintext_keys(ctx: CheckContext) -> tuple[list[str], int]:
    """Places in the config files that hold what looks like a key; and how many key records exist."""
    from prodai_cli.keys import KEY_PATTERN, keys_file, load_key_snapshot

    settings = ctx.settings
    files = [p for p in (settings.path, keys_file(settings)) if p is not None and p.is_file()]
    found = []
    pattern = re.compile(rf"(?<![A-Za-z0-9_\-]){KEY_PATTERN.pattern}(?![A-Za-z0-9_\-])")
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if pattern.search(line):
                found.append(f"{path.name} line {number}")
    records = load_key_snapshot(settings).records if settings.path is not None else tuple(settings.config.auth.keys)
    # The temporary probe key of this run is not one of the server's clients.
    return found, sum(1 for record in records if not record.name.startswith(settings.config.check.probe_key_name))


def check_security(ctx: CheckContext) -> CheckResult:
    """A request without a key gets 401, and the config holds only key hashes, never a key."""
    response = ctx.predict(_probe_text(), key=None)
    if response.status_code == 429:
        retry = response.headers.get("retry-after", "")
        if retry.isdigit() and int(retry) <= MAX_RETRY_AFTER_WAIT_S:
            time.sleep(int(retry) + 0.5)
            response = ctx.predict(_probe_text(), key=None)
    status = response.status_code
    leaks, records = _plaintext_keys(ctx)
    stored = f"{records} key record(s), sha256 hashes only" if not leaks else ""
    if leaks:
        return failed(
            "security",
            f"a plaintext API key is in {', '.join(leaks)} (no-key request: {status})",
            "Revoke that key (prodai keys revoke NAME), delete it from the file, and create a new one "
            "(prodai keys create stores only its hash)",
        )
    if status == 401:
        challenge = response.headers.get("www-authenticate")
        evidence = f"no key -> 401 (WWW-Authenticate: {challenge or 'missing'}); {stored}"
        if not challenge:
            return warned("security", evidence, "A 401 should carry WWW-Authenticate (RFC 9110)")
        return passed("security", evidence)
    if status == 429:
        return warned(
            "security",
            f"no key -> 429 (the failed-authentication limit answered first, so 401 was not seen); {stored}",
            "Run check again in a minute (rate_limit.auth_failures allows 5 failed attempts a minute per IP)",
        )
    if 200 <= status < 300:
        return failed(
            "security",
            f"a request without an API key was answered {status}: authentication is off; {stored}",
            "Set auth.enabled: true and create client keys with prodai keys create --name NAME "
            "(the server picks keys up without a restart)",
        )
    return failed("security", f"a request without an API key got {status}, not 401; {stored}", "Set auth.enabled: true")


async def _burst(
    ctx: CheckContext, key: str | None, text: str, total: int, wave: int
) -> tuple[httpx.Response | None, Counter[int], int, float, int | None]:
    """Send up to ``total`` identical requests in waves of ``wave`` at once, until one gets 429.

    Returns:
        The first 429 (or None), the statuses seen, the requests sent, the seconds taken, and the lowest
        ``RateLimit-Remaining`` an admitted request carried (None when no answer had one).

    """
    import asyncio

    import httpx

    headers = ctx.headers(key)
    statuses: Counter[int] = Counter()
    refused: list[httpx.Response] = []
    lowest: list[int] = []
    sent = 0
    started = time.monotonic()
    limits = httpx.Limits(max_connections=wave, max_keepalive_connections=wave)
    timeout = ctx.settings.config.check.request_timeout_s
    async with httpx.AsyncClient(base_url=ctx.url, timeout=timeout, limits=limits) as client:

        async def one() -> None:
            response = await client.post("/predict", json={"text": text}, headers=headers)
            statuses[response.status_code] += 1
            remaining = response.headers.get("ratelimit-remaining", "")
            if response.status_code == 429:
                refused.append(response)
            elif remaining.isdigit():
                lowest.append(int(remaining))

        while sent < total and not refused:
            size = min(wave, total - sent)
            sent += size
            await asyncio.gather(*(one() for _ in range(size)))
    return (refused[0] if refused else None), statuses, sent, time.monotonic() - started, min(lowest, default=None)


def check_rate_limit(ctx: CheckContext) -> CheckResult:
    """A burst from a key dedicated to checks ends in 429 with ``Retry-After``.

    The burst comes in waves sized from the limit the server advertises (``RateLimit-Limit``), each sent at
    once, so it outruns the refill even when the server is slow; only a 429 passes (a server that merely
    sends the headers, or none, fails).
    """
    import asyncio

    key: str | None = None
    if ctx.auth_enabled:
        key = ctx.burst_key()
        if key is None:
            return skipped(
                "rate_limit",
                f"the burst needs a key dedicated to checks (a client's key would use up its quota): "
                f"{ctx.key_problem()}",
                "Pass --probe-key KEY: a key made for checks (prodai keys create --name prodai-check on the "
                "server's config)",
            )
    text = _probe_text()
    first = ctx.predict(text, key=key)
    if first.status_code in (401, 403):
        return failed("rate_limit", f"the probe key was refused ({first.status_code})", "Pass a valid --probe-key")
    limit = first.headers.get("ratelimit-limit")
    cfg = ctx.settings.config
    budget = cfg.check.burst_max_requests
    # Twice the limit and some: the refill during one wave cannot admit all of it.
    wave = 2 * int(limit) + 20 if limit and limit.isdigit() else 200
    wave = min(wave, BURST_MAX_WAVE, budget)
    # Three waves: a server that admits all three is not limiting at the rate it advertises.
    refused, statuses, sent, seconds, lowest = asyncio.run(_burst(ctx, key, text, min(budget, 3 * wave), wave))
    seen = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
    who = "the probe key" if key else "no key (auth off: the per-IP limit)"
    if refused is not None:
        retry = refused.headers.get("retry-after", "")
        headers = ", ".join(
            f"{name}: {refused.headers[name]}"
            for name in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
            if name in refused.headers
        )
        evidence = (
            f"burst with {who}: 429 after {sent} requests (waves of {wave}) in {seconds:.1f} s ({seen}); "
            f"Retry-After: {retry}"
        )
        if headers:
            evidence += f"; {headers}"
        if not (retry.isdigit() and int(retry) >= 1):
            return failed("rate_limit", evidence, "A 429 must say when to come back: send Retry-After (seconds)")
        return passed("rate_limit", evidence)
    evidence = f"burst with {who}: no 429 in {sent} requests (waves of {wave}; {seconds:.1f} s; {seen})"
    if lowest is not None:
        evidence += f"; lowest RateLimit-Remaining seen: {lowest}"
    if not cfg.rate_limit.enabled:
        hint = "Set rate_limit.enabled: true in prodai.yaml (per key and per IP, with burst)"
    elif limit is None:
        hint = "The server sends no RateLimit-* headers: serve with a prodai server that enforces rate_limit"
    else:
        hint = (
            f"The limits admit more than {sent} requests at once (RateLimit-Limit {limit}): lower "
            "rate_limit.per_key/per_ip, or raise check.burst_max_requests"
        )
    return failed("rate_limit", evidence, hint)


def check_loadtest(ctx: CheckContext) -> CheckResult:
    """Every served version passed a load test (``prodai loadtest`` or ``prodai ship``) recently enough.

    A run that several versions answered (an A/B split) counts for each of them on its own figures; the
    evidence says so. The fix hint names the version that lacks a load test, not merely the first one served.
    """
    max_days = ctx.settings.config.check.loadtest_max_age_days
    registered, problems = _served_registered(ctx)
    notes = []
    untested: list[ServedVersion] = []
    for served in registered:
        try:
            tags = _registry_info(ctx, served).tags
        except ModelNotFoundError:
            problems.append(f"{served} is not in the registry")
            continue
        verdict = tags.get("prodai.loadtest.passed")
        days = _age(tags.get("prodai.loadtest.at"))
        run = (tags.get("prodai.loadtest.run_id") or "")[:8]
        mixed = tags.get("prodai.loadtest.mixed") or ""
        shared = f"; the run was mixed: {mixed}" if mixed else ""
        if verdict is None:
            problems.append(f"{served} was never load-tested")
            untested.append(served)
        elif verdict != "true":
            ago = f" {_show_age(days)} ago" if days is not None else ""
            problems.append(f"{served}: its last load test failed{ago} (run {run}{shared})")
            untested.append(served)
        elif days is None or days > max_days:
            shown = _show_age(days) if days is not None else "of unknown age"
            problems.append(f"{served}: its last passing load test is {shown} old (max {max_days:g} days)")
            untested.append(served)
        else:
            requests = tags.get("prodai.loadtest.requests")
            own = f", {requests} requests answered by it" if mixed and requests else ""
            notes.append(f"{served} passed {_show_age(days)} ago (run {run}{own}{shared})")
    if problems:
        example = str(untested[0]) if untested else str(registered[0]) if registered else "NAME/VERSION"
        # Behind an A/B split a load test reaches every arm only with many user ids; its evidence then goes
        # to each version that answered.
        spread = " --user-ids 100" if len(registered) > 1 else ""
        return failed(
            "loadtest",
            "; ".join(problems + notes),
            f"prodai loadtest --url {ctx.url} --model {example}{spread} (or prodai ship {example}, which "
            "load-tests first)",
        )
    return passed("loadtest", "; ".join(notes))


CHECKS: dict[str, CheckFn] = {
    "health": check_health,
    "registry": check_registry,
    "docs": check_docs,
    "metrics": check_metrics,
    "logging": check_logging,
    "errors": check_errors,
    "cache": check_cache,
    "security": check_security,
    "rate_limit": check_rate_limit,
    "loadtest": check_loadtest,
}
