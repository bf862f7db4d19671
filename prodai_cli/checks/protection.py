"""Checklist items about the server's protections: errors, the cache, authentication, rate limits."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prodai_cli.checks.common import key_or_skip, probe_text
from prodai_cli.checks.result import CheckResult, failed, passed, skipped, warned

if TYPE_CHECKING:
    from prodai_cli.checks.context import CheckContext


MAX_RETRY_AFTER_WAIT_S = 15.0
# The burst sends a wave of requests all at once: on a busy machine a server answers fewer requests a second
# than its limit refills, so a few requests at a time never drain the bucket, while a wave sized from the
# advertised limit reaches the limiter faster than it refills. A wave never opens more connections than this.
BURST_MAX_WAVE = 256
# The raw connections a wave is pipelined over.
BURST_CONNECTIONS = 8


def check_errors(ctx: CheckContext) -> CheckResult:
    """Malformed requests get 4xx (never 5xx), and a fallback version is configured."""
    key, skip = key_or_skip(ctx, "errors")
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
    key, skip = key_or_skip(ctx, "cache")
    if skip is not None:
        return skip
    text = probe_text()
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
    response = ctx.predict(probe_text(), key=None)
    if response.status_code == 429:
        retry = response.headers.get("retry-after", "")
        if retry.isdigit() and int(retry) <= MAX_RETRY_AFTER_WAIT_S:
            time.sleep(int(retry) + 0.5)
            response = ctx.predict(probe_text(), key=None)
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


@dataclass
class BurstAnswer:
    """One answer of the burst: its status and the headers the verdict reads (lower-case names)."""

    status_code: int
    headers: dict[str, str]


async def _burst(
    ctx: CheckContext, key: str | None, text: str, total: int, wave: int
) -> tuple[BurstAnswer | None, Counter[int], int, float, int | None]:
    """Send up to ``total`` identical requests in waves of ``wave`` at once, until one gets 429.

    A wave is written pipelined (HTTP/1.1) over :data:`BURST_CONNECTIONS` raw connections, one write each:
    the client spends next to no CPU per request, so on a busy machine the requests still reach the limiter
    faster than it refills (a general-purpose client opening a connection per request could not: it sent
    about 16 a second beside eight CPU-bound processes, under a refill of 50 a second).

    Returns:
        The first 429 (or None), the statuses seen, the requests sent, the seconds taken, and the lowest
        ``RateLimit-Remaining`` an admitted request carried (None when no answer had one).

    """
    import asyncio
    import json
    import ssl
    from urllib.parse import urlsplit

    url = urlsplit(ctx.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    path = (url.path.rstrip("/") or "") + "/predict"
    body = json.dumps({"text": text}).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in ctx.headers(key).items() if name.lower() != "content-type"]
    request = ("\r\n".join([*head, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode() + body
    timeout = ctx.settings.config.check.request_timeout_s
    statuses: Counter[int] = Counter()
    refused: list[BurstAnswer] = []
    lowest: list[int] = []
    sent = 0
    started = time.monotonic()

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if url.scheme == "https" else None
        )
        try:
            writer.write(request * count)
            await writer.drain()
            for _ in range(count):
                answer = await _read_answer(reader)
                statuses[answer.status_code] += 1
                remaining = answer.headers.get("ratelimit-remaining", "")
                if answer.status_code == 429:
                    refused.append(answer)
                elif remaining.isdigit():
                    lowest.append(int(remaining))
        finally:
            writer.close()

    while sent < total and not refused:
        size = min(wave, total - sent)
        sent += size
        shares = [
            size // BURST_CONNECTIONS + (1 if i < size % BURST_CONNECTIONS else 0) for i in range(BURST_CONNECTIONS)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(connection(n) for n in shares if n)), timeout=timeout + size * 0.05)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            statuses[0] += 1  # the verdict says what happened; 0 stands for "no answer"
            raise BurstFailed(f"the burst's connections failed: {type(exc).__name__}: {exc}") from None
    return (refused[0] if refused else None), statuses, sent, time.monotonic() - started, min(lowest, default=None)


class BurstFailed(Exception):
    """The burst could not be sent or its answers read (the server closed or stalled the connections)."""


async def _read_answer(reader: asyncio.StreamReader) -> BurstAnswer:
    """One HTTP/1.1 response off a pipelined connection (Content-Length bodies, which the server sends)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return BurstAnswer(status, headers)


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
    text = probe_text()
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
    try:
        refused, statuses, sent, seconds, lowest = asyncio.run(_burst(ctx, key, text, min(budget, 3 * wave), wave))
    except BurstFailed as exc:
        return failed("rate_limit", str(exc), "See the server's log: it closed or stalled pipelined connections")
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
