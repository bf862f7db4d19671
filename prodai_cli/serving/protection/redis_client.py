"""A small asyncio Redis client that pipelines on its own: one connection, one write per event-loop turn.

The server asks Redis two things on most requests: the rate limiter's script and the cache lookup. With a
client per component (and redis-py's connection pool) those are two writes on two sockets, two wake-ups of
``redis-server`` and two of the event loop: measured over HTTP on a 2-core machine that was ~0.75 ms before
the model could start. :class:`PipelinedRedis` keeps one connection per event loop and URL, shared by every
component (:func:`shared_client`), and *auto-pipelines*: commands issued during one turn of the event loop
are queued and sent together in one ``write`` when the loop next runs its callbacks, and their replies come
back in one read (Redis answers a connection's commands in order, so a FIFO of futures matches them up).
Callers still ``await client.execute(...)`` one command at a time; nothing waits for a batch to fill, except
a command sent with ``urgent=False`` (the cache's background store), which waits up to
:data:`DEFERRED_WRITE_S` for another command's write to ride along with.

Failure rules (the callers, through :class:`RedisGuard`, decide what to do about them):

- a command past its ``timeout`` raises TimeoutError and drops the connection (a half-open socket would
  otherwise swallow every later command); the next command reconnects;
- a lost connection fails every command waiting on it with :class:`RedisConnectionError`;
- an error reply (``WRONGTYPE``, ``NOSCRIPT``...) raises :class:`RedisReplyError` for that command only.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; ``?ssl_ca_certs=FILE`` names the
CA bundle, ``?ssl_cert_reqs=none`` skips certificate checks) and ``unix:///path/to/redis.sock[?db=N]``;
``?db=N`` works on all three.
Replies are parsed by hiredis (C); RESP2, so it works with every Redis since 2.6 and with Valkey.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import ssl
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis

from prodai_cli.errors import ConfigError
from prodai_cli.redis_url import RedisAddress

logger = logging.getLogger("prodai.serving")  # the outage lines have always come from this logger
V = TypeVar("V")

# How long a non-urgent command (a background cache store) may wait for another command's write.
DEFERRED_WRITE_S = 0.02


class RedisConnectionError(ConnectionError):
    """The connection failed or was lost before the reply arrived."""


class RedisReplyError(Exception):
    """Redis answered the command with an error (``WRONGTYPE ...``, ``NOSCRIPT ...``)."""


class _Protocol(asyncio.Protocol):
    """Feeds bytes to hiredis and completes the waiting futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        # Commands queued for the next write, and the callback that will send it (None: none scheduled).
        self.pending: list[bytes] = []
        self.flush: asyncio.Handle | None = None
        self.flush_soon = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if not self.waiters:  # a reply nobody asked for: the stream is out of step, drop it
                self.fail(RedisConnectionError("Redis sent an unexpected reply"))
                if self.transport is not None:
                    self.transport.abort()
                return
            waiter = self.waiters.popleft()
            if waiter.done():  # its caller timed out or was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(RedisReplyError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or RedisConnectionError("Redis closed the connection")
        self.fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def fail(self, error: BaseException) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class PipelinedRedis:
    """One auto-pipelined Redis connection (see the module docstring); connects on first use.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.

    Attributes:
        writes: Writes sent (each carries every command queued in one loop turn): with ``commands``, how
            much pipelining happened.
        commands: Commands sent.
        connects: Connections opened.

    Raises:
        ValueError: The URL cannot be parsed.

    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.address = RedisAddress.parse(url)
        self.writes = 0
        self.commands = 0
        self.connects = 0
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        protocol = self._protocol
        return protocol is not None and protocol.lost is None

    async def execute(self, *args: str | bytes | int | float, timeout: float, urgent: bool = True) -> Any:
        """Send one command (in the next write) and wait for its reply.

        Args:
            args: The command and its arguments, e.g. ``("GET", key)``.
            timeout: Seconds for connecting (when needed) and the reply; past it the connection is dropped.
            urgent: False lets the command wait up to :data:`DEFERRED_WRITE_S` for another command's write
                to ride along with (a background cache store: it then costs Redis and this process no
                wake-up of its own).

        Returns:
            The reply: bytes, int, None, or a list of those.

        Raises:
            TimeoutError: No reply within ``timeout``.
            RedisConnectionError: Cannot connect, or the connection was lost.
            RedisReplyError: Redis answered with an error.

        """
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        try:
            async with asyncio.timeout(timeout):
                protocol = self._protocol
                if protocol is None or protocol.lost is not None:
                    protocol = await self._connect(timeout)
                return await self._send(protocol, hiredis.pack_command(args), urgent)  # type: ignore[arg-type]
        except TimeoutError:
            # The reply may still come, or never (a half-open socket): start again on a fresh connection.
            self._drop()
            raise

    async def evalsha(
        self, script: Script, keys: list[str], args: list[str | bytes | int | float], *, timeout: float
    ) -> Any:
        """Run a Lua script by its digest, loading it when Redis does not know it (``NOSCRIPT``).

        Raises:
            TimeoutError, RedisConnectionError, RedisReplyError: As :meth:`execute`.

        """
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args, timeout=timeout)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # A restarted or flushed Redis lost its script cache: EVAL runs it and caches it again.
        return await self.execute("EVAL", script.source, len(keys), *keys, *args, timeout=timeout)

    def _send(self, protocol: _Protocol, command: bytes, urgent: bool = True) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        # Waiters and bytes are queued in the same order: replies come back in the order commands are written.
        protocol.waiters.append(waiter)
        protocol.pending.append(command)
        self.commands += 1
        if urgent and not protocol.flush_soon:
            # Everything queued until the loop runs its callbacks goes out in this one write.
            if protocol.flush is not None:
                protocol.flush.cancel()
            protocol.flush = loop.call_soon(self._flush, protocol)
            protocol.flush_soon = True
        elif protocol.flush is None:
            protocol.flush = loop.call_later(DEFERRED_WRITE_S, self._flush, protocol)
        return waiter

    def _flush(self, protocol: _Protocol) -> None:
        if protocol.flush is not None:
            protocol.flush.cancel()  # a no-op for the running callback; drops a pending timer
        protocol.flush, protocol.flush_soon = None, False
        pending, protocol.pending = protocol.pending, []
        if not pending:
            return
        if protocol.transport is None or protocol.lost is not None or protocol is not self._protocol:
            protocol.fail(RedisConnectionError("Redis connection lost before the command was sent"))
            return
        protocol.transport.write(b"".join(pending))
        self.writes += 1

    async def _connect(self, timeout: float) -> _Protocol:
        connecting = self._connecting
        if connecting is None or connecting.done():
            connecting = self._connecting = asyncio.ensure_future(self._open(timeout))
            # Marked retrieved: when every caller has timed out, nobody else reads its failure.
            connecting.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: one caller timing out must not cancel the connection the others are waiting for.
        return await asyncio.shield(connecting)

    async def _open(self, timeout: float) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self.address
        protocol: _Protocol | None = None
        try:
            # Its own deadline, so a server that accepts and never answers cannot leave it pending forever.
            async with asyncio.timeout(timeout):
                if address.path is not None:
                    _, protocol = await loop.create_unix_connection(_Protocol, address.path)
                else:
                    context: ssl.SSLContext | None = None
                    if address.tls:
                        context = ssl.create_default_context(cafile=address.ca_certs)
                        if not address.verify:
                            context.check_hostname = False
                            context.verify_mode = ssl.CERT_NONE
                    _, protocol = await loop.create_connection(_Protocol, address.host, address.port, ssl=context)
                self.connects += 1
                # Log-in and database selection go out together, before any command queued meanwhile.
                handshake: list[tuple[Any, ...]] = []
                if address.password is not None:
                    user = (address.username,) if address.username else ()
                    handshake.append(("AUTH", *user, address.password))
                if address.db:
                    handshake.append(("SELECT", address.db))
                if handshake:
                    assert protocol.transport is not None
                    waiters = [loop.create_future() for _ in handshake]
                    protocol.waiters.extend(waiters)
                    protocol.transport.write(b"".join(hiredis.pack_command(command) for command in handshake))
                    await asyncio.gather(*waiters)
        except BaseException as exc:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
            if isinstance(exc, OSError) and not isinstance(exc, (RedisConnectionError, TimeoutError)):
                raise RedisConnectionError(f"cannot connect to Redis at {self._where()}: {exc}") from exc
            raise
        self._protocol = protocol
        return protocol

    def _where(self) -> str:
        return self.address.path or f"{self.address.host}:{self.address.port}"

    def _drop(self, reason: str = "Redis connection dropped after a timeout") -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            if protocol.flush is not None:
                protocol.flush.cancel()
                protocol.flush = None
            protocol.pending = []
            protocol.fail(RedisConnectionError(reason))
            if protocol.transport is not None:
                protocol.transport.abort()

    async def aclose(self) -> None:
        """Close the connection; later commands raise :class:`RedisConnectionError`."""
        self._closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
        self._drop("the Redis client was closed")


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 digest (what ``EVALSHA`` names)."""

    source: str

    @functools.cached_property
    def sha(self) -> str:
        """Hex SHA1 of the source (computed once: the limiter asks for it on every request)."""
        return hashlib.sha1(self.source.encode("utf-8"), usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------------- sharing

_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[PipelinedRedis, int]]] = (
    weakref.WeakKeyDictionary()
)


def shared_client(url: str) -> PipelinedRedis:
    """The running loop's client for ``url``, shared by every caller (pair each call with :func:`release`).

    Sharing is the point: the cache's lookup and the limiter's script of one request leave in one write.

    Raises:
        RuntimeError: No running event loop.
        ValueError: The URL cannot be parsed.

    """
    loop = asyncio.get_running_loop()
    clients = _shared.setdefault(loop, {})
    client, users = clients.get(url, (None, 0))
    if client is None or client._closed:
        client, users = PipelinedRedis(url), 0
    clients[url] = (client, users + 1)
    return client


async def release(client: PipelinedRedis) -> None:
    """Give back a client from :func:`shared_client`; the last user closes its connection."""
    with contextlib.suppress(RuntimeError):
        clients = _shared.get(asyncio.get_running_loop(), {})
        entry = clients.get(client.url)
        if entry is not None and entry[0] is client:
            if entry[1] > 1:
                clients[client.url] = (client, entry[1] - 1)
                return
            del clients[client.url]
    await client.aclose()


# --------------------------------------------------------------------------------------------- guard


class RedisGuard:
    """A component's use of Redis: a deadline on every operation, and a pause after a failure.

    Operations go through :meth:`run` (or :meth:`execute`) on the event loop's shared, auto-pipelined
    connection (:func:`shared_client`: the cache and the rate limiter of
    one process use the same one, so a request's lookup and its limit script leave in one write). Each
    operation has a deadline of about twice the socket timeout. After a failure the guard reports
    :attr:`available` False for ``retry_s`` seconds (callers fall back without touching Redis), then lets
    the next call probe Redis again; that is how a cache or limiter recovers by itself. The guards of one
    connection keep their own counters and back-off.

    Attributes:
        errors: Failed operations (connection refused, timeout, error reply...).
        recoveries: Times an operation succeeded after a failure.
        last_error: The latest failure, ``"ExcType: message"``, for logs.

    """

    @classmethod
    def for_section(
        cls, section: str, redis_url: str | None, *, timeout_s: float, retry_s: float, name: str
    ) -> RedisGuard:
        """The guard of a config section with ``backend: redis`` (``cache``, ``rate_limit``); ``name`` is for logs.

        Raises:
            ConfigError: ``redis_url`` is empty (the message names the section), or not a Redis URL.

        """
        if not redis_url:
            raise ConfigError(
                f"{section}.backend is redis but redis_url is empty",
                hint=f"Set redis_url (or PRODAI_REDIS_URL), or {section}.backend: memory",
            )
        return cls(redis_url, timeout_s=timeout_s, retry_s=retry_s, name=name)

    def __init__(self, url: str, *, timeout_s: float, retry_s: float, name: str = "redis") -> None:
        try:
            RedisAddress.parse(url)
        except ValueError as exc:
            raise ConfigError(f"redis_url: {exc}", hint="e.g. redis://127.0.0.1:6379/0") from None
        self.url = url
        self.name = name
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.errors = 0
        self.recoveries = 0
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._failing = False
        self._client: PipelinedRedis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def available(self) -> bool:
        """False while backing off after a failure."""
        return time.monotonic() >= self._retry_at

    @property
    def command_timeout_s(self) -> float:
        """Connect + reply time one command gets (inside :meth:`run`'s deadline, so the client sees it first)."""
        return self.timeout_s * 2

    def client(self) -> PipelinedRedis:
        """The running event loop's shared connection to ``url`` (taken on first use)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client belongs to one loop; one left on a closed loop goes with it.
            self._client = shared_client(self.url)
            self._loop = loop
        return self._client

    async def execute(self, *args: str | bytes | int | float, urgent: bool = True) -> Any:
        """One command under :meth:`run`'s rules; its reply (bytes, int, None or a list).

        ``urgent=False``: see :meth:`~prodai_cli.serving.protection.redis_client.PipelinedRedis.execute`.
        """
        timeout = self.command_timeout_s
        return await self.run(lambda client: client.execute(*args, timeout=timeout, urgent=urgent))

    async def run(self, operation: Callable[[PipelinedRedis], Awaitable[V]]) -> V:
        """Run ``operation(client)`` under the deadline; record success or failure.

        Raises:
            Exception: Whatever the operation raised, or TimeoutError past the deadline; the caller
                decides how to fail open.

        """
        try:
            async with asyncio.timeout(self.timeout_s * 2 + 0.05):
                result = await operation(self.client())
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if not self._failing:
                # Once per outage, not per request: an outage under load would flood the log.
                logger.warning(
                    "%s: Redis failed (%s); falling back, retrying every %.1f s",
                    self.name,
                    self.last_error,
                    self.retry_s,
                )
            self._failing = True
            self._retry_at = time.monotonic() + self.retry_s
            raise
        if self._failing:
            self._failing = False
            self.recoveries += 1
            logger.info("%s: Redis is back", self.name)
        return result

    async def aclose(self) -> None:
        """Give back the shared connection (the last user closes it; call from the loop that used it)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await release(client)
