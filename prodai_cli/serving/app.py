"""The FastAPI app factory of the model server.

``create_app(settings, model=...)`` assembles the server: metrics, the model pool, the request pipeline
(with its seams, see :mod:`prodai_cli.serving.pipeline`), the routes and the lifespan that loads models in
the background and drains on shutdown. ``factory()`` is the same for uvicorn workers, which cannot be
handed an object: it reads the config from ``$PRODAI_CONFIG`` (and the pinned model from
``$PRODAI_SERVE_MODEL``): ``uvicorn --factory prodai_cli.serving.app:factory``.

Lifecycle:

- start-up: the socket opens at once; models load and warm in a thread meanwhile. ``/health/live`` is 200,
  ``/health/ready`` and predictions are 503 (with Retry-After) until every configured version is ready.
- A/B: without ``model`` and with ``ab.enabled`` the server routes by the ``ab:`` section (every version it
  names is loaded and warmed before the server is ready) and follows edits of prodai.yaml live (see
  :mod:`prodai_cli.serving.ab.reload`); with ``model`` it serves that one model.
- Protection: API keys, rate limits, the response cache and output redaction sit in the request path as
  the config says (see :mod:`prodai_cli.serving.protection.steps`).
- SIGTERM: ``/health/ready`` turns 503 at once and predictions are still served for
  ``serving.drain_delay_s`` (load balancers stop sending traffic); then uvicorn closes the socket and
  in-flight requests get ``serving.grace_period_s`` to finish; then batchers stop and the process exits.
  Ctrl-C (SIGINT) skips the delay; a second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

# FastAPI reads handler annotations at runtime: Request and the response classes must be importable by name here.
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prodai_cli.errors import ConfigError
from prodai_cli.serving.state import ServerState

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

    from prodai_cli.config import ABConfig, ProdaiConfig, RegistryConfig, ServingConfig, Settings
    from prodai_cli.serving.ab.routing import ABRouting, Resilience
    from prodai_cli.serving.ab.shadow import Shadowing

logger = logging.getLogger("prodai.serving")

ENV_SERVE_MODEL = "PRODAI_SERVE_MODEL"
# host:port the workers were bound to (for the start-up warnings), set by the multi-worker runner.
ENV_SERVE_BIND = "PRODAI_SERVE_BIND"
ADMIN_RELOAD_ROUTE = "/admin/reload"
# uvicorn's exit status for a worker that failed before serving: its supervisor stops instead of restarting.
STARTUP_FAILURE = 3


def served_model_ref(serving: ServingConfig, registry: RegistryConfig, model: str | None = None) -> str:
    """The reference the server loads: ``model``, else ``serving.model``, else ``registry.default_model``.

    Args:
        serving: The ``serving`` section.
        registry: The ``registry`` section.
        model: The reference given on the command line, if any.

    Raises:
        ConfigError: None of them is set.

    """
    ref = model or serving.model or registry.default_model
    if not ref:
        raise ConfigError(
            "No model to serve: pass --model, or set serving.model or registry.default_model in prodai.yaml",
            hint="Example: prodai serve --model sentiment@production",
        )
    return ref


def create_app(settings: Settings, *, model: str | None = None, bind: tuple[str, int] | None = None) -> FastAPI:
    """Build the model server app: the one place that hands each component its own config section.

    Args:
        settings: Loaded settings (each part gets its section; the pool and A/B get registry access, the
            key store and the reloader the config file).
        model: Model reference or directory to serve. Pin it (``NAME/VERSION``) so every worker loads the
            same version. None: the ``ab:`` split when ``ab.enabled``, else ``serving.model``, then
            ``registry.default_model``.
        bind: The address the server listens on (for the start-up warnings; default: ``serving``'s).

    Returns:
        The FastAPI app; models start loading when its lifespan starts.

    Raises:
        ConfigError: No model configured, unreadable API keys, a Redis backend without ``redis_url``.
        ModelNotFoundError: An A/B variant names an alias the registry does not know.

    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from prodai_cli import __version__
    from prodai_cli.serving import routes
    from prodai_cli.serving.ab.reload import ABReload, ConfigReloader, install_sighup, resolve_router
    from prodai_cli.serving.errors import InvalidRequest, ServingError
    from prodai_cli.serving.faults import FaultInjectingPool, fault_plan_from_env
    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.middleware import ObservabilityMiddleware, context_of
    from prodai_cli.serving.pipeline import PredictPipeline, Router, SingleModelRouter
    from prodai_cli.serving.pool import ModelPool
    from prodai_cli.serving.protection.auth import KeyStore
    from prodai_cli.serving.protection.steps import Protection
    from prodai_cli.serving.schemas import ErrorResponse, RequestModels

    config = settings.config
    serving = config.serving
    ab_mode = model is None and config.ab.enabled
    metrics = ServerMetrics()
    faults = fault_plan_from_env()
    pool = (
        ModelPool(settings, serving, metrics)
        if faults is None
        else FaultInjectingPool(settings, serving, metrics, faults)
    )
    # API keys are read from the config file (or the keys file it names) and re-read when either changes.
    key_store = (
        KeyStore.from_files(config.auth, config_path=settings.path, root=settings.root) if config.auth.enabled else None
    )
    protection = Protection(
        config.auth,
        config.rate_limit,
        config.cache,
        config.filters,
        keys=key_store,
        redis_url=config.redis_url,
        max_text_chars=serving.max_text_chars,
        metrics=metrics,
    )
    routing: ABRouting | None = None
    resilience: Resilience | None = None
    shadowing: Shadowing | None = None
    router: Router
    if ab_mode:
        from prodai_cli.serving.ab.breaker import Breakers
        from prodai_cli.serving.ab.routing import ABMetrics, ABRouting, Resilience

        routing = ABRouting(pool, resolve_router(settings, config))
        resilience = Resilience(pool, Breakers(config.ab.breaker), ABMetrics(metrics))
        from prodai_cli.serving.ab.shadow import Shadowing, ShadowMetrics

        shadowing = Shadowing(routing, pool, ShadowMetrics(metrics), timeout_s=serving.request_timeout_s)
        model_keys = routing.pool_keys()
        router = routing
    else:
        key = served_model_ref(serving, config.registry, model)
        model_keys = [key]
        router = SingleModelRouter(pool, key)
    for key in model_keys:
        pool.add(key)
    pipeline = PredictPipeline(
        RequestModels(
            serving.max_text_chars,
            serving.max_batch_items,
            max_json_depth=serving.max_json_depth,
            max_json_number_digits=serving.max_json_number_digits,
        ),
        router,
        max_body_bytes=serving.max_body_bytes,
        request_timeout_s=serving.request_timeout_s,
        log_bodies=serving.log_bodies,
    )
    # The seams of prodai_cli/serving/pipeline.py, in request order.
    pipeline.guards.append(protection.guard)
    pipeline.input_hooks.append(protection.normalize)
    pipeline.cache = protection.cached
    pipeline.resilience = resilience
    pipeline.shadow = shadowing
    if protection.output_filter.active:
        pipeline.output_filters.append(protection.redact)
    if metrics.multiprocess:
        # Another worker may answer the scrape: keep this worker's files current after every request.
        pipeline.after.append(protection.sync_metrics)
    metrics.before_render.append(protection.sync_metrics)
    from prodai_cli.serving.otel import Spans  # imports no OpenTelemetry unless monitoring.otlp_endpoint is set

    spans = Spans.from_config(config.monitoring)
    if spans is not None:
        spans.instrument(pipeline)
    state = ServerState(serving, config.monitoring, metrics, pool, pipeline, model_keys)
    state.protection, state.routing, state.resilience = protection, routing, resilience
    if bind is not None:
        state.bind = bind
    ab_reload: ABReload | None = None
    if routing is not None and resilience is not None:
        resilience.refresh_gauges()
        metrics.before_render.append(resilience.refresh_gauges)

        def set_model_keys(keys: list[str]) -> None:
            state.model_keys = keys

        resolve = functools.partial(resolve_router, settings)
        ab_reload = ABReload(resolve, routing, pool, resilience.breakers, set_model_keys)
    apply = ab_reload if ab_reload is not None else _pinned_apply(model, config.ab)
    reloader = ConfigReloader(settings.path, config, metrics, apply)
    state.reloader = reloader

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        grpc_server = None
        if serving.grpc_port is not None:  # OIP v2 over gRPC: this loop, this pool, this pipeline
            from prodai_cli.serving.protocols.oip_grpc import start_grpc_server

            workers = bool(os.environ.get(ENV_SERVE_BIND))  # set by the multi-worker runner: share the port
            grpc_server = await start_grpc_server(
                state, access_log=config.monitoring.access_log, spans=spans, reuse_port=workers
            )
        restore = _install_drain_handlers(state)
        restore_hup = install_sighup(reloader)
        protection.log_startup(*state.bind)
        if faults is not None:
            logger.warning("FAULT INJECTION IS ON: versions in the faults file fail", extra={"path": str(faults.path)})
        loader = asyncio.create_task(state.load_models(), name="prodai-load-models")
        watcher = asyncio.create_task(reloader.run(), name="prodai-config-watcher")
        jobs_api.start()
        try:
            yield
        finally:
            state.begin_drain()
            jobs_api.close()
            if grpc_server is not None:  # after HTTP's drain: in-flight calls get the grace period too
                await grpc_server.stop(grace=serving.grace_period_s)
            for task in (loader, watcher):
                if not task.done():
                    task.cancel()
            if ab_reload is not None:
                ab_reload.cancel()
            if shadowing is not None:
                await shadowing.aclose()
            await pool.close(timeout=max(1.0, serving.grace_period_s))
            await protection.aclose()
            if spans is not None:
                await asyncio.to_thread(spans.shutdown)  # export what is queued
            restore_hup()
            restore()

    app = server_app_class()(
        title="prodai model server",
        version=__version__,
        description="Predictions from a registered transformers model, micro-batched.",
        lifespan=lifespan,
        # FastAPI's docs pages load their assets from CDNs (blank offline): serving/docs.py serves its own.
        docs_url=None,
        redoc_url=None,
    )
    app.state.prodai = state
    from prodai_cli.serving.docs import register_docs

    register_docs(app)

    def request_id(request: Request) -> str | None:
        ctx = context_of(request.state)
        return ctx.request_id if ctx is not None else None

    async def serving_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return routes.error_response(exc, request_id(request))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"detail": str(exc.detail), "code": code, "request_id": request_id(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return await serving_error(request, InvalidRequest("Invalid request", errors=errors))

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    routes.register_routes(app, state)
    from prodai_cli.serving.protocols import register_protocols  # OIP v2, OpenAI: adapters onto the pipeline

    register_protocols(app, state)
    from prodai_cli.serving.jobs_routes import JOBS_ROUTES, register_jobs  # /batch_predict, /v1/jobs

    jobs_api = register_jobs(app, settings, state)

    @app.post(
        ADMIN_RELOAD_ROUTE,
        tags=["admin"],
        summary="Reload prodai.yaml now",
        response_model=None,
        responses={
            200: {"description": "Reloaded: the new config is live"},
            401: {"model": ErrorResponse, "description": "Missing or bad API key"},
            403: {"model": ErrorResponse, "description": "The key lacks the admin scope"},
            409: {"description": "Refused (invalid file, a version that does not load): the last good config stays"},
            429: {"model": ErrorResponse, "description": "Rate limited"},
        },
    )
    async def admin_reload(request: Request) -> JSONResponse:
        """Re-read and apply prodai.yaml (as SIGHUP does); needs a key with the ``admin`` scope."""
        ctx = context_of(request.state)
        assert ctx is not None  # the middleware always sets it
        await protection.authorize(ctx, "admin")
        outcome = await reloader.reload(reason="admin request")
        body = {"status": "reloaded" if outcome.ok else "refused", **outcome.to_dict()}
        return JSONResponse(body, status_code=200 if outcome.ok else 409)

    known = frozenset(
        routes.PREDICT_ROUTES
        + routes.HEALTH_ROUTES
        + (routes.METRICS_ROUTE, ADMIN_RELOAD_ROUTE)
        + routes.DOC_ROUTES
        + JOBS_ROUTES
    )
    access_log = config.monitoring.access_log
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, known_routes=known, access_log=access_log, spans=spans)
    app.fast_lane = ObservabilityMiddleware(  # type: ignore[attr-defined]  # ServerApp's
        routes.PredictEndpoint(pipeline), metrics=metrics, known_routes=known, access_log=access_log, spans=spans
    )
    return app


@functools.cache
def server_app_class() -> type[FastAPI]:
    """The server's FastAPI subclass (built on first use: FastAPI is imported lazily).

    It answers ``POST`` on the prediction routes through ``fast_lane`` (see
    :class:`~prodai_cli.serving.routes.PredictEndpoint`) and everything else (docs, health, metrics, admin,
    other methods, a ``root_path`` deployment) through FastAPI as usual.
    """
    from fastapi import FastAPI

    from prodai_cli.serving.routes import PREDICT_ROUTES

    fast_paths = frozenset(PREDICT_ROUTES)

    class ServerApp(FastAPI):
        fast_lane: ASGIApp | None = None

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if (
                self.fast_lane is not None
                and scope["type"] == "http"
                and scope["method"] == "POST"
                and scope["path"] in fast_paths
                and not scope.get("root_path")
            ):
                scope["app"] = self
                await self.fast_lane(scope, receive, send)
                return
            await super().__call__(scope, receive, send)

    return ServerApp


def factory() -> FastAPI:
    """The app for uvicorn workers: config from ``$PRODAI_CONFIG``, model from ``$PRODAI_SERVE_MODEL``.

    A model that fails to load makes the worker exit with status 3, which stops uvicorn's supervisor
    instead of restarting the worker forever.
    """
    from prodai_cli.config import load_settings
    from prodai_cli.serving import http
    from prodai_cli.serving.logging import configure_logging

    settings = load_settings()
    monitoring = settings.config.monitoring
    configure_logging(monitoring.log_format, monitoring.log_level)
    http.configure(settings.config.serving)  # this worker's connection limits (uvicorn builds the protocol)
    host, _, port = os.environ.get(ENV_SERVE_BIND, "").rpartition(":")
    bind = (host, int(port)) if host and port.isdigit() else None
    app = create_app(settings, model=os.environ.get(ENV_SERVE_MODEL) or None, bind=bind)
    app.state.prodai.on_fatal = _exit_worker
    return app


def _pinned_apply(model: str | None, ab: ABConfig) -> Callable[[ProdaiConfig], Awaitable[list[str]]]:
    """The reload step of a server without A/B: nothing to switch; say so when ``ab:`` changed."""
    last: list[ABConfig] = [ab]

    async def apply(config: ProdaiConfig) -> list[str]:
        if config.ab != last[0]:
            why = f"it serves --model {model}" if model else "A/B was off when it started"
            logger.warning(f"ab: changed, but this server does not route A/B ({why}); restart it to apply")
        last[:] = [config.ab]
        return []

    return apply


def _exit_worker(reason: str) -> None:
    logging.shutdown()
    os._exit(STARTUP_FAILURE)


def _install_drain_handlers(state: ServerState) -> Callable[[], None]:
    """Wrap uvicorn's SIGTERM/SIGINT handlers so readiness flips first and SIGTERM waits drain_delay_s.

    Only in the main thread (where uvicorn installs its handlers); returns a function restoring them.
    """
    if threading.current_thread() is not threading.main_thread() or state.loop is None:
        return lambda: None
    loop = state.loop
    previous: dict[int, Any] = {}

    def make_handler(sig: int, forward: Callable[[int, FrameType | None], Any]) -> Callable[..., None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            first = not state.draining
            state.begin_drain()
            delay = state.serving.drain_delay_s if (first and signum == signal.SIGTERM) else 0.0
            if delay > 0:
                loop.call_soon_threadsafe(loop.call_later, delay, forward, signum, None)
            else:
                forward(signum, frame)

        return handler

    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if callable(current):
            previous[sig] = current
            signal.signal(sig, make_handler(sig, current))

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
