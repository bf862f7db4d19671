"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), beside the HTTP server.

With ``serving.grpc_port`` set (and the ``grpc`` extra installed) the server's lifespan starts a ``grpc.aio``
server on ``serving.host:serving.grpc_port``, on the HTTP server's own event loop and in its process: the same
model pool and micro-batchers, and the same pipeline as ``/predict`` and the HTTP routes of
:mod:`.oip_v2` (API key, rate limits, cache, A/B routing and stickiness by ``x-user-id``, breaker/fallback,
filters, metrics labelled by route). It stops when the HTTP server stops (after its drain), giving in-flight
calls ``serving.grace_period_s``.

Methods: ``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``, ``ModelMetadata`` (no key needed,
like ``/health`` and ``GET /v2/...``) and ``ModelInfer``; any other method of the service is UNIMPLEMENTED.
A ``ModelInfer`` request is turned into the JSON form of the HTTP protocol (its raw contents, or
``bytes_contents``, as the binary tensor extension's data) and validated by the same code; outputs always
come back as ``raw_output_contents``, as Triton sends them.

Metadata stands for headers: the API key in the ``auth.header`` key in lower case (``x-api-key``), the user
in ``x-user-id``, ``x-request-id`` and ``traceparent``/``tracestate``. Answers carry ``x-request-id``,
``traceparent``, ``x-model-version``, ``x-cache`` and the ``ratelimit-*`` keys as trailing metadata.
Refusals map to status codes: 400/413/415/422 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 INTERNAL; the details are
the same message HTTP gives. Metrics and the access log record the HTTP status the refusal stands for (so one
error-rate query covers both transports), under the route ``/inference.GRPCInferenceService/<Method>``.

Bounds: request messages up to ``serving.grpc_max_message_bytes`` (grpc refuses larger ones with
RESOURCE_EXHAUSTED before reading them), metadata up to ``serving.max_header_bytes``, at most
``serving.max_connections`` calls in progress (more get RESOURCE_EXHAUSTED), and every limit of the HTTP
protocol on the request itself (texts per request, characters per text, id length).

The messages are the generated modules shipped in ``tritonclient.grpc`` (``service_pb2``): one definition of
the protocol, the same one Triton's client speaks, with no code generation in our build. Only the
messages are used; the service is registered with a generic handler (no generated servicer base class, whose
unimplemented methods are synchronous functions).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ServeError
from prodai_cli.serving.errors import ServingError
from prodai_cli.serving.logging import access_logger
from prodai_cli.serving.middleware import request_id_from
from prodai_cli.serving.pipeline import Inference, RequestContext, Route, Router
from prodai_cli.serving.protocols.oip_v2 import InferAdapter, OipError, OipV2
from prodai_cli.serving.tracing import TraceContext, trace_from, trace_id_var

if TYPE_CHECKING:
    import grpc

    from prodai_cli.serving.otel import Spans
    from prodai_cli.serving.state import ServerState

logger = logging.getLogger("prodai.serving")

SERVICE = "inference.GRPCInferenceService"
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
# The HTTP status a refusal carries -> the gRPC status code's name (grpc is imported lazily).
STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
MISSING_EXTRA = "gRPC needs the grpc extra: pip install 'prodai[grpc]' (grpcio and tritonclient[grpc])"


def route_of(method: str) -> str:
    """The metric label of a method: its gRPC path."""
    return f"/{SERVICE}/{method}"


def grpc_code_name(status: int) -> str:
    """The gRPC status code (its name) standing for an HTTP status."""
    return STATUS_CODES.get(status, "INTERNAL")


def _length_prefixed(elements: Iterable[bytes]) -> bytes:
    """BYTES elements in the raw layout: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def request_document(message: Any) -> tuple[dict[str, Any], bytes]:
    """A ``ModelInferRequest`` in the HTTP protocol's JSON form, and its raw tensor data.

    Raw contents (what ``tritonclient.grpc`` sends) and ``bytes_contents`` both become the binary extension's
    data, so one validator (:meth:`InferAdapter.parse_request`) reads every transport.
    """
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise OipError("raw_input_contents must hold one entry per input")
    inputs: list[dict[str, Any]] = []
    binary = b""
    for index, tensor in enumerate(message.inputs):
        data = raw[index] if raw else _length_prefixed(tensor.contents.bytes_contents)
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": {"binary_data_size": len(data)},
            }
        )
        binary = data  # the validator refuses more than one input
    document: dict[str, Any] = {"inputs": inputs}
    if message.id:
        document["id"] = message.id
    if message.outputs:
        document["outputs"] = [{"name": output.name} for output in message.outputs]
    return document, binary


class GrpcInferAdapter:
    """``ModelInfer`` as a pipeline adapter: :class:`InferAdapter`'s validation, routing and outputs.

    Args:
        oip: The protocol's server side.
        message: The ``ModelInferRequest``.

    """

    def __init__(self, oip: OipV2, message: Any) -> None:
        self.oip = oip
        self.message = message
        self.infer = InferAdapter(oip, message.model_name, message.model_version or None)

    def parse(self, ctx: RequestContext, body: bytes) -> list[str]:
        """The texts of the message (``body`` is empty: the transport read the message)."""
        self.oip.known_model(self.infer.name)  # after the guards: an unauthenticated caller learns nothing
        document, binary = request_document(self.message)
        return self.infer.parse_request(ctx, document, binary)

    def route(self, ctx: RequestContext, router: Router) -> Route:
        """As over HTTP: the router's choice, or the version the message names."""
        return self.infer.route(ctx, router)

    def render(self, ctx: RequestContext, inference: Inference) -> Any:
        """A ``ModelInferResponse`` with every requested output as raw contents."""
        from tritonclient.grpc import service_pb2

        response = service_pb2.ModelInferResponse(model_name=self.infer.name, model_version=inference.model_version)
        request_id = ctx.options["oip"]["id"]
        if request_id:
            response.id = request_id
        for output in self.infer.output_tensors(ctx, inference):
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
            response.raw_output_contents.append(output.serialize())
        return response


def _headers_of(metadata: Iterable[Any] | None) -> Any:
    """Invocation metadata as request headers (case-insensitive; binary ``-bin`` values are left out)."""
    from starlette.datastructures import Headers

    raw = [
        (str(key).encode("latin-1", "replace"), value.encode("latin-1", "replace"))
        for key, value in (metadata or ())
        if isinstance(value, str)
    ]
    return Headers(raw=raw)


def _peer_ip(peer: str | None) -> str | None:
    """The IP of ``ipv4:1.2.3.4:5678`` / ``ipv6:[::1]:5678`` (None for other transports)."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


def _trailers(ctx: RequestContext, trace: TraceContext) -> tuple[tuple[str, str], ...]:
    """What HTTP answers in headers, as trailing metadata (keys in lower case, values printable ASCII)."""
    pairs = [("x-request-id", ctx.request_id), ("traceparent", trace.traceparent)]
    if trace.tracestate:
        pairs.append(("tracestate", trace.tracestate))
    if ctx.model_version:
        pairs.append(("x-model-version", ctx.model_version))
    pairs.extend((key.lower(), value) for key, value in ctx.response_headers.items())
    return tuple((key, value.encode("ascii", "replace").decode()) for key, value in pairs)


Handler = Callable[[Any, RequestContext], Awaitable[Any]]


class GrpcInferenceService:
    """The service's methods over the server's state, each observed like an HTTP request.

    Args:
        state: The server's state (pool, pipeline, metrics, readiness).
        access_log: Log one line per call (``monitoring.access_log``).
        spans: OpenTelemetry spans (None: off).

    """

    def __init__(self, state: ServerState, *, access_log: bool = True, spans: Spans | None = None) -> None:
        self.state = state
        self.oip = OipV2(state)
        self.access_log = access_log
        self.spans = spans

    # ------------------------------------------------------------------------------------ methods
    async def server_live(self, request: Any, ctx: RequestContext) -> Any:
        """Live while the process serves."""
        from tritonclient.grpc import service_pb2

        return service_pb2.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, ctx: RequestContext) -> Any:
        """Ready once every configured version is, and not draining (as ``/health/ready``)."""
        from tritonclient.grpc import service_pb2

        return service_pb2.ServerReadyResponse(ready=self.state.ready)

    async def model_ready(self, request: Any, ctx: RequestContext) -> Any:
        """Whether the model (and version) is loaded here; an unknown one is simply not ready."""
        from tritonclient.grpc import service_pb2

        models = self.oip.ready_models(request.name)
        ready = bool(models) and (not request.version or request.version in {m.version for m in models})
        return service_pb2.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, ctx: RequestContext) -> Any:
        """Name and version (the binary tensor extension is HTTP's; gRPC's raw contents are native)."""
        from tritonclient.grpc import service_pb2

        from prodai_cli import __version__

        return service_pb2.ServerMetadataResponse(name="prodai", version=__version__, extensions=[])

    async def model_metadata(self, request: Any, ctx: RequestContext) -> Any:
        """Versions, platform, inputs and outputs (as ``GET /v2/models/{name}``)."""
        from tritonclient.grpc import service_pb2

        document = self.oip.metadata(request.name, request.version or None)
        response = service_pb2.ModelMetadataResponse(
            name=document["name"], versions=document["versions"], platform=document["platform"]
        )
        for field in ("inputs", "outputs"):
            for tensor in document[field]:
                getattr(response, field).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return response

    async def model_infer(self, request: Any, ctx: RequestContext) -> Any:
        """The pipeline, as ``POST /v2/models/{name}/infer``."""
        return await self.state.pipeline.serve(None, ctx, GrpcInferAdapter(self.oip, request))

    # ------------------------------------------------------------------------------------ plumbing
    def observed(self, method: str, handler: Handler) -> Callable[[Any, Any], Awaitable[Any]]:
        """``handler`` with what the HTTP middleware does: context, trace, metrics, access log, refusals."""
        import grpc

        route = route_of(method)
        metrics = self.state.metrics

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started_at = time.perf_counter()
            headers = _headers_of(context.invocation_metadata())
            ctx = RequestContext(
                request_id=request_id_from(headers.get("x-request-id")),
                method="GRPC",
                path=route,
                route=route,
                client_ip=_peer_ip(context.peer()),
                headers=headers,
            )
            trace = trace_from(headers.get("traceparent"), headers.get("tracestate"))
            token = trace_id_var.set(trace.trace_id)
            request_span = self.spans.begin(trace, ctx.method, route) if self.spans is not None else None
            metrics.inflight.inc()
            status, code, failure = 200, "OK", None
            try:
                try:
                    response = await handler(request, ctx)
                except ServingError as exc:
                    status, code = exc.status_code, grpc_code_name(exc.status_code)
                    ctx.response_headers.update(exc.headers)
                    await context.abort(getattr(grpc.StatusCode, code), exc.message, _trailers(ctx, trace))
                except asyncio.CancelledError:
                    status, code, failure = 499, "CANCELLED", "cancelled"
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    status, code, failure = 500, "INTERNAL", f"{type(exc).__name__}: {exc}"
                    logger.exception("unhandled error", extra={"request_id": ctx.request_id, "route": route})
                    message = f"Internal server error (request id {ctx.request_id})"
                    await context.abort(grpc.StatusCode.INTERNAL, message, _trailers(ctx, trace))
                context.set_trailing_metadata(_trailers(ctx, trace))
                return response
            finally:
                duration = time.perf_counter() - started_at
                metrics.inflight.dec()
                metrics.observe_request(route, status, ctx.model_version, ctx.variant, duration)
                if request_span is not None:
                    request_span.end(status, ctx)
                if self.access_log:
                    self._log(ctx, status, code, failure, duration, trace)
                trace_id_var.reset(token)

        return call

    @staticmethod
    def _log(
        ctx: RequestContext, status: int, code: str, failure: str | None, duration: float, trace: TraceContext
    ) -> None:
        from prodai_cli.serving.middleware import access_fields

        fields = access_fields(ctx, ctx.path, status, duration, failure, trace.trace_id)
        fields["grpc_status"] = code
        access_logger.info("request", extra=fields)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service's methods as one generic handler (requests and responses from ``service_pb2``)."""
        import grpc
        from tritonclient.grpc import service_pb2

        handlers: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        rpc_handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                self.observed(method, handler),
                request_deserializer=getattr(service_pb2, f"{method}Request").FromString,
                response_serializer=getattr(service_pb2, f"{method}Response").SerializeToString,
            )
            for method, handler in handlers.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, rpc_handlers)


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as grpc wants it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(
    state: ServerState, *, access_log: bool = True, spans: Spans | None = None, reuse_port: bool = False
) -> grpc.aio.Server:
    """Start the gRPC service on ``serving.host:serving.grpc_port`` (the caller stops it).

    Args:
        state: The server's state.
        access_log: Log one line per call.
        spans: OpenTelemetry spans (None: off).
        reuse_port: Share the port with the other worker processes (``SO_REUSEPORT``: the kernel spreads
            connections among them); off, a port another process holds is an error.

    Raises:
        ServeError: The grpc extra is missing, or the port is busy.

    """
    serving = state.serving
    if serving.grpc_port is None:
        raise ServeError("serving.grpc_port is not set")
    try:
        import grpc
        from tritonclient.grpc import service_pb2  # noqa: F401  # the messages: fail here, not per call
    except ImportError:
        raise ServeError(MISSING_EXTRA, hint="Or leave serving.grpc_port empty") from None
    options = [
        ("grpc.max_receive_message_length", serving.grpc_max_message_bytes),
        ("grpc.max_metadata_size", serving.max_header_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=serving.max_connections)
    service = GrpcInferenceService(state, access_log=access_log, spans=spans)
    server.add_generic_rpc_handlers((service.generic_handler(),))
    address = grpc_address(serving.host, serving.grpc_port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    else:
        reason = "address in use or not available"
    if not bound:
        raise ServeError(
            f"Cannot listen for gRPC on {address}: {reason}",
            hint="Pick another serving.grpc_port or stop the other server",
        )
    await server.start()
    logger.info("serving grpc", extra={"address": address, "service": SERVICE, "methods": list(METHODS)})
    return server
