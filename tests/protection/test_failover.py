"""Killing Redis under load: the limiter and the cache fail open and come back on their own (real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from helpers import RedisServer

from prodai_cli.config import CacheConfig, LimitRule, RateLimitConfig
from prodai_cli.serving.protection.cache import KEY_PREFIX as CACHE_PREFIX
from prodai_cli.serving.protection.cache import ResponseCache, cache_key
from prodai_cli.serving.protection.ratelimit import RateLimiter


@pytest.mark.redis
@pytest.mark.slow
def test_killing_redis_under_load_fails_open_and_restarting_restores_both(redis_process: RedisServer) -> None:
    limiter = RateLimiter(
        RateLimitConfig(
            backend="redis",
            per_key=LimitRule(rate=100_000, period_s=1, burst=0),
            per_ip=LimitRule(rate=100_000, period_s=1, burst=0),
            redis_timeout_s=0.3,
            redis_retry_s=0.2,
        ),
        redis_process.url,
    )
    cache = ResponseCache(  # the local tier off: this is about the shared tier failing over
        CacheConfig(backend="redis", redis_timeout_s=0.3, redis_retry_s=0.2, local_ttl_s=0), redis_process.url
    )
    model_calls = 0
    phase = "before"
    outcomes: Counter[tuple[str, str, str]] = Counter()
    failures: list[BaseException] = []

    async def model(text: str) -> dict[str, str]:
        nonlocal model_calls
        model_calls += 1
        await asyncio.sleep(0.002)
        return {"label": text.upper()}

    async def request(i: int) -> None:
        # What the server's request path does with these two components.
        started_in = phase
        decision = await limiter.check_request(client_ip=f"10.0.0.{i % 5}", key_name=f"key-{i % 3}")
        assert decision.allowed
        text = f"text-{i % 10}"
        result = await cache.get_or_compute(cache_key("clf", "1", {"text": text}), lambda: model(text))
        assert result.value == {"label": text.upper()}
        outcomes[(started_in, decision.backend, result.status)] += 1

    async def worker(worker_id: int, stop_at: float) -> None:
        i = worker_id
        while time.monotonic() < stop_at:
            try:
                await request(i)
            except Exception as exc:  # anything reaching here would have been a 5xx
                failures.append(exc)
            i += 16
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        nonlocal phase
        stop_at = time.monotonic() + 6.0
        workers = [asyncio.ensure_future(worker(w, stop_at)) for w in range(16)]
        await asyncio.sleep(1.0)
        phase = "down"
        redis_process.stop()
        await asyncio.sleep(1.5)
        phase = "restarted"
        redis_process.start()
        await asyncio.sleep(1.5)
        phase = "after"
        await asyncio.gather(*workers)
        await limiter.aclose()
        await cache.aclose()

    asyncio.run(scenario())
    assert failures == []

    def count(phase_name: str, backend: str | None = None, status: str | None = None) -> int:
        return sum(
            n
            for (p, b, s), n in outcomes.items()
            if p == phase_name and (backend is None or b == backend) and (status is None or s == status)
        )

    assert count("before", "redis", "HIT") > 0
    # Down: every request still answered; limits decided in memory, the cache bypassed.
    assert count("down") > 0
    assert count("down", "fallback") == count("down")
    assert count("down", status="BYPASS") == count("down")
    # Back by itself: after the restart (same port, empty Redis) decisions and hits come from Redis again.
    assert count("after") > 0
    assert count("after", "redis") == count("after")
    assert count("after", status="HIT") > count("after") * 0.9
    assert limiter.fallbacks >= count("down")
    assert cache.redis is not None and cache.redis.recoveries >= 1
    # (Limiter keys at this rate expire within milliseconds; the `after` decisions above came from Redis.)
    assert redis_process.client().keys(CACHE_PREFIX + "*")
