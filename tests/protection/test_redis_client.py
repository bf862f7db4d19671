"""The auto-pipelined Redis client, against real redis-server processes (TCP, password + db, Unix socket, TLS)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from helpers import RedisServer, free_port

from prodai_cli.config import CacheConfig, LimitRule, RateLimitConfig
from prodai_cli.errors import ConfigError
from prodai_cli.serving.protection.cache import ResponseCache
from prodai_cli.serving.protection.ratelimit import RateLimiter
from prodai_cli.serving.protection.redis_client import (
    PipelinedRedis,
    RedisAddress,
    RedisConnectionError,
    RedisGuard,
    RedisReplyError,
    Script,
    release,
    shared_client,
)

T = 2.0  # a roomy per-command timeout for a busy CI machine


def test_url_parsing_covers_auth_db_tls_and_unix_sockets() -> None:
    address = RedisAddress.parse("redis://alice:s%40cret@cache.internal:6380/4")
    assert (address.host, address.port, address.db) == ("cache.internal", 6380, 4)
    assert (address.username, address.password, address.tls) == ("alice", "s@cret", False)
    assert RedisAddress.parse("redis://:pw@h").username is None
    assert RedisAddress.parse("redis://:pw@h").password == "pw"
    assert RedisAddress.parse("redis://h?db=7").db == 7
    tls = RedisAddress.parse("rediss://h?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem")
    assert (tls.tls, tls.verify, tls.ca_certs, tls.port) == (True, False, "/etc/ca.pem", 6379)
    unix = RedisAddress.parse("unix:///run/redis.sock?db=2")
    assert (unix.path, unix.db) == ("/run/redis.sock", 2)
    for bad, reason in [
        ("http://h:6379", "scheme"),
        ("redis://h/notanumber", "number"),
        ("redis://h:port/0", "port"),
        ("unix://", "socket path"),
    ]:
        with pytest.raises(ValueError, match=reason):
            RedisAddress.parse(bad)


def test_guard_names_the_config_key_for_a_bad_url() -> None:
    with pytest.raises(ConfigError, match="redis_url: unsupported Redis URL scheme 'memcached'"):
        RedisGuard("memcached://127.0.0.1", timeout_s=0.1, retry_s=1)


@pytest.mark.redis
def test_commands_of_one_loop_turn_leave_in_one_write_and_replies_match(redis_server: str) -> None:
    async def scenario() -> None:
        client = PipelinedRedis(redis_server)
        await client.execute("PING", timeout=T)  # connected
        writes = client.writes
        await asyncio.gather(*(client.execute("SET", f"k{i}", f"v{i}", timeout=T) for i in range(50)))
        values = await asyncio.gather(*(client.execute("GET", f"k{i}", timeout=T) for i in range(50)))
        assert values == [f"v{i}".encode() for i in range(50)]
        assert client.writes - writes == 2  # 100 commands, two loop turns
        # Sequential awaits cannot share a write: each command gets its own.
        await client.execute("GET", "k1", timeout=T)
        await client.execute("GET", "k2", timeout=T)
        assert client.writes - writes == 4
        assert client.connects == 1
        await client.aclose()
        with pytest.raises(RedisConnectionError, match="closed"):
            await client.execute("PING", timeout=T)

    asyncio.run(scenario())


@pytest.mark.redis
def test_an_error_reply_fails_only_its_command(redis_server: str) -> None:
    async def scenario() -> None:
        client = PipelinedRedis(redis_server)
        await client.execute("SET", "text", "x", timeout=T)
        wrong, right = await asyncio.gather(
            client.execute("LPUSH", "text", "1", timeout=T),
            client.execute("GET", "text", timeout=T),
            return_exceptions=True,
        )
        assert isinstance(wrong, RedisReplyError) and str(wrong).startswith("WRONGTYPE")
        assert right == b"x"
        assert client.connects == 1
        await client.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_evalsha_loads_the_script_again_after_redis_forgets_it(redis_server: str) -> None:
    script = Script("return {KEYS[1], ARGV[1]}")

    async def scenario() -> None:
        client = PipelinedRedis(redis_server)
        assert await client.evalsha(script, ["a"], ["1"], timeout=T) == [b"a", b"1"]
        assert await client.execute("SCRIPT", "EXISTS", script.sha, timeout=T) == [1]
        await client.execute("SCRIPT", "FLUSH", timeout=T)
        assert await client.evalsha(script, ["b"], [2], timeout=T) == [b"b", b"2"]
        assert await client.execute("SCRIPT", "EXISTS", script.sha, timeout=T) == [1]
        with pytest.raises(RedisReplyError, match="boom"):
            await client.evalsha(Script("return redis.error_reply('boom')"), [], [], timeout=T)
        await client.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_timeout_drops_the_connection_and_the_next_command_reconnects(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        client = PipelinedRedis(redis_process.url)
        await client.execute("SET", "k", "before", timeout=T)
        redis_process.pause()  # SIGSTOP: the socket stays open, nothing answers
        try:
            with pytest.raises(TimeoutError):
                await client.execute("GET", "k", timeout=0.2)
            assert not client.connected
        finally:
            redis_process.resume()
        # The stale GET's reply can never be mistaken for this one: it went out on another connection.
        assert await client.execute("SET", "k", "after", timeout=T) is not None
        assert await client.execute("GET", "k", timeout=T) == b"after"
        assert client.connects == 2
        await client.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_lost_connection_fails_its_commands_and_redis_back_is_used_again(redis_process: RedisServer) -> None:
    async def scenario() -> None:
        client = PipelinedRedis(redis_process.url)
        await client.execute("PING", timeout=T)
        redis_process.stop()
        with pytest.raises(RedisConnectionError):
            await client.execute("PING", timeout=T)
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await client.execute("PING", timeout=T)
        redis_process.start()
        assert await client.execute("PING", timeout=T) == b"PONG"
        await client.aclose()

    asyncio.run(scenario())


@pytest.mark.redis
def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "auth", extra_args=["--requirepass", "s3cret"])
    server.start()
    try:

        async def scenario() -> None:
            client = PipelinedRedis(f"redis://:s3cret@127.0.0.1:{server.port}/3")
            await client.execute("SET", "where", "db3", timeout=T)
            assert await client.execute("CLIENT", "INFO", timeout=T) is not None
            await client.aclose()
            wrong = PipelinedRedis(f"redis://:nope@127.0.0.1:{server.port}/0")
            with pytest.raises(RedisReplyError, match=r"WRONGPASS|invalid password"):
                await wrong.execute("PING", timeout=T)
            await wrong.aclose()

        asyncio.run(scenario())
        import redis

        check = redis.Redis(host="127.0.0.1", port=server.port, password="s3cret", db=3, socket_timeout=5)
        assert check.get("where") == b"db3"
        assert redis.Redis(host="127.0.0.1", port=server.port, password="s3cret", db=0).get("where") is None
    finally:
        server.stop()


@pytest.mark.redis
def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    args = ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    server = RedisServer(free_port(), tmp_path / "unix", extra_args=args)
    server.start()
    try:

        async def scenario() -> None:
            client = PipelinedRedis(f"unix://{sock}?db=2")
            await client.execute("SET", "via", "socket", timeout=T)
            info = await client.execute("CLIENT", "INFO", timeout=T)
            assert b"db=2" in info and b"laddr=" + str(sock).encode() in info
            await client.aclose()

        asyncio.run(scenario())
    finally:
        server.stop()


def _self_signed(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(directory / "key.pem"),
            "-out",
            str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return directory / "cert.pem"


@pytest.mark.redis
def test_tls_url_checks_the_certificate(tmp_path: Path) -> None:
    cert = _self_signed(tmp_path / "tls")
    tls_port = free_port()
    server = RedisServer(
        free_port(),
        tmp_path / "server",
        extra_args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(cert.parent / "key.pem"),
            "--tls-auth-clients",
            "no",
        ],
    )
    server.start()
    try:

        async def scenario() -> None:
            trusted = PipelinedRedis(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
            assert await trusted.execute("PING", timeout=T) == b"PONG"
            await trusted.aclose()
            unchecked = PipelinedRedis(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none")
            assert await unchecked.execute("PING", timeout=T) == b"PONG"
            await unchecked.aclose()
            untrusted = PipelinedRedis(f"rediss://127.0.0.1:{tls_port}/0")  # the system CAs never signed it
            with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.execute("PING", timeout=T)
            await untrusted.aclose()

        asyncio.run(scenario())
    finally:
        server.stop()


@pytest.mark.redis
def test_limit_script_and_cache_lookup_of_one_request_share_one_write(redis_server: str) -> None:
    """What the server relies on: the deferred limit decision and the cache lookup cost one round trip."""
    rule = LimitRule(rate=1000, period_s=1, burst=0)
    limiter = RateLimiter(RateLimitConfig(backend="redis", per_key=rule, per_ip=rule, redis_timeout_s=1), redis_server)
    cache = ResponseCache(CacheConfig(backend="redis", redis_timeout_s=1, local_ttl_s=0), redis_server)

    async def scenario() -> None:
        await cache.set("k", {"label": "POSITIVE"})  # connects (both components share the connection)
        await limiter.check_request(client_ip="10.0.0.2", key_name="warm")  # loads the script (NOSCRIPT, EVAL)
        client = cache.redis.client()  # type: ignore[union-attr]
        assert limiter.redis is not None and limiter.redis.client() is client
        writes, commands = client.writes, client.commands
        # The request path's order: the limit decision is started as a task, then the cache is read.
        decision_task = asyncio.ensure_future(limiter.check_request(client_ip="10.0.0.1", key_name="svc"))
        value, found = await cache.get("k")
        decision = await decision_task
        assert found and value == {"label": "POSITIVE"} and decision.allowed and decision.backend == "redis"
        assert (client.commands - commands, client.writes - writes) == (2, 1)
        await limiter.aclose()
        assert client.connected  # the cache still uses it
        await cache.aclose()
        assert not client.connected

    asyncio.run(scenario())


@pytest.mark.redis
def test_shared_clients_are_per_loop_and_closed_by_their_last_user(redis_server: str) -> None:
    held: list[PipelinedRedis] = []

    async def first_loop() -> None:
        first, second = shared_client(redis_server), shared_client(redis_server)
        assert first is second
        await first.execute("PING", timeout=T)
        await release(first)
        assert first.connected  # one user left
        held.append(shared_client(redis_server))  # still held when this loop ends
        assert held[0] is first
        await release(second)
        assert first.connected  # the held user keeps it open

    async def second_loop() -> None:
        other = shared_client(redis_server)
        assert other is not held[0]  # a client belongs to one event loop, even while another loop holds one
        await other.execute("PING", timeout=T)
        await release(other)
        assert not other.connected  # its last user gave it back: closed
        again = shared_client(redis_server)
        assert again is not other  # a fresh one after the last user left
        await release(again)

    asyncio.run(first_loop())
    asyncio.run(second_loop())


@pytest.mark.redis
def test_a_non_urgent_command_rides_along_with_the_next_write_or_goes_alone_soon(redis_server: str) -> None:
    async def scenario() -> None:
        client = PipelinedRedis(redis_server)
        await client.execute("PING", timeout=T)
        writes = client.writes
        # Alone: it waits (a loop turn later nothing is written), then goes by itself within DEFERRED_WRITE_S.
        store = asyncio.ensure_future(client.execute("SET", "bg", "1", timeout=T, urgent=False))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert client.writes == writes and not store.done()
        assert await store == b"OK"
        assert client.writes == writes + 1
        # With an urgent command queued meanwhile: one write carries both, in order.
        store = asyncio.ensure_future(client.execute("SET", "bg", "2", timeout=T, urgent=False))
        await asyncio.sleep(0)
        assert await client.execute("GET", "bg", timeout=T) == b"2"  # written after the SET, so it sees it
        assert await store == b"OK"
        assert client.writes == writes + 2
        await client.aclose()

    asyncio.run(scenario())


def test_a_server_that_accepts_and_never_answers_times_out_every_time() -> None:
    """A black hole (a listening socket nobody reads): the handshake cannot leave the client stuck."""
    import socket

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        url = f"redis://:pw@127.0.0.1:{hole.getsockname()[1]}/1"

        async def scenario() -> None:
            client = PipelinedRedis(url)
            loop = asyncio.get_running_loop()
            for _ in range(3):
                started = loop.time()
                with pytest.raises(TimeoutError):
                    await client.execute("PING", timeout=0.2)
                assert loop.time() - started < 1.0
            # A fresh attempt after the stuck one expired (a call may still join an attempt about to expire).
            assert client.connects >= 2 and not client.connected
            await client.aclose()

        asyncio.run(scenario())
