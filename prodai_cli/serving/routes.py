"""The server's endpoints: predictions, health probes and metrics.

Handlers stay thin: predictions go through :class:`~prodai_cli.serving.pipeline.PredictPipeline`, probes
read :class:`~prodai_cli.serving.state.ServerState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# FastAPI reads handler annotations at runtime: Request must be importable by name here.
from starlette.requests import Request
from starlette.responses import Response

from prodai_cli.serving.errors import ServingError
from prodai_cli.serving.middleware import context_of
from prodai_cli.serving.schemas import (
    ERROR_RESPONSES,
    BatchPredictResponse,
    HealthResponse,
    Prediction,
    ProbeResponse,
    RequestModels,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import Receive, Scope, Send

    from prodai_cli.serving.pipeline import Kind, PredictPipeline
    from prodai_cli.serving.state import ServerState

PREDICT_ROUTES = ("/predict", "/predict/batch")
HEALTH_ROUTES = ("/health", "/health/live", "/health/ready")
METRICS_ROUTE = "/metrics"
DOC_ROUTES = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def register_routes(app: FastAPI, state: ServerState) -> None:
    """Add every endpoint to ``app``."""
    from starlette.responses import JSONResponse

    pipeline = state.pipeline
    models = pipeline.models

    def ctx_of(request: Request) -> Any:
        ctx = context_of(request.state)
        if ctx is None:  # only when the app runs without its middleware (never in create_app)
            raise RuntimeError("request context missing: ObservabilityMiddleware is not installed")
        return ctx

    @app.post(
        "/predict",
        summary="Classify or embed one text",
        response_model=None,
        responses={200: {"model": Prediction, "description": "The prediction"}, **ERROR_RESPONSES},
        openapi_extra=RequestModels.openapi_body(models.predict),
        tags=["predict"],
    )
    async def predict(request: Request) -> Response:
        """``{"text": "..."}`` -> ``{"label", "confidence", "model_version", "variant"}`` (or ``embedding``)."""
        return await pipeline.handle(request, ctx_of(request), "single")

    @app.post(
        "/predict/batch",
        summary="Classify or embed several texts",
        response_model=None,
        responses={
            200: {"model": BatchPredictResponse, "description": "Predictions in input order"},
            **ERROR_RESPONSES,
        },
        openapi_extra=RequestModels.openapi_body(models.batch),
        tags=["predict"],
    )
    async def predict_batch(request: Request) -> Response:
        """``{"texts": [...]}`` -> ``{"predictions": [...]}`` in input order."""
        return await pipeline.handle(request, ctx_of(request), "batch")

    @app.get("/health", response_model=HealthResponse, tags=["health"], summary="Server and model status")
    async def health() -> dict[str, Any]:
        """Overall status and the state of every configured model version."""
        return state.health()

    @app.get(
        "/health/live",
        response_model=ProbeResponse,
        response_model_exclude_none=True,
        tags=["health"],
        summary="Liveness probe",
    )
    async def live() -> dict[str, Any]:
        """200 while the process serves HTTP (model loading included)."""
        return {"status": "alive"}

    @app.get(
        "/health/ready",
        response_model=ProbeResponse,
        tags=["health"],
        summary="Readiness probe",
        responses={503: {"model": ProbeResponse, "description": "Loading, failed or draining"}},
    )
    async def ready() -> Response:
        """200 once every configured version is loaded and warmed; 503 before that and while draining."""
        reason = state.not_ready_reason()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503, headers={"Retry-After": "1"})

    if state.monitoring.metrics:
        from prodai_cli.serving.metrics import CONTENT_TYPE

        @app.get(
            METRICS_ROUTE,
            tags=["monitoring"],
            summary="Prometheus metrics",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
        )
        async def metrics() -> Response:
            """Prometheus text format (summed over workers when several run)."""
            return Response(state.metrics.render(), media_type=CONTENT_TYPE)


class PredictEndpoint:
    """``POST /predict`` and ``POST /predict/batch`` as a plain ASGI app: the pipeline, nothing else.

    The server answers these two routes here, under :class:`~prodai_cli.serving.middleware.ObservabilityMiddleware`
    but outside FastAPI's own layers (telemetry, error and exception middleware, exit stack, router,
    dependency solving): measured on a 1-layer model those cost ~0.3 ms a request, more than the whole
    pipeline, and the pipeline needs none of them (it reads the body itself and turns every refusal into a
    :class:`~prodai_cli.serving.errors.ServingError`). The same routes stay registered on the FastAPI app
    for the OpenAPI document and for any other method (which gets FastAPI's 405).
    """

    def __init__(self, pipeline: PredictPipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one request whose path is one of PREDICT_ROUTES."""
        ctx = context_of(scope)
        if ctx is None:
            raise RuntimeError("request context missing: ObservabilityMiddleware is not installed")
        kind: Kind = "single" if scope["path"] == PREDICT_ROUTES[0] else "batch"
        response: Response
        try:
            response = await self.pipeline.handle(Request(scope, receive), ctx, kind)
        except ServingError as exc:
            response = error_response(exc, ctx.request_id)
        await response(scope, receive, send)


def error_response(exc: ServingError, request_id: str | None) -> Response:
    """A refusal as the JSON response every route gives: ``{"detail", "code", "request_id"}`` + headers."""
    from starlette.responses import JSONResponse

    return JSONResponse(exc.body(request_id), status_code=exc.status_code, headers=exc.headers)
