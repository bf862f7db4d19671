"""The outermost step of every request: request id, in-flight gauge, response headers, metrics, access log.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which costs a task and a copy per request).
It creates the :class:`~prodai_cli.serving.pipeline.RequestContext` the later steps fill in, adds
``X-Request-ID``, ``X-Model-Version`` and the headers steps asked for to every response (refusals
included), and turns an unexpected exception into a JSON 500 with the request id instead of a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from prodai_cli.serving.logging import access_logger
from prodai_cli.serving.pipeline import RequestContext
from prodai_cli.serving.tracing import trace_from, trace_id_var

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.otel import Spans

logger = logging.getLogger("prodai.serving")

CONTEXT_KEY = "prodai_ctx"
# Accept a caller's request id only if it is short and plain: it goes into logs and headers verbatim.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(value: str | None) -> str:
    """The caller's ``X-Request-ID`` when well formed, else a new random one."""
    if value and _REQUEST_ID.match(value):
        return value
    return os.urandom(16).hex()  # as unique as uuid4().hex, without building a UUID object per request


def context_of(scope_or_state: Any) -> RequestContext | None:
    """The RequestContext of a request (from its ``request.state`` or ASGI scope)."""
    if isinstance(scope_or_state, dict):
        value = scope_or_state.get("state", {}).get(CONTEXT_KEY)
    else:
        value = getattr(scope_or_state, CONTEXT_KEY, None)
    return value if isinstance(value, RequestContext) else None


def _header(value: str) -> bytes:
    return value.encode("latin-1", "replace")


class ObservabilityMiddleware:
    """Wraps the app; see the module docstring.

    Args:
        app: The ASGI app to wrap.
        metrics: Server metrics (None: not recorded).
        known_routes: Paths that get their own ``route`` label; everything else is ``other`` (bounded
            label cardinality whatever paths clients try).
        access_log: Log one line per request.
        spans: OpenTelemetry spans (None: off), see :mod:`prodai_cli.serving.otel`.

    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics | None,
        known_routes: frozenset[str],
        access_log: bool = True,
        spans: Spans | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.known_routes = known_routes
        self.access_log = access_log
        self.spans = spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        started_at = time.perf_counter()
        headers = Headers(scope=scope)
        path: str = scope.get("path", "")
        client = scope.get("client")
        ctx = RequestContext(
            request_id=request_id_from(headers.get("x-request-id")),
            method=scope.get("method", ""),
            path=path,
            route=path if path in self.known_routes else "other",
            client_ip=client[0] if client else None,
            headers=headers,
        )
        scope.setdefault("state", {})[CONTEXT_KEY] = ctx
        # W3C trace context: the caller's trace continued (or a new one), in every log line and the response.
        trace = trace_from(headers.get("traceparent"), headers.get("tracestate"))
        trace_token = trace_id_var.set(trace.trace_id)
        request_span = self.spans.begin(trace, ctx.method, path) if self.spans is not None else None
        trace_headers = [(b"traceparent", trace.traceparent.encode())]
        if trace.tracestate:
            trace_headers.append((b"tracestate", _header(trace.tracestate)))
        status = 0
        metrics = self.metrics
        if metrics is not None:
            metrics.inflight.inc()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                raw = list(message.get("headers", []))
                raw.append((b"x-request-id", _header(ctx.request_id)))
                raw.extend(trace_headers)
                if ctx.model_version:
                    raw.append((b"x-model-version", _header(ctx.model_version)))
                raw.extend((_header(k), _header(v)) for k, v in ctx.response_headers.items())
                message = {**message, "headers": raw}
            await send(message)

        failure: str | None = None
        try:
            await self.app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            # uvicorn cancels only the requests still running when the shutdown grace period ends (a client
            # that disconnects is not cancelled). Unanswered, uvicorn would send 500; a 503 with Retry-After
            # is what a load balancer retries elsewhere.
            if status != 0:
                raise
            failure = "cancelled: the shutdown grace period ended"
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await _send_json(
                send_with_headers,
                503,
                {"detail": "The server is shutting down; retry", "code": "shutting_down", "request_id": ctx.request_id},
                headers=[(b"retry-after", b"1")],
            )
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            logger.exception("unhandled error", extra={"request_id": ctx.request_id, "route": ctx.route})
            if status == 0:
                await _send_json(
                    send_with_headers,
                    500,
                    {"detail": "Internal server error", "code": "internal_error", "request_id": ctx.request_id},
                )
        finally:
            duration = time.perf_counter() - started_at
            if status == 0:
                status = 499  # the handler never answered (cancelled: client gone or shutdown timeout)
            if metrics is not None:
                metrics.inflight.dec()
                metrics.observe_request(ctx.route, status, ctx.model_version, ctx.variant, duration)
            if request_span is not None:
                request_span.end(status, ctx)
            if self.access_log:
                access_logger.info("request", extra=access_fields(ctx, path, status, duration, failure, trace.trace_id))
            trace_id_var.reset(trace_token)


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def access_fields(
    ctx: RequestContext, path: str, status: int, duration: float, failure: str | None, trace_id: str
) -> dict[str, Any]:
    """The fields of one access-log line (HTTP and gRPC alike): never bodies or secrets."""
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "method": ctx.method,
        "route": ctx.route,
        "path": path[:256],
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "client": ctx.client_ip,
    }
    if ctx.model_version:
        fields["model_version"] = ctx.model_version
        fields["variant"] = ctx.variant
    if ctx.principal:
        fields["principal"] = ctx.principal
    if failure:
        fields["error"] = failure
    fields["trace_id"] = trace_id
    fields.update(ctx.log_fields)
    return fields
