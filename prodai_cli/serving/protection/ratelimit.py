"""Rate limits per API key, per client IP and on failed authentication: GCRA, atomic, fail-open.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket that stores one timestamp per
client): a rule ``rate`` per ``period_s`` with ``burst`` admits ``rate + burst`` requests at once and then
one every ``period_s / rate`` seconds. With Redis the whole decision (read, compare, write, expire) is one
Lua script, so concurrent requests from any number of server processes can never over-admit, and every
key it writes carries an expiry equal to the time its bucket takes to refill (a lost client costs nothing,
and no key can block anyone forever). Time comes from the Redis server, so replicas with skewed clocks
agree. Several rules checked together (per key and per IP) are all-or-nothing: a request one rule refuses
consumes nothing from the others.

The in-memory backend runs the same algorithm per process: it is the embedded default and the fallback
when Redis fails or is slow (``fallbacks`` counts those decisions; Redis is tried again after
``redis_retry_s``). While falling back, each process enforces the limits on its own, so N replicas admit
up to N times the limit: fail-open, never fail-closed.

Call pattern in an async request path (see :class:`RateLimiter`)::

    limiter = RateLimiter(config.rate_limit, config.redis_url)  # once, at start-up
    ip = limiter.client_ip(request.client.host, request.headers.get("x-forwarded-for"))
    blocked = await limiter.auth_blocked(ip)                   # before verifying a key
    if not blocked.allowed: -> 429 with blocked.headers()
    auth = keystore.verify(...)
    if not auth.ok: await limiter.record_auth_failure(ip); -> 401/403
    decision = await limiter.check_request(client_ip=ip, key_name=auth.key_name)
    if not decision.allowed: -> 429 with decision.headers()
    response.headers.update(decision.headers())

Counters: ``allowed``, ``denied``, ``fallbacks``, ``errors`` (Redis failures).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prodai_cli.serving.protection.redis_client import RedisGuard, Script

if TYPE_CHECKING:
    from prodai_cli.config import LimitRule, RateLimitConfig
    from prodai_cli.serving.protection.redis_client import PipelinedRedis

RuleName = Literal["per_key", "per_ip", "auth_failures"]
Backend = Literal["memory", "redis", "fallback", "off"]
KEY_PREFIX = "prodai:rl:"
# Floor/ceil of ratios of floats: 0.9 / 0.1 must count as 9 whole requests, not 8.999...
_EPS = 1e-6

# KEYS: one bucket per rule. ARGV[1]: "1" to peek (decide, write nothing); then per key its emission
# interval in microseconds and its capacity. Returns {all_allowed, {allowed, remaining, reset_us,
# retry_us} per key}. Writes happen only when every rule allows, and every write sets an expiry.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local peek = ARGV[1] == '1'
local all_allowed = 1
local results = {}
local new_tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local capacity = tonumber(ARGV[2 * i + 1])
  local tau = interval * capacity
  local tat = now
  local stored = redis.call('GET', KEYS[i])
  if stored then
    tat = math.max(tonumber(stored), now)
  end
  local new_tat = tat + interval
  local allow_at = new_tat - tau
  if now < allow_at then
    all_allowed = 0
    results[i] = {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
  else
    local remaining = math.floor((tau - (new_tat - now)) / interval + 1e-6)
    results[i] = {1, remaining, math.ceil(new_tat - now), 0}
    new_tats[i] = new_tat
  end
end
if all_allowed == 1 and not peek then
  for i = 1, #KEYS do
    local ttl_ms = math.max(1, math.ceil((new_tats[i] - now) / 1000))
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
  end
end
return {all_allowed, results}
"""
GCRA_SCRIPT = Script(GCRA_LUA)


@dataclass(frozen=True)
class RateDecision:
    """One limiter decision, with what the response headers need.

    Attributes:
        allowed: Admit the request.
        limit: Requests the deciding rule admits at once (rate + burst).
        remaining: Requests left right now under the deciding rule (0 when refused).
        reset_s: Seconds until the deciding rule's bucket is full again.
        retry_after_s: When refused, seconds until one request would be admitted; 0 when allowed.
        rule: The deciding rule: the one that refused, else the one with the fewest requests left.
        backend: ``redis``, ``memory``, ``fallback`` (Redis failed; memory decided) or ``off``.

    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    rule: str
    backend: Backend

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` and, when refused, ``Retry-After``.

        Seconds are rounded up (a client that waits the advertised time is admitted). Empty when limits
        are off.
        """
        if self.backend == "off":
            return {}
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s - _EPS)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s - _EPS)))
        return headers


@dataclass(frozen=True)
class _Check:
    rule_name: str
    identity: str
    interval_s: float
    capacity: int


def _interval_and_capacity(rule: LimitRule) -> tuple[float, int]:
    return rule.period_s / rule.rate, rule.rate + rule.burst


class MemoryGCRA:
    """The GCRA of :data:`GCRA_LUA` over a dict, for one process (thread-safe).

    Args:
        clock: Monotonic seconds (injectable for tests).
        max_keys: Bound on tracked buckets; expired ones are dropped first, then the oldest.

    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tats)

    def decide(
        self, checks: Sequence[tuple[str, float, int]], *, peek: bool = False
    ) -> tuple[bool, list[tuple[bool, int, float, float]]]:
        """Decide ``(key, interval_s, capacity)`` checks together; same results as the Lua script."""
        with self._lock:
            now = self._clock()
            all_allowed = True
            results: list[tuple[bool, int, float, float]] = []
            new_tats: list[float] = []
            for key, interval, capacity in checks:
                tau = interval * capacity
                tat = max(self._tats.get(key, now), now)
                new_tat = tat + interval
                allow_at = new_tat - tau
                if now < allow_at:
                    all_allowed = False
                    results.append((False, 0, tat - now, allow_at - now))
                else:
                    remaining = math.floor((tau - (new_tat - now)) / interval + _EPS)
                    results.append((True, remaining, new_tat - now, 0.0))
                new_tats.append(new_tat)
            if all_allowed and not peek:
                for (key, _, _), new_tat in zip(checks, new_tats, strict=True):
                    self._tats[key] = new_tat
                if len(self._tats) > self._max_keys:
                    self._prune(now)
            return all_allowed, results

    def _prune(self, now: float) -> None:
        # A bucket whose TAT has passed is full again: forgetting it changes no decision.
        for key in [k for k, tat in self._tats.items() if tat <= now]:
            del self._tats[key]
        while len(self._tats) > self._max_keys:
            del self._tats[next(iter(self._tats))]


def forwarded_for_hops(header: str) -> list[str]:
    """The ``for=`` addresses of an RFC 7239 ``Forwarded`` header, nearest proxy last.

    ``for="[2001:db8::1]:4711"`` gives ``2001:db8::1``; ``for=192.0.2.1:80`` gives ``192.0.2.1``; an
    obfuscated or ``unknown`` node is kept as written (it is not an address, so it never resolves).
    """
    hops: list[str] = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            value = value.strip().strip('"')
            if value.startswith("["):
                value = value[1 : value.find("]")] if "]" in value else value
            elif value.count(":") == 1:
                value = value.partition(":")[0]
            hops.append(value)
    return hops


class ClientIpResolver:
    """The client's IP: the TCP peer, or, behind trusted proxies, the first untrusted forwarded hop.

    Forwarding headers (``Forwarded``, else ``X-Forwarded-For``) are read only when the TCP peer is a trusted
    proxy; each trusted hop vouches for the one before it, and the first untrusted hop is the client.

    Args:
        trusted_proxies: IPs or CIDRs (``rate_limit.trusted_proxies``). Empty: forwarding headers are
            ignored, because any client can write them.

    """

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self._networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def __call__(self, peer: str | None, forwarded_for: str | None = None, forwarded: str | None = None) -> str:
        """Resolve the client IP from the socket peer and the ``Forwarded`` / ``X-Forwarded-For`` headers."""
        client = peer or "unknown"
        if not self._networks or not (forwarded or forwarded_for) or not self._trusted(client):
            return client
        hops = forwarded_for_hops(forwarded) if forwarded else [h.strip() for h in (forwarded_for or "").split(",")]
        # Walk from the nearest hop back: each trusted proxy vouches for the address before it.
        for hop in reversed([h for h in hops if h]):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return client
        return client


class RateLimiter:
    """Per-key, per-IP and auth-failure limits from the ``rate_limit`` section.

    Args:
        config: The ``rate_limit`` section.
        redis_url: Required when ``config.backend`` is ``redis``.
        key_prefix: Prefix of Redis keys (``<prefix><rule>:<identity>``).
        clock: Monotonic clock of the in-memory backend.

    Raises:
        ConfigError: ``backend: redis`` without a ``redis_url``.

    """

    def __init__(
        self,
        config: RateLimitConfig,
        redis_url: str | None = None,
        *,
        key_prefix: str = KEY_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.enabled = config.enabled
        self.key_prefix = key_prefix
        self.memory = MemoryGCRA(clock)
        self.client_ip = ClientIpResolver(config.trusted_proxies)
        self.allowed = 0
        self.denied = 0
        self.fallbacks = 0
        self.redis: RedisGuard | None = None
        if config.backend == "redis":
            self.redis = RedisGuard.for_section(
                "rate_limit",
                redis_url,
                timeout_s=config.redis_timeout_s,
                retry_s=config.redis_retry_s,
                name="rate limiter",
            )

    @property
    def errors(self) -> int:
        """Redis failures (each one also produced a fallback decision)."""
        return self.redis.errors if self.redis else 0

    def stats(self) -> dict[str, int]:
        """Every counter, for metrics and tests."""
        return {"allowed": self.allowed, "denied": self.denied, "fallbacks": self.fallbacks, "errors": self.errors}

    def rule(self, name: RuleName) -> LimitRule:
        """The configured rule called ``name``."""
        rule: LimitRule = getattr(self.config, name)
        return rule

    def redis_key(self, rule_name: str, identity: str) -> str:
        """The Redis key of one bucket."""
        return f"{self.key_prefix}{rule_name}:{identity}"

    # ---- the request path
    async def check_request(self, *, client_ip: str, key_name: str | None = None) -> RateDecision:
        """Take one request from the client IP's bucket and, when authenticated, the key's; all or nothing."""
        checks: list[tuple[RuleName, str]] = [("per_ip", client_ip)]
        if key_name is not None:
            checks.insert(0, ("per_key", key_name))
        return await self.acquire(checks)

    async def auth_blocked(self, client_ip: str) -> RateDecision:
        """Peek: would one more failed authentication from ``client_ip`` be admitted? Consumes nothing.

        Call it before verifying a key: a client over the limit gets 429 without its key being checked,
        so it cannot keep guessing.
        """
        return await self.acquire([("auth_failures", client_ip)], peek=True)

    async def record_auth_failure(self, client_ip: str) -> RateDecision:
        """Count one failed authentication from ``client_ip`` (after a 401 or 403)."""
        return await self.acquire([("auth_failures", client_ip)])

    async def acquire(self, checks: Sequence[tuple[RuleName, str]], *, peek: bool = False) -> RateDecision:
        """Decide the rules ``checks`` names, each for its identity, atomically; never raises for Redis.

        Args:
            checks: ``(rule name, identity)`` pairs; identities are key names or IPs, never secrets.
            peek: Decide without consuming.

        Returns:
            The decision of the most restrictive rule.

        """
        if not self.enabled or not checks:
            return RateDecision(True, 0, 0, 0.0, 0.0, "", "off")
        resolved = [_Check(name, identity, *_interval_and_capacity(self.rule(name))) for name, identity in checks]
        backend: Backend = "memory"
        outcome: tuple[bool, list[tuple[bool, int, float, float]]] | None = None
        if self.redis is not None:
            if self.redis.available:
                try:
                    outcome = await self.redis.run(lambda client: self._eval(client, resolved, peek))
                    backend = "redis"
                except Exception:
                    pass
            if outcome is None:
                self.fallbacks += 1
                backend = "fallback"
        if outcome is None:
            outcome = self.memory.decide(
                [(self.redis_key(c.rule_name, c.identity), c.interval_s, c.capacity) for c in resolved], peek=peek
            )
        decision = self._decision(resolved, *outcome, backend=backend)
        if not peek:
            if decision.allowed:
                self.allowed += 1
            else:
                self.denied += 1
        return decision

    async def _eval(
        self, client: PipelinedRedis, checks: Sequence[_Check], peek: bool
    ) -> tuple[bool, list[tuple[bool, int, float, float]]]:
        args: list[Any] = ["1" if peek else "0"]
        for check in checks:
            args += [repr(check.interval_s * 1_000_000), check.capacity]
        keys = [self.redis_key(c.rule_name, c.identity) for c in checks]
        # evalsha re-loads the script (NOSCRIPT) after Redis restarts with an empty script cache.
        assert self.redis is not None
        raw = await client.evalsha(GCRA_SCRIPT, keys, args, timeout=self.redis.command_timeout_s)
        all_allowed, rows = raw
        results = [(bool(int(row[0])), int(row[1]), int(row[2]) / 1_000_000, int(row[3]) / 1_000_000) for row in rows]
        return bool(int(all_allowed)), results

    @staticmethod
    def _decision(
        checks: Sequence[_Check],
        all_allowed: bool,
        results: Sequence[tuple[bool, int, float, float]],
        *,
        backend: Backend,
    ) -> RateDecision:
        rows = list(zip(checks, results, strict=True))
        if all_allowed:
            check, (_, remaining, reset, _) = min(rows, key=lambda r: (r[1][1], -r[1][2]))
            return RateDecision(True, check.capacity, remaining, reset, 0.0, check.rule_name, backend)
        refused = [r for r in rows if not r[1][0]]
        check, (_, _, reset, retry) = max(refused, key=lambda r: r[1][3])
        return RateDecision(False, check.capacity, 0, reset, retry, check.rule_name, backend)

    async def aclose(self) -> None:
        """Release Redis connections (at server shutdown)."""
        if self.redis is not None:
            await self.redis.aclose()
