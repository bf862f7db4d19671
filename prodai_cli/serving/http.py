"""HTTP/1.1 limits at the connection: header size and count, slow or silent clients, open connections.

uvicorn's httptools protocol (the fast one, used whenever httptools is installed) has none of these: it
buffers a request head of any size, keeps a connection that never sends a byte open forever, and lets a
client drip a head or a body one byte at a time (slowloris). :class:`GuardedHttpToolsProtocol` adds them
below the ASGI app, so a refused connection costs no request task and its memory stays bounded:

- ``serving.max_header_bytes``: the request line and headers of one request; past it the answer is
  ``431 Request Header Fields Too Large`` and the connection closes. Bytes are counted as they arrive, so a
  head that never ends is cut at the limit instead of being buffered.
- ``serving.max_headers``: header fields in one request (431 past it).
- ``serving.request_read_timeout_s``: from a connection's first byte (or from its opening, for one that sends
  nothing) to the end of the request's body; a request still incomplete then gets ``408`` and is closed.
  The same deadline restarts for each request on a kept-alive connection.
- ``serving.keep_alive_timeout_s``: an idle kept-alive connection is closed after this long (uvicorn's own).
- ``serving.max_connections``: beyond this many open connections a new one gets ``503`` with
  ``Retry-After`` at once and is closed, before anything of it is read.

The limits are class attributes set by :func:`configure` once per process (a uvicorn worker process runs it
from the app factory), because uvicorn instantiates the protocol itself, per connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from prodai_cli.config import ServingConfig

logger = logging.getLogger("prodai.serving.http")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    """The connection-level limits (see the module docstring)."""

    max_header_bytes: int = 32_768
    max_headers: int = 100
    request_read_timeout_s: float = 10.0
    max_connections: int = 1000
    retry_after_s: int = 1

    @classmethod
    def from_config(cls, serving: ServingConfig) -> HttpLimits:
        """The limits of the ``serving`` section."""
        return cls(
            max_header_bytes=serving.max_header_bytes,
            max_headers=serving.max_headers,
            request_read_timeout_s=serving.request_read_timeout_s,
            max_connections=serving.max_connections,
        )


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing a head over the limits."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, a request read deadline and a connection cap."""

    limits = HttpLimits()
    refused: dict[int, int] = {408: 0, 431: 0, 503: 0}  # noqa: RUF012 (one process-wide tally, read by metrics)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._closing = False

    # ------------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse a connection over the cap; otherwise start the deadline for its first request."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, b"Too many open connections; retry shortly", retry_after=True)
            return
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count head bytes as they arrive; refuse a head over the limits with 431."""
        if self._closing:
            return
        if self._in_head:
            if self._deadline is None:
                self._arm_deadline()
            self._head_bytes += len(data)
        # A callback's _HeadTooLarge reaches uvicorn as an HttpParserError: it calls send_400_response (below).
        super().data_received(data)
        if self._closing:
            return
        # Still inside the head after this chunk, and past the limit: the head is too large, however it ends.
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, b"Request header fields too large")

    def send_400_response(self, msg: str) -> None:
        """A parse failure that was our own limit is a 431, not uvicorn's 400."""
        if self._closing:
            return
        if self._head_bytes > self.limits.max_header_bytes or self._header_count > self.limits.max_headers:
            self._refuse(431, b"Request header fields too large")
            return
        super().send_400_response(msg)

    # ------------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        """A new request: its head is counted from zero (bytes already counted stay on the connection)."""
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header fields and their size; stop the parser past either limit."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers or len(name) + len(value) > self.limits.max_header_bytes:
            self._head_bytes = max(self._head_bytes, self.limits.max_header_bytes + 1)
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in; the body (if any) still has to arrive before the same deadline."""
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in: no deadline until the next one starts."""
        self._disarm_deadline()
        self._head_bytes = 0
        self._in_head = True
        super().on_message_complete()

    # ------------------------------------------------------------------------ helpers
    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(self.limits.request_read_timeout_s, self._on_deadline)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete and not self._in_head:
            if self.cycle.more_body:
                # The head arrived but the body is still dripping in: the app is waiting on it.
                self.cycle.disconnected = True
                self.cycle.message_event.set()
                self._refuse(408, b"Request not received in time")
            return  # a complete request is being answered: the response, not the client, is slow
        if self._head_bytes == 0 and self.cycle is None:
            # Never sent a byte: close quietly (there is no request to answer).
            self._count(408)
            self._closing = True
            self.transport.close()
            return
        if self._head_bytes == 0:
            # Idle between requests: uvicorn's keep-alive timer closes these; nothing to answer here.
            return
        self._refuse(408, b"Request not received in time")

    def _count(self, status: int) -> None:
        GuardedHttpToolsProtocol.refused[status] = GuardedHttpToolsProtocol.refused.get(status, 0) + 1

    def _refuse(self, status: int, body: bytes, *, retry_after: bool = False) -> None:
        """Answer ``status`` with a JSON reason and close, whatever state the parser is in."""
        if self._closing or self.transport.is_closing():
            return
        self._closing = True
        self._count(status)
        self._disarm_deadline()
        import json

        code = {408: "request_timeout", 431: "headers_too_large", 503: "too_many_connections"}[status]
        payload = json.dumps({"detail": body.decode(), "code": code}).encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(payload),
            b"connection: close\r\n",
        ]
        if retry_after:
            head.append(b"retry-after: %d\r\n" % self.limits.retry_after_s)
        self.transport.write(b"".join(head) + b"\r\n" + payload)
        self.transport.close()
        logger.info("connection refused", extra={"status": status, "reason": code})


def configure(serving: ServingConfig) -> None:
    """Set this process's connection limits from the ``serving`` section (before the server accepts)."""
    GuardedHttpToolsProtocol.limits = HttpLimits.from_config(serving)


def uvicorn_options(serving: ServingConfig) -> dict[str, Any]:
    """The uvicorn settings that enforce the ``serving`` section's connection limits.

    Proxy headers are off: uvicorn would otherwise rewrite the client address from ``X-Forwarded-For`` sent by
    any peer on its ``forwarded_allow_ips`` (127.0.0.1 by default) before prodai sees it; prodai honours
    forwarding headers only from ``rate_limit.trusted_proxies`` (see
    :class:`~prodai_cli.serving.protection.ratelimit.ClientIpResolver`).
    """
    configure(serving)
    return {
        "http": GuardedHttpToolsProtocol,
        "proxy_headers": False,
        "timeout_keep_alive": serving.keep_alive_timeout_s,
        # uvicorn's own cap would answer 503 without Retry-After after reading the head; ours refuses first.
        "limit_concurrency": None,
        "h11_max_incomplete_event_size": serving.max_header_bytes,
    }
