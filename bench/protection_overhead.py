"""What auth + rate limit + cache cost per request, on the in-memory backends and on a real Redis.

    python bench/protection_overhead.py [--requests 3000]

Starts its own redis-server on a free loopback port, then, in one process and one run, times the
protection steps a request goes through in the server (KeyStore.verify, RateLimiter.check_request,
ResponseCache.get_or_compute answering a hit) against a baseline loop that does the same bookkeeping with
every protection switched off. Prints p50/p99 per request and the added p50, in microseconds, for the
memory and the Redis backends, and the sequential rate of the cache-hit path alone. (The server-level
figures -- cache-hit vs miss req/s with the real model, p50 over HTTP with protection on vs off -- need
the server and are added to this script with it.)

Goal (issue 6): auth + rate limit + cache add <= 1 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prodai_cli.config import (
    CacheConfig,
    LimitRule,
    RateLimitConfig,
    load_settings,
    render_default_config,
    write_atomic,
)
from prodai_cli.keys import create_key
from prodai_cli.serving.auth import KeyStore
from prodai_cli.serving.cache import ResponseCache, cache_key
from prodai_cli.serving.ratelimit import RateLimiter

ANSWER = {"label": "POSITIVE", "confidence": 0.93, "model_version": "1", "variant": "default"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server not found: run scripts/setup")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(n: int, step: Callable[[int], Awaitable[Any]]) -> list[float]:
    for i in range(min(200, n)):  # warm-up: connections, script load, caches
        await step(i)
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        await step(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


async def measure(backend: str, redis_url: str | None, project: Path, n: int) -> dict[str, float]:
    settings = load_settings(project / "prodai.yaml")
    key = create_key(settings, f"bench-{backend}").key
    keys = KeyStore.from_settings(load_settings(project / "prodai.yaml"))
    high = LimitRule(rate=10_000_000, period_s=1, burst=0)  # measure the cost, never the refusal
    limiter = RateLimiter(
        RateLimitConfig(backend=backend, per_key=high, per_ip=high, redis_timeout_s=1), redis_url  # type: ignore[arg-type]
    )
    cache = ResponseCache(CacheConfig(backend=backend, redis_timeout_s=1), redis_url)  # type: ignore[arg-type]
    hit_key = cache_key("clf", "1", {"text": "a cached sentence"})
    await cache.set(hit_key, ANSWER)

    async def answer() -> dict[str, Any]:
        return dict(ANSWER)

    async def baseline(i: int) -> Any:
        # The same call shape without any protection: read a header, build the response.
        presented = key if i >= 0 else None
        return presented and await answer()

    async def protected(i: int) -> Any:
        auth = keys.verify(key, "predict")
        decision = await limiter.check_request(client_ip=f"10.0.{i % 250}.1", key_name=auth.key_name)
        result = await cache.get_or_compute(hit_key, answer)
        return auth.ok and decision.allowed and result.value

    async def hit(i: int) -> Any:
        return await cache.get_or_compute(hit_key, answer)

    base = await timed(n, baseline)
    prot = await timed(n, protected)
    hit_t = await timed(n, hit)
    assert cache.errors == 0 and limiter.fallbacks == 0, "the benchmark must not measure fallbacks"
    await limiter.aclose()
    await cache.aclose()
    return {
        "base_p50": statistics.median(base),
        "prot_p50": statistics.median(prot),
        "prot_p99": percentile(prot, 0.99),
        "added_p50": statistics.median(prot) - statistics.median(base),
        "hit_rps": 1e6 / statistics.mean(hit_t),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        write_atomic(project / "prodai.yaml", render_default_config())
        proc, url = start_redis(project)
        try:
            results = {
                "memory": asyncio.run(measure("memory", None, project, args.requests)),
                "redis": asyncio.run(measure("redis", url, project, args.requests)),
            }
        finally:
            proc.kill()
            proc.wait()
    print(f"protection path per request (auth + rate limit + cache hit), n={args.requests}, one process:")
    print(f"{'backend':8s} {'baseline p50':>13s} {'protected p50':>14s} {'p99':>9s} {'added p50':>10s}"
          f" {'cache-hit path req/s':>21s}")
    for backend, r in results.items():
        print(f"{backend:8s} {r['base_p50']:10.1f} us {r['prot_p50']:11.1f} us {r['prot_p99']:6.1f} us"
              f" {r['added_p50']:7.1f} us {r['hit_rps']:21.0f}")
    worst = max(r["added_p50"] for r in results.values())
    print(f"goal: added p50 <= 1000 us: {'met' if worst <= 1000 else 'NOT met'} (worst {worst:.1f} us)")


if __name__ == "__main__":
    main()
