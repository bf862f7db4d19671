"""Response cache: one key over model, resolved version, canonical input and parameters; fail-open.

A cached answer is only as right as its key. :func:`cache_key` hashes the model name, the *resolved*
version (``"3"``, never an alias such as ``production``: after a promotion the alias points elsewhere and
the old answers must not be served), the input in a canonical form (Unicode NFC, JSON with sorted keys and
fixed separators, so ``{"a":1,"b":2}`` and ``{"b": 2, "a": 1}`` share an entry) and the parameters.

Two backends: ``memory`` (a bounded LRU with TTL, per process, the embedded default) and ``redis`` (TTL, a
maximum entry size, short socket timeouts). :meth:`ResponseCache.get_or_compute` adds single-flight, so N
identical concurrent misses in one process run the model once, and fails open: when Redis is down or slow
the request is computed and answered without the cache (counted in ``errors`` and ``bypasses``), Redis is
left alone for ``redis_retry_s`` so requests do not each pay a timeout, and then tried again, so the
cache comes back by itself when Redis does. In front of Redis sits a local tier (``local_ttl_s``, default
5 s, 0 turns it off): entries Redis confirmed (read from it or written to it) stay in the process that
long, so a hot text costs no round trip; entries never change, so nothing goes stale, and during an outage
those entries keep answering until they expire while everything else bypasses.

Call pattern in an async request path::

    cache = ResponseCache(config.cache, config.redis_url)    # once, at start-up
    key = cache_key(model_name, resolved_version, {"text": text}, params)
    result = await cache.get_or_compute(key, lambda: predict(text))
    response.headers["X-Cache"] = result.status              # HIT, MISS or BYPASS
    ...
    await cache.aclose()                                      # at shutdown

Counters (plain ints, read by the metrics layer): ``hits``, ``misses``, ``coalesced``, ``bypasses``,
``errors``, ``oversize``, ``stores``, ``local_hits`` (hits the local tier answered, counted in ``hits`` too).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from prodai_cli.serving.protection.redis_client import RedisGuard

if TYPE_CHECKING:
    from prodai_cli.config import CacheConfig

V = TypeVar("V")
CacheStatus = Literal["HIT", "MISS", "BYPASS"]
KEY_PREFIX = "prodai:cache:"
BACKGROUND_STORE_DELAY_S = 0.001
# At most this many finished computations are remembered for callers that raced them (see get_or_compute).
RECENT_FLIGHTS = 1024


# --------------------------------------------------------------------------------------------- keys


def _nfc(value: Any) -> Any:
    """``value`` with every string (dict keys included) in Unicode NFC."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, Mapping):
        return {_nfc(k): _nfc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nfc(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """One text per meaning: NFC strings, sorted keys, no whitespace, non-ASCII kept as is.

    Raises:
        TypeError: ``value`` holds something JSON cannot express (the caller's input was not JSON).

    """
    return json.dumps(_nfc(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def cache_key(model: str, version: str | int, inputs: Any, params: Mapping[str, Any] | None = None) -> str:
    """The sha256 hex digest that names one cacheable answer.

    Args:
        model: Registered model name.
        version: The *resolved* version number (never an alias: aliases move).
        inputs: The request input, JSON-like (a text, a dict of fields, a list of texts).
        params: Anything else that changes the answer (task, top-k, truncation...).

    Returns:
        64 lowercase hex digits.

    """
    document = canonical_json([model, str(version), inputs, dict(params or {})])
    # surrogatepass: a lone surrogate (valid in JSON text, not in UTF-8) must still hash, not raise.
    return hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------------------------- redis


# --------------------------------------------------------------------------------------------- backends


class MemoryBackend:
    """A bounded LRU of serialised answers with a TTL, private to this process."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, data = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return data

    def set(self, key: str, data: bytes) -> None:
        """Store ``data``, evicting the least recently used entries past the bound."""
        self._entries[key] = (self._clock() + self.ttl_s, data)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()


# --------------------------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class CacheResult(Generic[V]):
    """What :meth:`ResponseCache.get_or_compute` answered.

    Attributes:
        value: The answer (from the cache, or computed now).
        status: ``HIT`` (from the cache, or from an identical request computed at the same time; BYPASS
            when that one bypassed the cache),
            ``MISS`` (computed now; stored unless too large or refused by ``should_store``) or ``BYPASS``
            (cache off or its backend unavailable: computed, not stored): the ``X-Cache`` header value.
        coalesced: True when another identical request computed the value (single-flight).

    """

    value: V
    status: CacheStatus
    coalesced: bool = False


class ResponseCache:
    """Single-flight, fail-open cache of JSON-serialisable answers.

    Args:
        config: The ``cache`` section.
        redis_url: Required when ``config.backend`` is ``redis``.
        key_prefix: Prefix of Redis keys.
        background_stores: Answer a miss as soon as it is computed and write the Redis entry a moment
            later (the server: the write's round trip stays off the request's latency). Off, a returned miss
            has been stored.

    Raises:
        ConfigError: ``backend: redis`` without a ``redis_url``.

    """

    def __init__(
        self,
        config: CacheConfig,
        redis_url: str | None = None,
        *,
        key_prefix: str = KEY_PREFIX,
        background_stores: bool = False,
    ) -> None:
        self.config = config
        self.background_stores = background_stores
        self._pending_stores: set[asyncio.Task[bool]] = set()
        # Answers computed here whose background write to Redis has not landed yet: a lookup finds them here
        # (the same client asking again right away must not miss just because the write is a moment late).
        self._unwritten: dict[str, bytes] = {}
        self.enabled = config.enabled
        self.key_prefix = key_prefix
        self.hits = 0
        self.misses = 0
        self.coalesced = 0
        self.bypasses = 0
        self.oversize = 0
        self.stores = 0
        self._local_errors = 0
        # key -> (the shared computation, whether its leader bypassed the backend, its sequence number)
        self._inflight: dict[str, tuple[asyncio.Task[Any], bool, int]] = {}
        # A caller reads the backend and awaits its rate-limit decision before it may lead; meanwhile another
        # caller can start, finish and store the same key's computation (seen in CI: 2 runs of 50 identical
        # requests). Flights that finished while such a caller waited are kept here, and a caller uses one
        # that started after its own arrival instead of running the model again. Cleared whenever nobody
        # waits, so this holds only what a waiting caller could still need.
        self._flight_seq = 0
        self._waiting = 0
        self._recent: OrderedDict[str, tuple[asyncio.Task[Any], bool, int]] = OrderedDict()
        self.memory: MemoryBackend | None = None
        self.redis: RedisGuard | None = None
        # Redis's local tier: entries Redis confirmed (read from it, or written to it) kept in this process for
        # a few seconds. An entry never changes (its key names the model version and the input), so a hot
        # text costs no round trip while it is in here; an outage keeps serving these until they expire.
        self.local: MemoryBackend | None = None
        self.local_hits = 0
        if config.backend == "redis":
            self.redis = RedisGuard.for_section(
                "cache", redis_url, timeout_s=config.redis_timeout_s, retry_s=config.redis_retry_s, name="cache"
            )
            if config.local_ttl_s > 0:
                self.local = MemoryBackend(config.max_entries, min(config.local_ttl_s, float(config.ttl_seconds)))
        else:
            self.memory = MemoryBackend(config.max_entries, float(config.ttl_seconds))

    @property
    def errors(self) -> int:
        """Backend failures: Redis errors and timeouts, undecodable entries."""
        return self._local_errors + (self.redis.errors if self.redis else 0)

    def stats(self) -> dict[str, int]:
        """Every counter, for metrics and tests."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "coalesced": self.coalesced,
            "bypasses": self.bypasses,
            "errors": self.errors,
            "oversize": self.oversize,
            "stores": self.stores,
            "local_hits": self.local_hits,
        }

    # ---- raw access (tests, tools); both fail open
    async def get(self, key: str) -> tuple[Any, bool]:
        """Look ``key`` up: ``(value, True)`` on a hit, ``(None, False)`` on a miss or backend failure."""
        found, data = await self._read(key)
        if not found or data is None:
            return None, False
        try:
            return json.loads(data), True
        except ValueError:
            self._local_errors += 1
            return None, False

    async def set(self, key: str, value: Any) -> bool:
        """Store ``value`` under ``key``; False when too large, not JSON, or the backend failed."""
        data = self._encode(value)
        return data is not None and await self._write(key, data)

    def _encode(self, value: Any) -> bytes | None:
        """The stored form of ``value``; None (counted) when it is not JSON or over ``max_entry_bytes``."""
        try:
            data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            self._local_errors += 1
            return None
        if len(data) > self.config.max_entry_bytes:
            self.oversize += 1
            return None
        return data

    # ---- the request path
    async def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Awaitable[V]],
        *,
        should_store: Callable[[V], bool] | None = None,
        before_compute: Callable[[], Awaitable[None]] | None = None,
    ) -> CacheResult[V]:
        """Answer from the cache, or compute once (per process) for all identical concurrent callers.

        Args:
            key: From :func:`cache_key`.
            compute: Produces the answer on a miss; awaited at most once per key at a time. It runs as
                its own task, so a caller that disconnects does not cancel it for the others.
            should_store: Return False for answers that must not be cached (a fallback model's answer).
            before_compute: Awaited on a miss before this caller may start ``compute`` for everyone (the
                request's own rate-limit decision): what it raises reaches this caller only, never the
                identical requests that would otherwise have waited on this caller's computation.

        Returns:
            The value and its ``X-Cache`` status.

        Raises:
            Exception: Whatever ``compute`` raised (errors are never cached). Cache failures never
                raise: they are counted and the value is computed.

        """
        if not self.enabled:
            return CacheResult(await compute(), "BYPASS")
        flight = self._inflight.get(key)
        bypass = False
        unwritten = self._unwritten.get(key) if flight is None else None
        if unwritten is not None:
            self.hits += 1
            return CacheResult(json.loads(unwritten), "HIT")  # a fresh copy, like every hit
        if flight is None:
            arrived = self._flight_seq
            self._waiting += 1
            try:
                found, data = await self._read(key)
                if found and data is not None:
                    try:
                        value: V = json.loads(data)
                    except ValueError:
                        self._local_errors += 1
                    else:
                        self.hits += 1
                        return CacheResult(value, "HIT")
                bypass = not found
                if before_compute is not None:
                    await before_compute()
                # Another caller may have become the leader, or even finished, while we waited.
                flight = self._inflight.get(key) or self._raced(key, arrived)
            finally:
                self._waiting -= 1
                if not self._waiting:
                    self._recent.clear()
        if flight is not None:
            self.coalesced += 1
            task, leader_bypassed, _ = flight
            value = await asyncio.shield(task)
            return CacheResult(value, "BYPASS" if leader_bypassed else "HIT", coalesced=True)
        if bypass:
            self.bypasses += 1
        else:
            self.misses += 1
        task = asyncio.ensure_future(self._compute_and_store(key, compute, should_store, store=not bypass))
        self._flight_seq += 1
        self._inflight[key] = (task, bypass, self._flight_seq)
        task.add_done_callback(lambda done: self._finished(key, done))
        value = await asyncio.shield(task)
        return CacheResult(value, "BYPASS" if bypass else "MISS")

    async def _compute_and_store(
        self, key: str, compute: Callable[[], Awaitable[V]], should_store: Callable[[V], bool] | None, *, store: bool
    ) -> V:
        value = await compute()
        if store and (should_store is None or should_store(value)):
            data = self._encode(value)
            if data is None:
                return value
            if self.background_stores and self.redis is not None:
                # A moment later, so the answer is on its way to the client before the write costs anything.
                self._unwritten[key] = data
                asyncio.get_running_loop().call_later(BACKGROUND_STORE_DELAY_S, self._store_later, key, data)
            else:
                await self._write(key, data)
        return value

    def _store_later(self, key: str, data: bytes) -> None:
        # Not urgent: the write rides along with the next request's round trip (or goes alone a moment later).
        pending = asyncio.ensure_future(self._write(key, data, urgent=False))
        self._pending_stores.add(pending)

        def landed(done: asyncio.Task[bool]) -> None:
            self._pending_stores.discard(done)
            if self._unwritten.get(key) is data:
                del self._unwritten[key]

        pending.add_done_callback(landed)

    def _raced(self, key: str, arrived: int) -> tuple[asyncio.Task[Any], bool, int] | None:
        """A flight for ``key`` that started after sequence number ``arrived`` and succeeded, if one is known."""
        recent = self._recent.get(key)
        if recent is None or recent[2] <= arrived or recent[0].cancelled() or recent[0].exception() is not None:
            return None  # a failed computation is not shared after the fact: this caller tries for itself
        return recent

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        flight = self._inflight.get(key)
        if flight is not None and flight[0] is task:
            del self._inflight[key]
            if self._waiting:
                self._recent[key] = flight
                self._recent.move_to_end(key)
                if len(self._recent) > RECENT_FLIGHTS:
                    self._recent.popitem(last=False)
        # Followers read the outcome through their shield; mark it retrieved for when nobody is left.
        if not task.cancelled():
            task.exception()

    async def _read(self, key: str) -> tuple[bool, bytes | None]:
        """``(True, data-or-None)`` when the backend answered, ``(False, None)`` when it is unavailable."""
        if self.memory is not None:
            return True, self.memory.get(key)
        assert self.redis is not None
        if self.local is not None:
            local = self.local.get(key)
            if local is not None:
                self.local_hits += 1
                return True, local
        if not self.redis.available:
            return False, None
        try:
            found = await self.redis.execute("GET", self.key_prefix + key)
        except Exception:
            return False, None
        if found is not None and self.local is not None:
            self.local.set(key, found)
        return True, found

    async def _write(self, key: str, data: bytes, *, urgent: bool = True) -> bool:
        if self.memory is not None:
            self.memory.set(key, data)
            self.stores += 1
            return True
        assert self.redis is not None
        if not self.redis.available:
            return False
        ttl = self.config.ttl_seconds
        try:
            await self.redis.execute("SET", self.key_prefix + key, data, "EX", ttl, urgent=urgent)
        except Exception:
            return False
        self.stores += 1
        if self.local is not None:
            self.local.set(key, data)
        return True

    async def aclose(self) -> None:
        """Finish pending background writes (briefly), then release Redis connections (at server shutdown)."""
        if self._pending_stores:
            await asyncio.wait(set(self._pending_stores), timeout=self.config.redis_timeout_s * 2 + 0.1)
        if self.redis is not None:
            await self.redis.aclose()
