"""Rate limits: GCRA numbers and headers, atomicity under concurrency and across processes, TTLs, fail-open.

Redis tests run against a real redis-server (fixtures `redis_process` / `redis_server` in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from helpers import REPO_ROOT, RedisServer

from prodai_cli.config import LimitRule, RateLimitConfig
from prodai_cli.errors import ConfigError
from prodai_cli.serving.protection.ratelimit import KEY_PREFIX, ClientIpResolver, RateDecision, RateLimiter


def make_config(backend: str = "memory", **rules: LimitRule) -> RateLimitConfig:
    values: dict[str, Any] = {"backend": backend, "redis_timeout_s": 0.5, "redis_retry_s": 0.2}
    values.update(rules)
    return RateLimitConfig(**values)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend_url(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Each test runs on the in-memory backend and on a real Redis."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_server")
    return "memory", None


def test_redis_backend_without_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"rate_limit\.backend is redis but redis_url is empty"):
        RateLimiter(make_config("redis"))


def test_hundred_concurrent_requests_against_ten_admit_exactly_ten(backend_url: tuple[str, str | None]) -> None:
    backend, url = backend_url
    limiter = RateLimiter(make_config(backend, per_key=LimitRule(rate=10, period_s=60, burst=0)), url)

    async def scenario() -> list[RateDecision]:
        decisions = await asyncio.gather(*(limiter.acquire([("per_key", "tenant")]) for _ in range(100)))
        await limiter.aclose()
        return list(decisions)

    decisions = asyncio.run(scenario())
    admitted = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert len(admitted) == 10 and len(refused) == 90
    assert {d.backend for d in decisions} == {backend}
    assert (limiter.allowed, limiter.denied, limiter.fallbacks) == (10, 90, 0)
    # Every decision carries the rule's numbers; the admitted ones count down 9..0 with no repeats.
    assert all(d.limit == 10 and d.rule == "per_key" for d in decisions)
    assert sorted(d.remaining for d in admitted) == list(range(10))
    for d in admitted:
        headers = d.headers()
        assert headers["RateLimit-Limit"] == "10"
        assert headers["RateLimit-Remaining"] == str(d.remaining)
        # One request refills every 6 s: the bucket is full again after 6 s per request taken.
        assert headers["RateLimit-Reset"] == str(6 * (10 - d.remaining))
        assert "Retry-After" not in headers
    for d in refused:
        headers = d.headers()
        assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("10", "0")
        assert headers["RateLimit-Reset"] == "60"
        assert headers["Retry-After"] == "6"
        assert 5.0 < d.retry_after_s <= 6.0 and 59.0 < d.reset_s <= 60.0


def test_burst_and_refill_follow_gcra() -> None:
    now = [1000.0]
    limiter = RateLimiter(make_config(per_ip=LimitRule(rate=2, period_s=1, burst=1)), clock=lambda: now[0])

    async def take() -> RateDecision:
        return await limiter.acquire([("per_ip", "1.2.3.4")])

    async def scenario() -> None:
        first = [await take() for _ in range(3)]
        assert [d.allowed for d in first] == [True, True, True]  # rate 2 + burst 1 at once
        assert [d.remaining for d in first] == [2, 1, 0]
        refused = await take()
        assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
        assert refused.reset_s == pytest.approx(1.5)
        now[0] += 0.5  # one emission interval later: exactly one more
        assert (await take()).allowed
        assert not (await take()).allowed
        now[0] += 10  # long idle: back to the full burst, not more
        assert [(await take()).allowed for _ in range(4)] == [True, True, True, False]

    asyncio.run(scenario())


def test_rules_are_all_or_nothing(backend_url: tuple[str, str | None]) -> None:
    backend, url = backend_url
    config = make_config(
        backend, per_key=LimitRule(rate=5, period_s=60, burst=0), per_ip=LimitRule(rate=2, period_s=60, burst=0)
    )
    limiter = RateLimiter(config, url)

    async def scenario() -> None:
        a1 = await limiter.check_request(client_ip="10.0.0.1", key_name="k")
        a2 = await limiter.check_request(client_ip="10.0.0.1", key_name="k")
        assert a1.allowed and a2.allowed
        assert (a2.rule, a2.remaining, a2.limit) == ("per_ip", 0, 2)  # the tighter rule speaks
        refused = await limiter.check_request(client_ip="10.0.0.1", key_name="k")
        assert not refused.allowed and refused.rule == "per_ip"
        # The refused request took nothing from the key's bucket: 5 - 2 taken = 3 left before this one.
        other_ip = await limiter.check_request(client_ip="10.0.0.2", key_name="k")
        assert other_ip.allowed
        key_only = await limiter.acquire([("per_key", "k")], peek=True)
        assert key_only.remaining == 1  # 5 - 3 taken - this peek's own request
        await limiter.aclose()

    asyncio.run(scenario())


def test_auth_failure_limit_peeks_without_consuming(backend_url: tuple[str, str | None]) -> None:
    backend, url = backend_url
    limiter = RateLimiter(make_config(backend, auth_failures=LimitRule(rate=3, period_s=60, burst=0)), url)

    async def scenario() -> None:
        for _ in range(10):  # peeking is free
            assert (await limiter.auth_blocked("6.6.6.6")).allowed
        for _ in range(3):
            assert (await limiter.record_auth_failure("6.6.6.6")).allowed
        blocked = await limiter.auth_blocked("6.6.6.6")
        assert not blocked.allowed and blocked.rule == "auth_failures"
        assert blocked.headers()["Retry-After"] == "20"
        assert (await limiter.auth_blocked("7.7.7.7")).allowed  # per IP
        await limiter.aclose()

    asyncio.run(scenario())


def test_disabled_limiter_admits_everything_without_headers() -> None:
    limiter = RateLimiter(RateLimitConfig(enabled=False, per_ip=LimitRule(rate=1)))

    async def scenario() -> list[RateDecision]:
        return [await limiter.check_request(client_ip="1.1.1.1") for _ in range(5)]

    decisions = asyncio.run(scenario())
    assert all(d.allowed and d.backend == "off" and d.headers() == {} for d in decisions)


@pytest.mark.redis
def test_every_limiter_key_in_redis_has_a_ttl(redis_process: RedisServer) -> None:
    config = make_config(
        "redis",
        # Emission intervals of seconds, so no key expires before it is inspected.
        per_key=LimitRule(rate=10, period_s=20, burst=5),
        per_ip=LimitRule(rate=100, period_s=300, burst=0),
        auth_failures=LimitRule(rate=5, period_s=60, burst=0),
    )
    limiter = RateLimiter(config, redis_process.url)

    async def scenario() -> None:
        for i in range(30):
            await limiter.check_request(client_ip=f"10.0.0.{i % 7}", key_name=f"key-{i % 3}")
        await limiter.record_auth_failure("10.9.9.9")
        await limiter.auth_blocked("10.8.8.8")  # a peek writes nothing
        await limiter.aclose()

    asyncio.run(scenario())
    client = redis_process.client()
    keys = sorted(k.decode() for k in client.scan_iter(match="*"))
    assert len(keys) == 3 + 7 + 1
    assert all(k.startswith(KEY_PREFIX) for k in keys)
    assert f"{KEY_PREFIX}auth_failures:10.8.8.8" not in keys
    longest = {"per_key": 20 / 10 * 15, "per_ip": 300 / 100 * 100, "auth_failures": 60 / 5 * 5}
    for key in keys:
        ttl_ms = client.pttl(key)
        rule = key[len(KEY_PREFIX) :].split(":", 1)[0]
        # Never -1 (no expiry) and never longer than the time the bucket takes to refill.
        assert 0 < ttl_ms <= longest[rule] * 1000, (key, ttl_ms)


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from prodai_cli.config import LimitRule, RateLimitConfig
    from prodai_cli.serving.protection.ratelimit import RateLimiter

    config = RateLimitConfig(backend="redis", per_key=LimitRule(rate=10, period_s=600, burst=0), redis_timeout_s=2)
    limiter = RateLimiter(config, sys.argv[1])

    async def main():
        await limiter.acquire([("per_key", "warm-up")])  # connect before the start signal
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        decisions = await asyncio.gather(*(limiter.acquire([("per_key", "shared")]) for _ in range(30)))
        print(json.dumps({"allowed": sum(d.allowed for d in decisions),
                          "remaining": sorted(d.remaining for d in decisions if d.allowed),
                          "backends": sorted({d.backend for d in decisions})}), flush=True)
        await limiter.aclose()

    asyncio.run(main())
    """
)


@pytest.mark.redis
def test_a_limit_is_shared_by_two_processes(redis_server: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_server],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # release both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sum(o["allowed"] for o in outputs) == 10
    assert sorted(r for o in outputs for r in o["remaining"]) == list(range(10))
    assert all(o["backends"] == ["redis"] for o in outputs)


@pytest.mark.redis
def test_redis_down_falls_back_to_memory_and_the_same_limiter_recovers(redis_process: RedisServer) -> None:
    limiter = RateLimiter(make_config("redis", per_key=LimitRule(rate=5, period_s=60, burst=0)), redis_process.url)

    async def scenario() -> None:
        first = await limiter.acquire([("per_key", "a")])
        assert first.allowed and first.backend == "redis"
        redis_process.stop()
        during = await asyncio.gather(*(limiter.acquire([("per_key", "b")]) for _ in range(20)))
        # Fail-open, not fail-free: the in-memory limiter still enforces the rule.
        assert {d.backend for d in during} == {"fallback"}
        assert sum(d.allowed for d in during) == 5
        assert limiter.fallbacks == 20 and limiter.errors >= 1
        redis_process.start()
        deadline = time.monotonic() + 10
        decision = during[-1]
        while decision.backend != "redis" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            decision = await limiter.acquire([("per_key", "c")])
        assert decision.backend == "redis" and decision.allowed
        await limiter.aclose()

    asyncio.run(scenario())
    assert redis_process.client().exists(f"{KEY_PREFIX}per_key:c") == 1


@pytest.mark.redis
def test_slow_redis_falls_back_within_the_timeout(redis_process: RedisServer) -> None:
    config = make_config("redis", per_key=LimitRule(rate=5, period_s=60, burst=0))
    config = config.model_copy(update={"redis_timeout_s": 0.1, "redis_retry_s": 0.3})
    limiter = RateLimiter(config, redis_process.url)

    async def scenario() -> None:
        assert (await limiter.acquire([("per_key", "a")])).backend == "redis"
        redis_process.pause()
        try:
            started = time.monotonic()
            decision = await limiter.acquire([("per_key", "a")])
            assert decision.backend == "fallback" and decision.allowed
            assert time.monotonic() - started < 1.0
        finally:
            redis_process.resume()
        await limiter.aclose()

    asyncio.run(scenario())


def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    direct = ClientIpResolver([])
    assert direct("203.0.113.5", "1.2.3.4") == "203.0.113.5"  # anyone can write the header
    assert direct(None, None) == "unknown"
    behind_lb = ClientIpResolver(["10.0.0.0/8"])
    assert behind_lb("10.1.2.3", "198.51.100.7") == "198.51.100.7"
    assert behind_lb("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.0.0.9") == "198.51.100.7"  # spoofed left part ignored
    assert behind_lb("203.0.113.5", "198.51.100.7") == "203.0.113.5"  # not from the proxy: header ignored
    assert behind_lb("10.1.2.3", "not-an-ip") == "10.1.2.3"
    assert behind_lb("10.1.2.3", "10.0.0.1, 10.0.0.2") == "10.1.2.3"


def test_trusted_proxies_are_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="is not an IP address or CIDR network"):
        RateLimitConfig(trusted_proxies=["10.0.0.0/33"])
