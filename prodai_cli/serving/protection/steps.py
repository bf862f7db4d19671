"""Server protection wired into the request path: API keys, rate limits, response cache, input/output hygiene.

:class:`Protection` builds the parts of :mod:`~.auth`, :mod:`~.ratelimit`, :mod:`~.cache` and
:mod:`~.filters` from the config and plugs them into the pipeline's seams (see :mod:`prodai_cli.serving.pipeline`):

- guard (before the body is parsed): the client IP (the TCP peer, or ``Forwarded`` / ``X-Forwarded-For``
  from a peer in ``rate_limit.trusted_proxies``); with ``auth.enabled``: the key; a key that fails gets 429
  while its IP is over the failed-authentication limit (asked only for IPs that failed here recently, see
  :meth:`Protection._failed_recently`), else 401/403 with ``WWW-Authenticate`` and the failure is counted
  against the IP; a key that verifies is never refused by that limit; then the per-key and per-IP limits,
  all-or-nothing (429 with ``Retry-After``).
  ``RateLimit-*`` headers go on every answer the limiter decided.
- input hook: Unicode NFC and control characters removed (``filters.normalize_input``); the length limit
  holds after that too.
- cache (around the model): one entry per text, keyed by model name, *resolved* version, the normalised text
  and whatever else changes the answer (the cascade, the redaction rules). A batch request shares entries
  with single requests and with other batches; identical concurrent misses run the model once (per
  process); answers a fallback version gave are not stored. ``X-Cache`` is ``HIT`` (every text from the
  cache), ``MISS`` (something computed) or ``BYPASS`` (cache off or unreachable).
- output filter: redaction of the strings in every answer, before it is cached.

Series (on the server's registry): ``prodai_auth_failures_total{reason}``,
``prodai_ratelimit_denied_total{rule}``, ``prodai_ratelimit_fallbacks_total`` (decisions taken in memory
because Redis failed: fail-open), ``prodai_ratelimit_redis_errors_total``, ``prodai_cache_hits_total``,
``prodai_cache_misses_total``, ``prodai_cache_coalesced_total`` (answered by an identical request in flight),
``prodai_cache_bypasses_total``, ``prodai_cache_errors_total``, ``prodai_cache_stores_total``,
``prodai_redactions_total{pattern}``, ``prodai_auth_key_reloads_total{result}``. Counts kept by the
components are copied into these before every scrape (and, with several workers, after every request: another
worker may answer the scrape).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from prodai_cli.serving.ab.router import Assignment
from prodai_cli.serving.errors import Forbidden, InvalidRequest, TooManyRequests, Unauthorized
from prodai_cli.serving.pipeline import Inference, settle
from prodai_cli.serving.protection.auth import KeyStore, startup_warnings
from prodai_cli.serving.protection.cache import CacheResult, ResponseCache, cache_key
from prodai_cli.serving.protection.filters import OutputFilter, normalize_text
from prodai_cli.serving.protection.ratelimit import RateLimiter

if TYPE_CHECKING:
    from prometheus_client import Counter

    from prodai_cli.config import AuthConfig, CacheConfig, FiltersConfig, RateLimitConfig, Scope
    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.pipeline import Infer, RequestContext, Route

logger = logging.getLogger("prodai.serving")

CacheValue = dict[str, Any]
MAX_REMEMBERED_IPS = 100_000


def _storable(value: CacheValue) -> bool:
    # A fallback version's answer is not what the assigned version would say: never cache it under its key.
    return value.get("fallback") is None


class ProtectionMetrics:
    """The protection series, and the copying of the components' own counters into them."""

    def __init__(self, metrics: ServerMetrics) -> None:
        from prometheus_client import Counter

        registry = metrics.registry
        self.auth_failures = Counter(
            "prodai_auth_failures", "Refused API keys, by reason", ["reason"], registry=registry
        )
        self.denied = Counter(
            "prodai_ratelimit_denied",
            "Requests refused with 429, by the rule that refused",
            ["rule"],
            registry=registry,
        )
        self.bridged: dict[str, Counter] = {
            name: Counter(name, help_text, registry=registry)
            for name, help_text in (
                ("prodai_ratelimit_fallbacks", "Rate-limit decisions taken in memory because Redis failed (fail-open)"),
                ("prodai_ratelimit_redis_errors", "Failed or timed-out Redis calls of the rate limiter"),
                ("prodai_cache_hits", "Texts answered from the cache"),
                ("prodai_cache_misses", "Texts computed and offered to the cache"),
                ("prodai_cache_coalesced", "Texts answered by an identical request computing at the same time"),
                ("prodai_cache_bypasses", "Texts computed without the cache (off, or its backend unavailable)"),
                ("prodai_cache_errors", "Cache backend failures (Redis errors and timeouts, bad entries)"),
                ("prodai_cache_stores", "Answers written to the cache"),
            )
        }
        self.redactions = Counter(
            "prodai_redactions", "Sensitive matches redacted from answers, by pattern", ["pattern"], registry=registry
        )
        self.key_reloads = Counter(
            "prodai_auth_key_reloads", "API key reloads after a file changed, by result", ["result"], registry=registry
        )
        self._seen: dict[str, float] = {}

    def _push(self, name: str, value: float, counter: Any) -> None:
        delta = value - self._seen.get(name, 0.0)
        if delta > 0:
            counter.inc(delta)
            self._seen[name] = value

    def sync(self, protection: Protection) -> None:
        """Copy the components' counters (plain ints) into the Prometheus series."""
        limiter, cache = protection.limiter.stats(), protection.cache.stats()
        values = {
            "prodai_ratelimit_fallbacks": limiter["fallbacks"],
            "prodai_ratelimit_redis_errors": limiter["errors"],
            "prodai_cache_hits": cache["hits"],
            "prodai_cache_misses": cache["misses"],
            "prodai_cache_coalesced": cache["coalesced"],
            "prodai_cache_bypasses": cache["bypasses"],
            "prodai_cache_errors": cache["errors"],
            "prodai_cache_stores": cache["stores"],
        }
        for name, value in values.items():
            self._push(name, value, self.bridged[name])
        for pattern, count in protection.output_filter.redactions.items():
            self._push(f"redactions:{pattern}", count, self.redactions.labels(pattern))
        if protection.keys is not None:
            self._push("key_reloads:ok", protection.keys.reloads, self.key_reloads.labels("success"))
            self._push("key_reloads:error", protection.keys.reload_errors, self.key_reloads.labels("failure"))


class Protection:
    """Auth, rate limits, cache and filters of one server process, built from their config sections.

    Args:
        auth: The ``auth`` section (the header the key comes in).
        rate_limit: The ``rate_limit`` section.
        cache: The ``cache`` section.
        filters: The ``filters`` section.
        keys: The API keys to verify against (see :meth:`KeyStore.from_files`); None: auth is off.
        redis_url: The top-level ``redis_url`` (the Redis backends of the limiter and the cache).
        max_text_chars: ``serving.max_text_chars``, which still holds after input normalisation.
        metrics: The server's metrics (the protection series are added to its registry).

    Raises:
        ConfigError: A Redis backend without ``redis_url``.

    """

    def __init__(
        self,
        auth: AuthConfig,
        rate_limit: RateLimitConfig,
        cache: CacheConfig,
        filters: FiltersConfig,
        *,
        keys: KeyStore | None,
        redis_url: str | None,
        max_text_chars: int,
        metrics: ServerMetrics,
    ) -> None:
        self.auth_header = auth.header
        self.keys = keys
        self.limiter = RateLimiter(rate_limit, redis_url)
        # A miss is answered as soon as it is computed; the Redis write follows off the request's latency.
        self.cache = ResponseCache(cache, redis_url, background_stores=True)
        self.output_filter = OutputFilter(filters)
        self.normalize_input = filters.normalize_input
        self.max_text_chars = max_text_chars
        # The cached answer is the *filtered* one: servers sharing a Redis with other rules must not mix.
        rules = json.dumps(filters.model_dump(mode="json"), sort_keys=True)
        self._filters_id = hashlib.sha256(rules.encode()).hexdigest()[:12] if self.output_filter.active else ""
        self.metrics = ProtectionMetrics(metrics)
        # IPs this process saw fail authentication, until their failed-auth bucket has surely drained: only
        # they need the lockout check (a Redis round trip) before their key is verified.
        rule = rate_limit.auth_failures
        self._lockout_memory_s = rule.period_s * (rule.rate + rule.burst) / rule.rate
        self._failed_ips: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ lifecycle
    def describe(self) -> dict[str, Any]:
        """What is on, for the start-up log (never key material)."""
        return {
            "auth": "on" if self.keys is not None else "OFF",
            "active_keys": self.keys.active_count() if self.keys is not None else 0,
            "rate_limit": self.limiter.config.backend if self.limiter.enabled else "off",
            "cache": self.cache.config.backend if self.cache.enabled else "off",
            "redaction": self.output_filter.active,
        }

    def log_startup(self, host: str, port: int | None) -> None:
        """Log what is on, and loudly what is not (auth off, or on without a usable key)."""
        logger.info("protection", extra=self.describe())
        for warning in startup_warnings(self.keys is not None, self.keys, host, port):
            logger.warning(warning)

    def sync_metrics(self, _ctx: RequestContext | None = None) -> None:
        """Copy the components' counters into Prometheus (before each scrape; with workers, after each request)."""
        self.metrics.sync(self)

    async def aclose(self) -> None:
        """Release Redis connections (at shutdown)."""
        await self.cache.aclose()
        await self.limiter.aclose()

    # ------------------------------------------------------------------------------------ guard
    async def authorize(self, ctx: RequestContext, scope: Scope = "predict", *, defer_limits: bool = False) -> None:
        """The guard: client IP, failed-auth lockout, API key and scope, then the rate limits.

        Args:
            ctx: The request.
            scope: The scope the key needs.
            defer_limits: With a Redis limiter, start the per-key/per-IP decision and leave it in
                ``ctx.deferred`` instead of waiting (see :func:`~prodai_cli.serving.pipeline.settle`).

        Raises:
            TooManyRequests: Over the failed-authentication limit, or over a rate limit (``Retry-After``).
            Unauthorized: Missing, malformed, unknown, revoked or expired key.
            Forbidden: A valid key without ``scope``.

        """
        limiter = self.limiter
        headers = ctx.headers
        ip = limiter.client_ip(ctx.client_ip, headers.get("x-forwarded-for"), headers.get("forwarded"))
        ctx.client_ip = ip
        if self.keys is not None:
            # The key is checked first: one that verifies is never refused by the failed-auth limit, so a
            # broken client behind the same NAT or proxy cannot lock everyone else out. Only failing attempts
            # are throttled; keys are 256-bit random, so the limit stops floods, not a search that could win.
            result = self.keys.verify(headers.get(self.auth_header), scope)
            if not result.ok:
                blocked = await limiter.auth_blocked(ip) if self._failed_recently(ip) else None
                if blocked is not None and not blocked.allowed:
                    self.metrics.denied.labels(blocked.rule).inc()
                    raise TooManyRequests(
                        "Too many failed authentication attempts from this address; retry later",
                        headers=blocked.headers(),
                        code="auth_rate_limited",
                    )
                await limiter.record_auth_failure(ip)
                self._remember_failure(ip)
                reason = result.failure.value if result.failure is not None else "unknown"
                self.metrics.auth_failures.labels(reason).inc()
                ctx.log_fields["auth_failure"] = reason
                if result.key_name is not None:
                    ctx.principal = result.key_name  # a key *name* (revoked, expired, wrong scope), never the key
                refusal = Forbidden if result.status == 403 else Unauthorized
                raise refusal(result.detail, headers=result.headers(), code=reason)
            ctx.principal = result.key_name
        if defer_limits and limiter.redis is not None:
            ctx.deferred.append(asyncio.ensure_future(self._limit(ctx, ip)))
            return
        await self._limit(ctx, ip)

    async def _limit(self, ctx: RequestContext, ip: str) -> None:
        """The per-key and per-IP limits: 429 when over, ``RateLimit-*`` headers either way."""
        decision = await self.limiter.check_request(client_ip=ip, key_name=ctx.principal)
        headers = decision.headers()
        if not decision.allowed:
            self.metrics.denied.labels(decision.rule).inc()
            raise TooManyRequests(
                f"Rate limit exceeded ({decision.rule}); retry after {headers.get('Retry-After', '1')} s",
                headers=headers,
            )
        ctx.response_headers.update(headers)

    def _failed_recently(self, ip: str) -> bool:
        """Whether this process saw ``ip`` fail authentication within its lockout window.

        An IP that never failed here can be over the limit only through failures at other replicas; it then
        gets at most one more try at this replica before this check sees the shared count. Keys are 256-bit
        random: the lockout stops floods, not a search that could succeed.
        """
        until = self._failed_ips.get(ip)
        if until is None:
            return False
        if until < time.monotonic():
            del self._failed_ips[ip]
            return False
        return True

    def _remember_failure(self, ip: str) -> None:
        now = time.monotonic()
        if len(self._failed_ips) >= MAX_REMEMBERED_IPS:
            for stale in [k for k, until in self._failed_ips.items() if until < now]:
                del self._failed_ips[stale]
            while len(self._failed_ips) >= MAX_REMEMBERED_IPS:
                del self._failed_ips[next(iter(self._failed_ips))]
        self._failed_ips.pop(ip, None)  # re-insert: the dict stays ordered by last failure
        self._failed_ips[ip] = now + self._lockout_memory_s

    async def guard(self, ctx: RequestContext) -> None:
        """:meth:`authorize` for the prediction routes (scope ``predict``), the Redis round trip deferred.

        The limit decision then overlaps parsing and the cache lookup: a hit through Redis costs one round
        trip of waiting instead of two. It is still taken for every request and still wins: nothing is
        answered, and the model never runs, until it allowed the request.
        """
        await self.authorize(ctx, "predict", defer_limits=True)

    # ------------------------------------------------------------------------------------ input and output
    def normalize(self, ctx: RequestContext, texts: list[str]) -> list[str]:
        """The input hook: :func:`normalize_text` on every text; the length limit holds afterwards too."""
        if not self.normalize_input:
            return texts
        normalized = [normalize_text(text) for text in texts]
        for index, text in enumerate(normalized):
            if len(text) > self.max_text_chars:
                raise InvalidRequest(
                    f"Text {index} is longer than {self.max_text_chars} characters after Unicode normalisation"
                )
        return normalized

    def redact(self, ctx: RequestContext, inference: Inference) -> Inference:
        """The output filter: redact sensitive patterns from the strings of every output."""
        outputs: list[dict[str, Any]] = self.output_filter.redact(inference.outputs)
        return inference.with_outputs(outputs)

    # ------------------------------------------------------------------------------------ cache
    def _params(self, route: Route) -> dict[str, Any]:
        params: dict[str, Any] = {}
        assignment = route.assignment
        cascade = assignment.router.cascade if isinstance(assignment, Assignment) else None
        if isinstance(assignment, Assignment) and cascade is not None and cascade.small == route.variant:
            # The cascade's answer depends on the large version and the threshold as well.
            large = assignment.router.variant(cascade.large).version
            params["cascade"] = {"large": large, "threshold": cascade.threshold}
        if self._filters_id:
            params["filters"] = self._filters_id
        return params

    async def cached(self, ctx: RequestContext, route: Route, texts: list[str], infer: Infer) -> Inference:
        """The cache wrapper: one entry per text (see the module docstring); sets ``X-Cache``."""
        if not self.cache.enabled:
            ctx.response_headers["X-Cache"] = "BYPASS"
            return await infer(ctx, route, texts)
        model = route.model
        # A directory has no version number: its path names what was loaded.
        version = model.version if model.version != "local" else model.key
        params = self._params(route)
        if ctx.params:
            params = {**params, "request": ctx.params}  # per-label scores and the like: entries of their own

        async def lookup(text: str) -> CacheResult[CacheValue]:
            async def compute() -> CacheValue:
                inference = await infer(ctx, route, [text])
                return {
                    "outputs": inference.outputs,
                    "model_version": inference.model_version,
                    "variant": inference.variant,
                    "fallback": inference.fallback,
                }

            key = cache_key(model.name, version, {"text": text}, params)
            return await self.cache.get_or_compute(
                key, compute, should_store=_storable, before_compute=lambda: settle(ctx)
            )

        if len(texts) == 1:
            results = [await lookup(texts[0])]
        else:
            results = list(await asyncio.gather(*(lookup(text) for text in texts)))
        await settle(ctx)  # every text was a hit: the limit decision must still allow the answer
        statuses = {result.status for result in results}
        ctx.response_headers["X-Cache"] = "BYPASS" if "BYPASS" in statuses else "MISS" if "MISS" in statuses else "HIT"
        return self._combine(route, [result.value for result in results])

    @staticmethod
    def _combine(route: Route, values: list[CacheValue]) -> Inference:
        """One Inference from per-text answers; a text answered by another version keeps its own stamp."""
        stamps: list[tuple[str, str]] = []
        for value in values:
            version = str(value["model_version"])
            # The same version under another variant name (two variants on one version, a renamed variant):
            # the request's own variant is the truth.
            variant = route.variant if version == route.model.version else str(value["variant"])
            stamps.append((version, variant))
        fallback = next((v["fallback"] for v in values if v.get("fallback")), None)
        request_stamp = stamps[0] if len(set(stamps)) == 1 else (route.model.version, route.variant)
        outputs: list[dict[str, Any]] = []
        for value, stamp in zip(values, stamps, strict=True):
            output: dict[str, Any] = dict(value["outputs"][0])
            if stamp != request_stamp or "model_version" in output:
                output["model_version"], output["variant"] = stamp
            outputs.append(output)
        return Inference(outputs, request_stamp[0], request_stamp[1], fallback)
