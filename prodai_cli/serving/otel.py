"""OpenTelemetry spans of the model server: optional (``monitoring.otlp_endpoint`` and the ``otel`` extra).

Off (the default) nothing imports this module's OpenTelemetry parts: no span, no exporter, no import cost.

On, every request gets a server span whose ids are those of the request's W3C trace context
(:mod:`~prodai_cli.serving.tracing`): the caller's trace id, the caller's span as its parent, and the span id
that the response's ``traceparent`` names, so a gateway's trace continues into prodai and the span a client
is told about is the one exported. Its children, in the order the pipeline runs them:

- ``prodai.guard``: API key and rate limits (``prodai.principal``);
- ``prodai.cache``: the response cache around everything below (``prodai.cache`` = HIT, MISS or BYPASS);
- ``prodai.resilience``: breaker, fallback and retries with A/B (``prodai.fallback``: the version that answered
  instead); a fallback's own computation is a second ``prodai.model`` under it;
- ``prodai.model``: one computation on a version's micro-batcher (``prodai.model_version``), with
  ``prodai.queue`` (waiting for a round) and ``prodai.forward`` (the round's forward passes;
  ``prodai.batch_size``: the texts computed in that round, this request's and its neighbours').

A caller's ``traceparent`` flags are honoured (not sampled: nothing recorded). Spans leave through a
BatchSpanProcessor, off the request path, as OTLP over HTTP to ``{otlp_endpoint}/v1/traces``; the standard
``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_*`` variables tune it; the queue is flushed at shutdown.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ConfigError
from prodai_cli.serving.batcher import batch_timing

if TYPE_CHECKING:
    from prodai_cli.config import MonitoringConfig
    from prodai_cli.serving.pipeline import (
        Guard,
        Infer,
        Inference,
        InferWrapper,
        PredictPipeline,
        RequestContext,
        Route,
    )
    from prodai_cli.serving.tracing import TraceContext

MISSING_EXTRA = "monitoring.otlp_endpoint needs the otel extra: pip install 'prodai[otel]'"
# The ids the next request span takes (trace id, span id): set only around starting it.
_request_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("prodai_otel_ids", default=None)


def _epoch_ns(monotonic: float) -> int:
    """A ``time.monotonic()`` reading as nanoseconds since the epoch (span timestamps)."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


class RequestSpan:
    """A request's server span while it is handled; :meth:`end` records the outcome."""

    def __init__(self, span: Any, token: object) -> None:
        self.span = span
        self._token = token

    def end(self, status: int, ctx: RequestContext) -> None:
        """Name it by route, record status, version, variant and request id, and end it."""
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        span.update_name(f"{ctx.method} {ctx.route}")
        span.set_attribute("http.route", ctx.route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("prodai.request_id", ctx.request_id)
        if ctx.model_version:
            span.set_attribute("prodai.model_version", ctx.model_version)
            span.set_attribute("prodai.variant", ctx.variant)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        context.detach(self._token)  # type: ignore[arg-type]
        span.end()


class Spans:
    """The server's tracer: request spans and the pipeline's step spans.

    Args:
        service_name: ``service.name`` of the spans.
        exporter: Where spans go (an OTLP exporter; tests may pass another SpanExporter).

    """

    def __init__(self, service_name: str, exporter: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        class RequestIds(RandomIdGenerator):
            """The request span takes the ids of the request's trace context; every other span random ones."""

            def generate_span_id(self) -> int:
                ids = _request_ids.get()
                return ids[1] if ids is not None else super().generate_span_id()

            def generate_trace_id(self) -> int:
                ids = _request_ids.get()
                return ids[0] if ids is not None else super().generate_trace_id()

        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), id_generator=RequestIds()
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("prodai_cli.serving")

    @classmethod
    def from_config(cls, monitoring: MonitoringConfig) -> Spans | None:
        """Spans exported to ``monitoring.otlp_endpoint``; None (nothing imported) when it is empty.

        Raises:
            ConfigError: An endpoint is set but the otel extra is not installed.

        """
        if not monitoring.otlp_endpoint:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(MISSING_EXTRA, hint="Or leave monitoring.otlp_endpoint empty") from None
        exporter = OTLPSpanExporter(endpoint=monitoring.otlp_endpoint.rstrip("/") + "/v1/traces")
        return cls(monitoring.otel_service_name, exporter)

    def begin(self, trace: TraceContext, method: str, path: str) -> RequestSpan:
        """Start a request's server span (current until :meth:`RequestSpan.end`), as ``trace`` names it."""
        from opentelemetry import context
        from opentelemetry import trace as api
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        parent = None
        trace_id = int(trace.trace_id, 16)
        if trace.parent_id is not None:
            remote = SpanContext(
                trace_id=trace_id,
                span_id=int(trace.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(trace.flags, 16)),
            )
            parent = api.set_span_in_context(NonRecordingSpan(remote))
        ids = _request_ids.set((trace_id, int(trace.span_id, 16)))
        try:
            span = self.tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER)
        finally:
            _request_ids.reset(ids)
        return RequestSpan(span, context.attach(api.set_span_in_context(span)))

    @contextmanager
    def step(self, name: str) -> Iterator[Any]:
        """A child span of the current one (an exception marks it failed and is recorded)."""
        with self.tracer.start_as_current_span(name) as span:
            yield span

    def instrument(self, pipeline: PredictPipeline) -> None:
        """Wrap the pipeline's guards, cache, resilience and model step in spans."""
        pipeline.guards = [self._guard(guard) for guard in pipeline.guards]
        if pipeline.cache is not None:
            pipeline.cache = self._wrapper(pipeline.cache, "prodai.cache")
        if pipeline.resilience is not None:
            pipeline.resilience = self._wrapper(pipeline.resilience, "prodai.resilience")
        pipeline.run_model = self._model(pipeline.run_model)  # type: ignore[method-assign,assignment]

    def _guard(self, guard: Guard) -> Guard:
        async def traced(ctx: RequestContext) -> None:
            with self.step("prodai.guard") as span:
                await guard(ctx)
                if ctx.principal:
                    span.set_attribute("prodai.principal", ctx.principal)

        return traced

    def _wrapper(self, wrapper: InferWrapper, name: str) -> InferWrapper:
        async def traced(ctx: RequestContext, route: Route, texts: list[str], infer: Infer) -> Inference:
            with self.step(name) as span:
                span.set_attribute("prodai.texts", len(texts))
                inference = await wrapper(ctx, route, texts, infer)
                if name == "prodai.cache":
                    span.set_attribute("prodai.cache", ctx.response_headers.get("X-Cache", ""))
                elif inference.fallback:
                    span.set_attribute("prodai.fallback", inference.fallback)
                return inference

        return traced

    def _model(self, run_model: Infer) -> Infer:
        async def traced(ctx: RequestContext, route: Route, texts: list[str]) -> Inference:
            timing: dict[str, float] = {}
            token = batch_timing.set(timing)
            with self.step("prodai.model") as span:
                span.set_attribute("prodai.model_version", route.model.version)
                span.set_attribute("prodai.texts", len(texts))
                try:
                    inference = await run_model(ctx, route, texts)
                finally:
                    batch_timing.reset(token)
                done = time.monotonic()
                if timing:
                    queue = self.tracer.start_span("prodai.queue", start_time=_epoch_ns(timing["enqueued"]))
                    queue.end(end_time=_epoch_ns(timing["started"]))
                    forward = self.tracer.start_span("prodai.forward", start_time=_epoch_ns(timing["started"]))
                    forward.set_attribute("prodai.batch_size", int(timing["texts"]))
                    forward.end(end_time=_epoch_ns(done))
                return inference

        return traced

    def shutdown(self) -> None:
        """Export what is queued and stop (blocks up to the exporter's timeout)."""
        self.provider.shutdown()
