"""The response cache: keys, memory LRU, single-flight, and Redis with its failure modes (real redis-server)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from helpers import RedisServer

from prodai_cli.config import CacheConfig
from prodai_cli.errors import ConfigError
from prodai_cli.serving.protection.cache import KEY_PREFIX, MemoryBackend, ResponseCache, cache_key, canonical_json


def redis_cache(url: str, **overrides: Any) -> ResponseCache:
    # Timeouts roomy enough for a busy CI machine; the slow-Redis test sets its own. The local tier is off
    # unless a test turns it on: these tests are about what Redis does.
    settings: dict[str, Any] = {"backend": "redis", "redis_timeout_s": 0.5, "redis_retry_s": 0.2, "local_ttl_s": 0}
    settings.update(overrides)
    return ResponseCache(CacheConfig(**settings), url)


class CountingModel:
    """Stands in for the model call: counts calls, can be slowed so concurrent callers overlap."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self, text: str) -> dict[str, Any]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return {"label": "POSITIVE", "confidence": 0.9, "text_len": len(text)}


# --------------------------------------------------------------------------------------------- keys


def test_permuted_json_keys_share_a_cache_key() -> None:
    a = cache_key("clf", "3", {"text": "hello", "meta": {"x": 1, "y": [1, 2]}}, {"top_k": 1, "task": "c"})
    b = cache_key("clf", "3", {"meta": {"y": [1, 2], "x": 1}, "text": "hello"}, {"task": "c", "top_k": 1})
    assert a == b
    assert len(a) == 64 and all(c in "0123456789abcdef" for c in a)


def test_another_version_model_input_or_params_changes_the_key() -> None:
    base = cache_key("clf", "3", {"text": "hello"}, {"top_k": 1})
    assert cache_key("clf", "4", {"text": "hello"}, {"top_k": 1}) != base
    assert cache_key("clf", 4, {"text": "hi"}, {"top_k": 1}) == cache_key("clf", "4", {"text": "hi"}, {"top_k": 1})
    assert cache_key("other", "3", {"text": "hello"}, {"top_k": 1}) != base
    assert cache_key("clf", "3", {"text": "hello!"}, {"top_k": 1}) != base
    assert cache_key("clf", "3", {"text": "hello"}, {"top_k": 2}) != base
    assert cache_key("clf", "3", {"text": "hello"}) != base
    # Fields cannot bleed into each other: ("ab", "c") and ("a", "bc") are different requests.
    assert cache_key("ab", "c", "x") != cache_key("a", "bc", "x")


def test_unicode_forms_share_a_key_and_non_ascii_is_kept() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert cache_key("m", "1", {"text": composed}) == cache_key("m", "1", {"text": decomposed})
    assert canonical_json({"t": composed, "a": 1}) == '{"a":1,"t":"caf\u00e9"}'
    # A lone surrogate is legal JSON text; it must hash rather than raise.
    assert len(cache_key("m", "1", {"text": "x\ud800y"})) == 64


def test_memory_backend_is_a_bounded_lru_with_ttl() -> None:
    now = [0.0]
    lru = MemoryBackend(max_entries=2, ttl_s=10, clock=lambda: now[0])
    lru.set("a", b"1")
    lru.set("b", b"2")
    assert lru.get("a") == b"1"  # touches a: b is now the least recently used
    lru.set("c", b"3")
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (b"1", None, b"3")
    assert len(lru) == 2
    now[0] = 10.5
    assert lru.get("a") is None and len(lru) == 1


# --------------------------------------------------------------------------------------------- memory backend


def test_memory_hit_after_miss_with_counters_and_statuses() -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheConfig())
        model = CountingModel()
        key = cache_key("clf", "1", {"text": "good movie"})
        first = await cache.get_or_compute(key, lambda: model("good movie"))
        second = await cache.get_or_compute(key, lambda: model("good movie"))
        assert (first.status, second.status) == ("MISS", "HIT")
        assert second.value == first.value == {"label": "POSITIVE", "confidence": 0.9, "text_len": 10}
        assert model.calls == 1
        # A hit is a fresh copy: a caller mutating it cannot poison the cache.
        second.value["label"] = "MUTATED"
        third = await cache.get_or_compute(key, lambda: model("good movie"))
        assert third.value["label"] == "POSITIVE"
        assert cache.stats() == {
            "hits": 2,
            "misses": 1,
            "coalesced": 0,
            "bypasses": 0,
            "errors": 0,
            "oversize": 0,
            "stores": 1,
            "local_hits": 0,
        }

    asyncio.run(scenario())


def test_fifty_identical_concurrent_misses_run_the_model_once_memory() -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheConfig())
        model = CountingModel(delay=0.05)
        key = cache_key("clf", "1", {"text": "same"})
        results = await asyncio.gather(*(cache.get_or_compute(key, lambda: model("same")) for _ in range(50)))
        assert model.calls == 1
        assert {r.value["text_len"] for r in results} == {4}
        assert sorted(r.status for r in results).count("MISS") == 1
        assert sum(r.coalesced for r in results) == 49
        assert (cache.misses, cache.coalesced) == (1, 49)

    asyncio.run(scenario())


def test_compute_errors_reach_every_waiter_and_are_not_cached() -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheConfig())
        calls = 0

        async def failing() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.02)
            raise RuntimeError("model exploded")

        key = cache_key("clf", "1", {"text": "boom"})
        outcomes = await asyncio.gather(*(cache.get_or_compute(key, failing) for _ in range(5)), return_exceptions=True)
        assert calls == 1
        assert all(isinstance(o, RuntimeError) and str(o) == "model exploded" for o in outcomes)
        model = CountingModel()
        again = await cache.get_or_compute(key, lambda: model("boom"))
        assert again.status == "MISS" and model.calls == 1

    asyncio.run(scenario())


def test_a_cancelled_leader_does_not_cancel_the_shared_computation() -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheConfig())
        model = CountingModel(delay=0.1)
        key = cache_key("clf", "1", {"text": "x"})
        leader = asyncio.ensure_future(cache.get_or_compute(key, lambda: model("x")))
        await asyncio.sleep(0.01)
        follower = asyncio.ensure_future(cache.get_or_compute(key, lambda: model("x")))
        await asyncio.sleep(0.01)
        leader.cancel()
        result = await follower
        assert result.value["text_len"] == 1 and result.coalesced
        assert model.calls == 1
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(scenario())


def test_oversize_should_store_and_disabled_cache() -> None:
    async def scenario() -> None:
        cache = ResponseCache(CacheConfig(max_entry_bytes=20))
        model = CountingModel()
        key = cache_key("clf", "1", {"text": "long"})
        for _ in range(2):
            result = await cache.get_or_compute(key, lambda: model("long"))
            assert result.status == "MISS"
        assert model.calls == 2 and cache.oversize == 2 and cache.stores == 0

        roomy = ResponseCache(CacheConfig())
        key2 = cache_key("clf", "1", {"text": "fallback"})
        for _ in range(2):
            await roomy.get_or_compute(key2, lambda: model("fallback"), should_store=lambda v: v["label"] != "POSITIVE")
        assert model.calls == 4 and roomy.stores == 0

        off = ResponseCache(CacheConfig(enabled=False))
        statuses = [(await off.get_or_compute(key, lambda: model("long"))).status for _ in range(2)]
        assert statuses == ["BYPASS", "BYPASS"] and model.calls == 6

    asyncio.run(scenario())


def test_redis_backend_without_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cache\.backend is redis but redis_url is empty"):
        ResponseCache(CacheConfig(backend="redis"), None)


# --------------------------------------------------------------------------------------------- redis backend


@pytest.mark.redis
def test_redis_cache_stores_with_ttl_and_shares_across_cache_objects(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        writer = redis_cache(redis_process.url, ttl_seconds=30)
        reader = redis_cache(redis_process.url, ttl_seconds=30)  # another process would see the same
        model = CountingModel()
        key = cache_key("clf", "7", {"text": "good"})
        assert (await writer.get_or_compute(key, lambda: model("good"))).status == "MISS"
        hit = await reader.get_or_compute(key, lambda: model("good"))
        assert hit.status == "HIT" and hit.value["text_len"] == 4 and model.calls == 1
        other_version = cache_key("clf", "8", {"text": "good"})
        assert (await reader.get_or_compute(other_version, lambda: model("good"))).status == "MISS"
        assert model.calls == 2
        await writer.aclose()
        await reader.aclose()

    asyncio.run(scenario())
    client = redis_process.client()
    keys = client.keys(KEY_PREFIX + "*")
    assert len(keys) == 2
    for key in keys:
        assert 0 < client.ttl(key) <= 30


@pytest.mark.redis
def test_redis_permuted_inputs_share_an_entry_other_version_does_not(redis_process: RedisServer) -> None:
    async def scenario() -> list[str]:
        cache = redis_cache(redis_process.url)
        model = CountingModel()
        statuses = []
        for model_version, payload in (
            ("3", {"text": "hi", "options": {"a": 1, "b": 2}}),
            ("3", {"options": {"b": 2, "a": 1}, "text": "hi"}),
            ("4", {"options": {"b": 2, "a": 1}, "text": "hi"}),
        ):
            key = cache_key("clf", model_version, payload)
            statuses.append((await cache.get_or_compute(key, lambda: model("hi"))).status)
        await cache.aclose()
        return statuses

    assert asyncio.run(scenario()) == ["MISS", "HIT", "MISS"]
    assert len(redis_process.client().keys(KEY_PREFIX + "*")) == 2


@pytest.mark.redis
def test_fifty_identical_concurrent_misses_run_the_model_once_redis(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_process.url)
        model = CountingModel(delay=0.05)
        key = cache_key("clf", "1", {"text": "same"})
        results = await asyncio.gather(*(cache.get_or_compute(key, lambda: model("same")) for _ in range(50)))
        assert model.calls == 1
        assert [r.status for r in results].count("MISS") == 1
        assert all(r.value["text_len"] == 4 for r in results)
        assert cache.errors == 0
        await cache.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
@pytest.mark.parametrize("local_ttl_s", [0.0, 5.0])
def test_a_caller_whose_read_raced_a_whole_computation_gets_its_answer_not_a_second_run(
    redis_process: RedisServer, local_ttl_s: float
) -> None:
    # Seen in CI under load: of 50 identical requests sent at once, one read Redis (nothing yet), then
    # waited for its rate-limit decision while another computed, stored and left the flight; it then found
    # no flight and ran the model a second time. Here the late caller's decision is held until the first
    # caller's answer is computed and its background write has landed in Redis.
    async def scenario() -> tuple[int, list[str]]:
        cache = ResponseCache(
            CacheConfig(backend="redis", redis_timeout_s=0.5, redis_retry_s=0.2, local_ttl_s=local_ttl_s),
            redis_process.url,
            background_stores=True,
        )
        model = CountingModel()
        key = cache_key("clf", "1", {"text": "raced"})
        decided = asyncio.Event()

        async def slow_decision() -> None:
            await decided.wait()

        late = asyncio.ensure_future(cache.get_or_compute(key, lambda: model("raced"), before_compute=slow_decision))
        await asyncio.sleep(0.05)  # the late caller has read Redis and now waits for its decision
        first = await cache.get_or_compute(key, lambda: model("raced"))
        for _ in range(100):  # until the background write has landed
            if redis_process.client().get(KEY_PREFIX + key) is not None and not cache._unwritten:
                break
            await asyncio.sleep(0.01)
        decided.set()
        second = await late
        await cache.aclose()
        return model.calls, [first.status, second.status]

    calls, statuses = asyncio.run(scenario())
    assert calls == 1
    assert statuses == ["MISS", "HIT"]


@pytest.mark.redis
def test_redis_max_entry_bytes_is_enforced(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_process.url, max_entry_bytes=64)
        assert await cache.set("small", {"a": 1})
        assert not await cache.set("big", {"a": "x" * 100})
        assert (await cache.get("small")) == ({"a": 1}, True)
        assert (await cache.get("big")) == (None, False)
        assert cache.oversize == 1
        await cache.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_redis_down_bypasses_then_the_same_cache_recovers(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_process.url)
        model = CountingModel()
        key = cache_key("clf", "1", {"text": "k"})
        assert (await cache.get_or_compute(key, lambda: model("k"))).status == "MISS"
        assert (await cache.get_or_compute(key, lambda: model("k"))).status == "HIT"

        redis_process.stop()
        statuses = [(await cache.get_or_compute(key, lambda: model("k"))).status for _ in range(20)]
        assert statuses == ["BYPASS"] * 20  # answered, never raised
        assert cache.errors >= 1 and cache.bypasses == 20
        errors_while_down = cache.errors
        assert errors_while_down < 20  # backing off: not every request paid a connection attempt

        redis_process.start()  # same port, empty: no restart of the cache object
        deadline = time.monotonic() + 10
        status = "BYPASS"
        while status != "HIT" and time.monotonic() < deadline:
            status = (await cache.get_or_compute(key, lambda: model("k"))).status
            await asyncio.sleep(0.05)
        assert status == "HIT"
        assert cache.redis is not None and cache.redis.recoveries >= 1
        await cache.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_slow_redis_is_bypassed_within_the_timeout(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_process.url, redis_timeout_s=0.1, redis_retry_s=0.3)
        model = CountingModel()
        key = cache_key("clf", "1", {"text": "slow"})
        await cache.get_or_compute(key, lambda: model("slow"))
        redis_process.pause()  # the server stops answering; connections hang
        try:
            started = time.monotonic()
            result = await cache.get_or_compute(key, lambda: model("slow"))
            elapsed = time.monotonic() - started
            assert result.status == "BYPASS" and result.value["text_len"] == 4
            assert elapsed < 1.0  # bounded by the timeout, not by the pause
            started = time.monotonic()
            results = await asyncio.gather(*(cache.get_or_compute(key, lambda: model("slow")) for _ in range(20)))
            assert all(r.status == "BYPASS" for r in results)
            assert time.monotonic() - started < 0.5  # backing off: no further timeouts paid
        finally:
            redis_process.resume()
        await asyncio.sleep(0.35)
        deadline = time.monotonic() + 10
        status = "BYPASS"
        while status != "HIT" and time.monotonic() < deadline:
            status = (await cache.get_or_compute(key, lambda: model("slow"))).status
            await asyncio.sleep(0.05)
        assert status == "HIT"
        await cache.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_local_tier_answers_what_redis_confirmed_until_it_expires(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_process.url, local_ttl_s=3)
        model = CountingModel()
        hot = cache_key("clf", "1", {"text": "hot"})
        assert (await cache.get_or_compute(hot, lambda: model("hot"))).status == "MISS"  # written to Redis
        redis_process.client().flushdb()  # Redis forgets it; this process still has it, for local_ttl_s
        hit = await cache.get_or_compute(hot, lambda: model("hot"))
        assert (hit.status, hit.value["text_len"], model.calls, cache.local_hits) == ("HIT", 3, 1, 1)
        # An entry another process wrote is read from Redis once, then from the local tier.
        shared = cache_key("clf", "1", {"text": "shared"})
        other = redis_cache(redis_process.url, local_ttl_s=0)
        assert (await other.get_or_compute(shared, lambda: model("shared"))).status == "MISS"
        assert [(await cache.get_or_compute(shared, lambda: model("shared"))).status for _ in range(3)] == ["HIT"] * 3
        assert cache.local_hits == 3 and model.calls == 2
        # While Redis is down, confirmed entries answer until they expire; nothing new is kept locally.
        redis_process.stop()
        assert (await cache.get_or_compute(shared, lambda: model("shared"))).status == "HIT"
        fresh = cache_key("clf", "1", {"text": "fresh"})
        statuses = [(await cache.get_or_compute(fresh, lambda: model("fresh"))).status for _ in range(3)]
        assert statuses == ["BYPASS"] * 3 and model.calls == 5
        await asyncio.sleep(3.1)
        assert (await cache.get_or_compute(shared, lambda: model("shared"))).status == "BYPASS"  # expired
        await other.aclose()
        await cache.aclose()

    asyncio.run(scenario())


def test_local_tier_is_redis_only_and_off_at_zero() -> None:
    assert ResponseCache(CacheConfig()).local is None  # the memory backend is local already
    assert ResponseCache(CacheConfig(backend="redis", local_ttl_s=0), "redis://127.0.0.1:1/0").local is None
    tier = ResponseCache(CacheConfig(backend="redis", local_ttl_s=30, ttl_seconds=10), "redis://127.0.0.1:1/0").local
    assert tier is not None and tier.ttl_s == 10  # never longer than the entries live in Redis
