"""The prediction request path, as explicit steps with named seams for the parts that plug in.

``PredictPipeline.handle`` runs, in order::

    read body (413, counted as it streams)       read_body
    guards: [auth] -> [rate limit]               PredictPipeline.guards            (401/403/429; a Redis
                                                  limit decision is deferred: settle() before any answer)
    validate (415, 422)                          PredictPipeline.parse
    input hooks: [normalisation]                 PredictPipeline.input_hooks
    route: pick the version + variant            PredictPipeline.router            (503 while loading)
    [cache] around everything below              PredictPipeline.cache
      [breaker/fallback/retry/cascade] around    PredictPipeline.resilience
        the micro-batcher                        PredictPipeline.run_model          (503 full, 504, model errors)
      output filters: [redaction]                PredictPipeline.output_filters    (before the cache stores)
    shadow: [copy to the shadow version]         PredictPipeline.shadow            (started, never awaited)
    render                                       PredictPipeline.render
    after hooks (every request, refusals too)    PredictPipeline.after             (metrics bookkeeping)

Request id, structured logging, the in-flight gauge, response headers and request metrics wrap the whole
path in :mod:`prodai_cli.serving.middleware`. Every seam is a plain attribute holding a callable (or a list
of them): the server is assembled in :func:`prodai_cli.serving.app.create_app`, and later parts (A/B, cache,
rate limits, auth, filters) are wired there without touching this file. A step refuses a request by raising
a :class:`~prodai_cli.serving.errors.ServingError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from prodai_cli.serving.errors import (
    BodyTooLarge,
    InferenceFailed,
    InvalidRequest,
    ModelError,
    ServiceUnavailable,
    ServingError,
    UnsupportedMediaType,
)
from prodai_cli.untrusted import DEFAULT_MAX_DEPTH, DEFAULT_MAX_NUMBER_DIGITS, UntrustedInputError, decode, loads

if TYPE_CHECKING:
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import Response

    from prodai_cli.serving.pool import ModelPool, ServedModel
    from prodai_cli.serving.schemas import RequestModels

logger = logging.getLogger("prodai.serving.request")

Kind = Literal["single", "batch"]
DEFAULT_VARIANT = "default"
# What an adapter's render step returns: a Starlette Response over HTTP, a protobuf message over gRPC.
Answer = TypeVar("Answer")
Answer_co = TypeVar("Answer_co", covariant=True)


@dataclass
class RequestContext:
    """What the steps of one request know and tell each other.

    Attributes:
        request_id: From a well-formed ``X-Request-ID`` header, else generated; echoed in the response.
        method: HTTP method.
        path: Request path (no query string).
        route: The metric label: the route's path for known routes, ``other`` for the rest.
        client_ip: The TCP peer (a rate-limit step may refine it from trusted proxy headers).
        headers: The request headers (read-only).
        principal: Who the auth step authenticated (API key *name*, never the key).
        model_version: The version that answered (set by routing, corrected by fallback/cache).
        variant: The A/B variant that answered (``default`` without A/B).
        response_headers: Headers any step wants on the response, refusals included (``RateLimit-*``,
            ``X-Cache``, ``X-Fallback``...).
        log_fields: Extra fields for this request's access-log line (never bodies or secrets).
        params: Request parameters that change the answer (``{"scores": True}`` for per-label scores): the
            cache keys on them, and outputs keep ``scores`` only when asked for.
        options: What a protocol adapter's parse step tells its render step (``top_k``, requested outputs);
            not part of the cache key.
        deferred: Decisions a guard started but did not wait for (a rate limit asked of Redis), so their round
            trip overlaps parsing and the cache lookup; :func:`settle` waits for them (and raises their
            refusal) before the model runs and before any answer, a cached one included.

    """

    request_id: str
    method: str
    path: str
    route: str
    client_ip: str | None
    headers: Headers
    principal: str | None = None
    model_version: str = ""
    variant: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)
    log_fields: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    deferred: list[asyncio.Future[None]] = field(default_factory=list)


async def settle(ctx: RequestContext) -> None:
    """Wait for the request's deferred guard decisions; raise the first refusal (a ServingError).

    Safe to call any number of times, concurrently too (the texts of a batch each call it before they may
    compute): every caller waits for the same decisions and sees the same refusal.
    """
    if not ctx.deferred:
        return
    outcomes = await asyncio.gather(*ctx.deferred, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _forget(ctx: RequestContext) -> None:
    """Decisions nobody will wait for (the request was cancelled): let them finish without a warning."""
    for future in ctx.deferred:
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
    ctx.deferred = []


@dataclass(frozen=True)
class Route:
    """Where the router sends a request: a loaded version and the variant name it serves as.

    Attributes:
        model: The loaded version.
        variant: The variant name it serves as (the ``variant`` label).
        assignment: Set by the A/B router: the router snapshot and the variant the request was assigned
            (an :class:`~prodai_cli.serving.ab.router.Assignment`; the resilience step reads it to find
            fallbacks and cascade targets); None without A/B. Typed ``object`` because the pipeline only
            carries it: the steps that read it narrow it, and the pipeline stays below the wings.

    """

    model: ServedModel
    variant: str = DEFAULT_VARIANT
    assignment: object | None = None


@dataclass(frozen=True)
class Inference:
    """Outputs for a request's texts (input order) and who computed them.

    An output may carry its own ``model_version`` and ``variant`` (a cascade escalated that text to another
    version); the rest are stamped with the request's.

    Attributes:
        outputs: One dict per text.
        model_version: The version that answered the request.
        variant: The variant that answered the request.
        fallback: Set when a fallback answered instead of the assigned variant (the ``X-Fallback`` value).

    """

    outputs: list[dict[str, Any]]
    model_version: str
    variant: str
    fallback: str | None = None

    def with_outputs(self, outputs: list[dict[str, Any]]) -> Inference:
        """A copy with other outputs (output filters)."""
        return replace(self, outputs=outputs)


class Router(Protocol):
    """Picks the version (and variant) that serves a request. Raise ServiceUnavailable when none can."""

    def route(self, ctx: RequestContext) -> Route:
        """The route for this request."""
        ...


Guard = Callable[[RequestContext], Awaitable[None]]
"""Runs before the body is parsed (auth, rate limit); raises a ServingError to refuse."""
InputHook = Callable[[RequestContext, list[str]], list[str]]
"""Rewrites validated input texts (normalisation); may raise InvalidRequest."""
Infer = Callable[[RequestContext, Route, list[str]], Awaitable[Inference]]
"""Computes an Inference for texts on a route."""
InferWrapper = Callable[[RequestContext, Route, list[str], Infer], Awaitable[Inference]]
"""Wraps an Infer: a cache (calls the inner one on a miss) or breaker/fallback (calls it on another route)."""
OutputFilter = Callable[[RequestContext, Inference], Inference]
"""Rewrites outputs before they are cached and returned (redaction)."""
ShadowHook = Callable[[RequestContext, Route, list[str], Inference, float], None]
"""Sees an answered request (texts, the Inference, its model seconds); may start a copy; must not raise or wait."""
AfterHook = Callable[[RequestContext], None]
"""Runs when a request leaves the pipeline, answered or refused (metrics bookkeeping); must not raise."""


class Adapter(Protocol[Answer_co]):
    """A protocol's edge of the pipeline (see :mod:`prodai_cli.serving.protocols`): its body in, its answer out.

    ``parse`` replaces the seed shapes' validation (415/422 as ServingErrors, ``ctx.params``/``ctx.options``
    for what changes the answer); ``route`` may pick a version itself (an explicit version in the URL) or
    return None to leave it to the router; ``render`` turns the Inference into the protocol's response (an
    HTTP response, or a gRPC message).
    """

    def parse(self, ctx: RequestContext, body: bytes) -> list[str]:
        """The input texts of a request body."""
        ...

    def route(self, ctx: RequestContext, router: Router) -> Route:
        """The route for this request (usually ``router.route(ctx)``)."""
        ...

    def render(self, ctx: RequestContext, inference: Inference) -> Answer_co:
        """The protocol's response."""
        ...


class SingleModelRouter:
    """The router without A/B: every request goes to one configured model, variant ``default``."""

    def __init__(self, pool: ModelPool, key: str, variant: str = DEFAULT_VARIANT) -> None:
        self.pool = pool
        self.key = key
        self.variant = variant

    def route(self, ctx: RequestContext) -> Route:
        """The configured model, or 503 while it is loading (or failed to load)."""
        model = self.pool.get(self.key)
        if model is None or not model.ready:
            reason = "failed to load" if model is not None and model.status == "failed" else "is loading"
            raise ServiceUnavailable(f"The model {reason}; retry shortly", retry_after_s=2, code="not_ready")
        return Route(model=model, variant=self.variant)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it with 413 as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading anything; bodies without one
    (chunked) or lying about it are counted as they stream in, so nothing over the limit is ever buffered.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_content_type(headers: Headers) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``*/*+json``), in UTF-8."""
    raw = headers.get("content-type")
    if not raw:
        raise UnsupportedMediaType("Missing Content-Type; send application/json")
    media_type, _, params = raw.partition(";")
    media_type = media_type.strip().lower()
    structured_json = media_type.startswith("application/") and media_type.endswith("+json")
    if media_type != "application/json" and not structured_json:
        raise UnsupportedMediaType(f"Content-Type {media_type[:100]!r} is not supported; send application/json")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("Only UTF-8 JSON bodies are supported")


def parse_body(
    body: bytes,
    model: type[BaseModel],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_number_digits: int = DEFAULT_MAX_NUMBER_DIGITS,
) -> BaseModel:
    """Decode and validate a JSON body; every failure is a 422 with the reason (never a 500).

    The body goes through :func:`prodai_cli.untrusted.loads`, the same parser as ``prodai batch``'s lines:
    invalid UTF-8 or JSON, nesting past ``max_depth``, an integer past ``max_number_digits`` and lone
    surrogates are each a 422 naming the problem.
    """
    try:
        data = loads(decode(body), max_depth=max_depth, max_number_digits=max_number_digits)
    except UntrustedInputError as exc:
        raise InvalidRequest(f"Body is {exc}" if str(exc).startswith("not ") else f"Body refused: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in err["loc"]) or "body", "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        raise InvalidRequest(f"Invalid request: {summary}", errors=errors) from None


class PredictPipeline:
    """The ``/predict`` and ``/predict/batch`` request path; see the module docstring for the steps.

    Args:
        models: The request models (limits from the config).
        router: Picks the version per request.
        max_body_bytes: 413 above this.
        request_timeout_s: 504 past this (queue wait + inference).
        log_bodies: Log request texts (off by default: they may hold personal data).

    """

    def __init__(
        self,
        models: RequestModels,
        router: Router,
        *,
        max_body_bytes: int,
        request_timeout_s: float,
        log_bodies: bool = False,
    ) -> None:
        self.models = models
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.log_bodies = log_bodies
        # Seams (see the module docstring); empty means the step is off.
        self.guards: list[Guard] = []
        self.input_hooks: list[InputHook] = []
        self.cache: InferWrapper | None = None
        self.resilience: InferWrapper | None = None
        self.output_filters: list[OutputFilter] = []
        self.shadow: ShadowHook | None = None
        self.after: list[AfterHook] = []
        self._seed: dict[Kind, Adapter[Response]] = {
            "single": SeedAdapter(self, "single"),
            "batch": SeedAdapter(self, "batch"),
        }

    async def handle(self, request: Request, ctx: RequestContext, kind: Kind) -> Response:
        """Run the whole path for one request and return its response (refusals raise ServingError)."""
        return await self.serve(request, ctx, self._seed[kind])

    async def serve(self, request: Request | None, ctx: RequestContext, adapter: Adapter[Answer]) -> Answer:
        """The whole path for a request in any protocol: ``adapter`` parses, may route, and renders.

        Every protocol (the seed shapes, OIP v2, OpenAI; over HTTP or gRPC) runs the same guards, hooks, cache,
        resilience, filters and after hooks; only the shapes at the two ends differ.

        Args:
            request: The HTTP request whose body is read (413 past ``max_body_bytes``); None when the transport
                has read and bounded the message already (gRPC: the adapter holds it).
            ctx: The request's context.
            adapter: The protocol's two ends.

        """
        try:
            try:
                body = await read_body(request, self.max_body_bytes) if request is not None else b""
                for guard in self.guards:
                    await guard(ctx)
                texts = adapter.parse(ctx, body)
                for hook in self.input_hooks:
                    texts = hook(ctx, texts)
                route = adapter.route(ctx, self.router)
                ctx.model_version, ctx.variant = route.model.version, route.variant
                started = time.perf_counter()
                try:
                    inference = await self.infer(ctx, route, texts)
                except ModelError as exc:
                    raise InferenceFailed(f"The model failed on this request ({exc.error_type})") from None
                await settle(ctx)
            except ServingError:
                # A deferred guard's refusal comes first, as if it had been decided before anything else.
                await settle(ctx)
                raise
            ctx.model_version, ctx.variant = inference.model_version, inference.variant
            if inference.fallback:
                ctx.response_headers["X-Fallback"] = inference.fallback
            if self.shadow is not None:
                self.shadow(ctx, route, texts, inference, time.perf_counter() - started)
            return adapter.render(ctx, inference)
        finally:
            _forget(ctx)
            for after in self.after:
                after(ctx)

    def parse(self, ctx: RequestContext, body: bytes, kind: Kind) -> list[str]:
        """415/422 checks and validation; returns the input texts."""
        check_content_type(ctx.headers)
        models = self.models
        limits = {"max_depth": models.max_json_depth, "max_number_digits": models.max_json_number_digits}
        parsed: Any = parse_body(body, models.predict if kind == "single" else models.batch, **limits)
        texts = [parsed.text] if kind == "single" else list(parsed.texts)
        if parsed.top_k is not None:
            ctx.params["scores"] = True
            ctx.options["top_k"] = parsed.top_k
        ctx.log_fields["texts"] = len(texts)
        if self.log_bodies:
            ctx.log_fields["body"] = texts
        return texts

    async def infer(self, ctx: RequestContext, route: Route, texts: list[str]) -> Inference:
        """Cache (optional) around resilience (optional) around the batcher, then the output filters."""

        async def filtered(ctx: RequestContext, route: Route, texts: list[str]) -> Inference:
            await settle(ctx)  # a refused request never reaches the model
            if self.resilience is not None:
                inference = await self.resilience(ctx, route, texts, self.run_model)
            else:
                inference = await self.run_model(ctx, route, texts)
            if not ctx.params.get("scores"):
                # Per-label scores only where asked for: other answers (and their cache entries) stay as small
                # as they always were.
                inference = inference.with_outputs([_without_scores(o) for o in inference.outputs])
            for output_filter in self.output_filters:
                inference = output_filter(ctx, inference)
            return inference

        if self.cache is not None:
            return await self.cache(ctx, route, texts, filtered)
        return await filtered(ctx, route, texts)

    async def run_model(self, ctx: RequestContext, route: Route, texts: list[str]) -> Inference:
        """Queue the texts on the route's micro-batcher and wait (QueueFull 503, timeout 504, ModelError)."""
        batcher = route.model.batcher
        if batcher is None or not route.model.ready:
            raise ServiceUnavailable("The model is not loaded", retry_after_s=2, code="not_ready")
        outputs = await batcher.submit(texts, timeout=self.request_timeout_s)
        return Inference(outputs=outputs, model_version=route.model.version, variant=route.variant)

    @staticmethod
    def render(inference: Inference, kind: Kind, top_k: int | None = None, labels: list[str] | None = None) -> Response:
        """The JSON response: one prediction, or ``{"predictions": [...]}``.

        With ``top_k``, each classification carries ``scores``: the ``top_k`` most likely ``{label, score}``
        (all of them when ``top_k`` is at least the number of labels), most likely first.
        """
        from starlette.responses import Response

        stamp = {"model_version": inference.model_version, "variant": inference.variant}
        outputs = inference.outputs
        if top_k is not None:
            outputs = [_top_k(output, top_k, labels or []) for output in outputs]
        # An output's own stamp (a cascade escalated it) wins over the request's.
        predictions = [{**output, **stamp} if "model_version" not in output else output for output in outputs]
        payload: dict[str, Any] = predictions[0] if kind == "single" else {"predictions": predictions}
        # X-Model-Version is added by the middleware from ctx.model_version (refusals after routing carry it too).
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def _without_scores(output: dict[str, Any]) -> dict[str, Any]:
    if "scores" not in output:
        return output
    return {key: value for key, value in output.items() if key != "scores"}


def _top_k(output: dict[str, Any], top_k: int, labels: list[str]) -> dict[str, Any]:
    """``output`` with its raw per-index ``scores`` turned into the ``top_k`` best ``[{label, score}]``."""
    raw = output.get("scores")
    if not isinstance(raw, list):
        return output  # an embedding: nothing to rank
    ranked = sorted(range(len(raw)), key=lambda i: -float(raw[i]))[:top_k]
    named = [{"label": labels[i] if i < len(labels) else f"LABEL_{i}", "score": float(raw[i])} for i in ranked]
    return {**output, "scores": named}


class SeedAdapter:
    """The seed tutorial's shapes (``/predict``, ``/predict/batch``) as an :class:`Adapter`."""

    def __init__(self, pipeline: PredictPipeline, kind: Kind) -> None:
        self.pipeline = pipeline
        self.kind: Kind = kind

    def parse(self, ctx: RequestContext, body: bytes) -> list[str]:
        """:meth:`PredictPipeline.parse`."""
        return self.pipeline.parse(ctx, body, self.kind)

    def route(self, ctx: RequestContext, router: Router) -> Route:
        """The router's choice."""
        route = router.route(ctx)
        if "top_k" in ctx.options:
            ctx.options["route"] = route  # render names the scores by this version's labels
        return route

    def render(self, ctx: RequestContext, inference: Inference) -> Response:
        """:meth:`PredictPipeline.render`, with per-label scores when ``top_k`` was asked for."""
        top_k = ctx.options.get("top_k")
        labels: list[str] | None = None
        if top_k is not None:
            route = ctx.options.get("route")
            runtime = route.model.runtime if isinstance(route, Route) else None
            labels = list(runtime.labels) if runtime is not None else None
        return self.pipeline.render(inference, self.kind, top_k, labels)
