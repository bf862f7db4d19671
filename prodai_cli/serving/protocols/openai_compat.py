"""OpenAI-compatible ``GET /v1/models`` and ``POST /v1/embeddings``, as an adapter onto the prediction pipeline.

What an OpenAI client (``openai.OpenAI(base_url="http://host:port/v1", api_key=KEY)``) needs for embeddings:

- ``Authorization: Bearer <key>`` is accepted as the API key (the configured ``auth.header`` still works).
- ``input``: a string or a list of 1 to ``serving.max_batch_items`` strings of at most ``serving.max_text_chars``
  characters (token-id inputs are refused); ``encoding_format``: ``float`` (default) or ``base64`` (little-endian
  float32, what the ``openai`` package asks for when the caller does not say); ``dimensions``: only the model's
  own (this server does not truncate embeddings of models not trained for it); ``user`` is accepted and also
  used as the A/B user id when no user id header came.
- ``usage.prompt_tokens`` is counted by the model's tokenizer (special tokens included, after truncation).
- Refusals are OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}`` with the pipeline's
  status (400 for what the seed routes answer 422).

Both routes run the same pipeline as ``/predict``: key, rate limits, cache, A/B, breaker/fallback, filters and
metrics (``route`` label ``/v1/embeddings``).
"""

from __future__ import annotations

import base64
import json
from enum import Enum
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prodai_cli.serving.errors import InvalidRequest, NotFound, ServiceUnavailable, ServingError
from prodai_cli.serving.middleware import context_of
from prodai_cli.serving.pipeline import Inference, RequestContext, Route, Router, check_content_type
from prodai_cli.untrusted import VISIBLE_CHARACTER, UntrustedInputError, decode, is_blank, loads

if TYPE_CHECKING:
    from fastapi import FastAPI

    from prodai_cli.serving.pool import ServedModel
    from prodai_cli.serving.state import ServerState

EMBEDDINGS_ROUTE = "/v1/embeddings"
MODELS_ROUTE = "/v1/models"
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(InvalidRequest):
    """400: a request the OpenAI shapes do not allow (``param`` names the field)."""

    status_code = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, code="invalid_value")
        self.param = param


def openai_error(exc: ServingError) -> Response:
    """A refusal as OpenAI's error object, with the pipeline's status and headers."""
    status = 400 if exc.status_code == 422 else exc.status_code
    error = {
        "message": exc.message,
        "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": getattr(exc, "param", None),
        "code": exc.code,
    }
    return JSONResponse({"error": error}, status_code=status, headers=exc.headers)


def bearer_as_key(ctx: RequestContext, auth_header: str) -> None:
    """Let ``Authorization: Bearer <key>`` stand for the API key header.

    The auth guard reads the configured header; a request that did not send it gets it from the bearer token,
    so the same guard (and the same failed-auth accounting) decides.
    """
    authorization = ctx.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if ctx.headers.get(auth_header) is None and scheme.lower() == "bearer" and token.strip():
        raw = [*ctx.headers.raw, (auth_header.lower().encode("latin-1"), token.strip().encode("latin-1", "replace"))]
        ctx.headers = Headers(raw=raw)


class EmbeddingsAdapter:
    """``POST /v1/embeddings`` as a pipeline adapter."""

    def __init__(self, api: OpenAICompat) -> None:
        self.api = api
        self.model_name = ""
        self.base64 = False
        self.texts: list[str] = []
        self.served: ServedModel | None = None

    def parse(self, ctx: RequestContext, body: bytes) -> list[str]:
        """Validate the body; returns the input texts."""
        check_content_type(ctx.headers)
        limits = self.api.limits
        try:
            document = loads(
                decode(body), max_depth=limits.max_json_depth, max_number_digits=limits.max_json_number_digits
            )
        except UntrustedInputError as exc:
            raise OpenAIError(f"Body is {exc}" if str(exc).startswith("not ") else f"Body refused: {exc}") from None
        if not isinstance(document, dict):
            raise OpenAIError("The body must be a JSON object")
        unknown = set(document) - {"model", "input", "encoding_format", "dimensions", "user"}
        if unknown:
            raise OpenAIError(f"Unknown fields: {sorted(unknown)[:5]}", sorted(unknown)[0])
        model = document.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError("model is required (GET /v1/models lists them)", "model")
        self.model_name = model
        self.api.embedding_model(model)
        raw = document.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        limit = limits.max_batch_items
        if not isinstance(texts, list) or not 1 <= len(texts) <= limit:
            raise OpenAIError(f"input must be a string or a list of 1 to {limit} strings", "input")
        max_chars = limits.max_text_chars
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise OpenAIError(f"input[{index}] is not a string (token ids are not accepted)", "input")
            if len(text) > max_chars:
                raise OpenAIError(f"input[{index}] is longer than {max_chars} characters", "input")
            if is_blank(text):
                raise OpenAIError(f"input[{index}] is empty or only whitespace/control characters", "input")
        encoding = document.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise OpenAIError("encoding_format must be float or base64", "encoding_format")
        self.base64 = encoding == "base64"
        dimensions = document.get("dimensions")
        if dimensions is not None:
            dim = self.api.dimension(model)
            if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions != dim:
                raise OpenAIError(f"This model only returns {dim} dimensions", "dimensions")
        user = document.get("user")
        if user is not None and not isinstance(user, str):
            raise OpenAIError("user must be a string", "user")
        user_header = self.api.user_header()
        if user and user_header and ctx.headers.get(user_header) is None:
            ctx.headers = Headers(raw=[*ctx.headers.raw, (user_header.lower().encode(), user[:256].encode())])
        ctx.log_fields["texts"] = len(texts)
        if self.api.log_bodies:
            ctx.log_fields["body"] = texts
        self.texts = texts
        return texts

    def route(self, ctx: RequestContext, router: Router) -> Route:
        """The router's choice (A/B included); it must serve the named model."""
        route = router.route(ctx)
        if route.model.name != self.model_name:
            raise NotFound(f"Model {self.model_name[:128]!r} is not served here")
        self.served = route.model
        return route

    def render(self, ctx: RequestContext, inference: Inference) -> Response:
        """OpenAI's embedding list, with ``usage`` from the model's tokenizer."""
        import numpy as np

        served = self.served
        data: list[dict[str, Any]] = []
        for index, output in enumerate(inference.outputs):
            vector = output["embedding"]
            value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode() if self.base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        runtime = served.runtime if served is not None else None
        tokens = sum(runtime.token_lengths(self.texts)) if runtime is not None else 0
        document = {
            "object": "list",
            "data": data,
            "model": self.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(json.dumps(document, separators=(",", ":")), media_type="application/json")


class OpenAICompat:
    """The OpenAI-compatible routes of one server.

    Args:
        state: The server's state (pool, pipeline, protection).

    """

    def __init__(self, state: ServerState) -> None:
        serving = state.serving
        self.state = state
        self.log_bodies = serving.log_bodies
        # The same body limits as /predict: the serving section itself, not a copy of its values.
        self.limits = serving

    def user_header(self) -> str | None:
        """The A/B user id header (None without A/B)."""
        routing = self.state.routing
        return routing.current.user_header if routing is not None else None

    def served_models(self) -> list[ServedModel]:
        """Ready embedding versions, one per name (the first loaded)."""
        seen: dict[str, ServedModel] = {}
        for model in self.state.pool.entries():
            if model.ready and model.task == "embedding":
                seen.setdefault(model.name, model)
        return list(seen.values())

    def embedding_model(self, name: str) -> ServedModel:
        """The ready embedding model ``name``: 503 while loading, 404 unknown, 400 for a classifier."""
        for model in self.state.pool.entries():
            if model.ready and model.name == name:
                if model.task != "embedding":
                    raise OpenAIError(f"Model {name[:128]!r} is a classifier, not an embedding model", "model")
                return model
        if not self.state.ready:
            raise ServiceUnavailable("The model is loading; retry shortly", retry_after_s=2, code="not_ready")
        raise NotFound(f"Model {name[:128]!r} is not served here", code="model_not_found")

    def dimension(self, name: str) -> int:
        """The embedding size of model ``name``."""
        runtime = self.embedding_model(name).runtime
        return int(runtime.model.config.hidden_size) if runtime is not None else 0

    def register(self, app: FastAPI) -> None:
        """Add the routes to ``app``."""
        state = self.state
        pipeline = state.pipeline
        protection = state.protection
        auth_header = protection.auth_header if protection is not None else "X-API-Key"
        tags: list[str | Enum] = ["openai compatible"]

        def ctx_of(request: Request, route: str) -> RequestContext:
            ctx = context_of(request.state)
            if ctx is None:
                raise RuntimeError("request context missing: ObservabilityMiddleware is not installed")
            ctx.route = route
            bearer_as_key(ctx, auth_header)
            return ctx

        @app.get(MODELS_ROUTE, tags=tags, summary="Embedding models served", response_model=None)
        async def list_models(request: Request) -> Response:
            """The embedding models this server serves (needs a key, as OpenAI's does)."""
            ctx = ctx_of(request, MODELS_ROUTE)
            try:
                if protection is not None:
                    await protection.authorize(ctx, "predict")
            except ServingError as exc:
                return openai_error(exc)
            created = int(state.started)
            data = [
                {"id": m.name, "object": "model", "created": created, "owned_by": "prodai"}
                for m in self.served_models()
            ]
            return JSONResponse({"object": "list", "data": data})

        schema = embeddings_schema(self.limits.max_batch_items, self.limits.max_text_chars)
        body = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

        @app.post(
            EMBEDDINGS_ROUTE,
            tags=tags,
            summary="Embed texts (OpenAI-compatible)",
            response_model=None,
            openapi_extra=body,
            responses={
                400: {"description": "Malformed request (OpenAI error object)"},
                401: {"description": "Missing or bad API key"},
                404: {"description": "Model not served"},
                413: {"description": "Body too large"},
                429: {"description": "Rate limited"},
                503: {"description": "Loading or queue full"},
                504: {"description": "Timed out"},
            },
        )
        async def embeddings(request: Request) -> Response:
            """``{"model", "input"}`` -> ``{"data": [{"embedding"}], "usage"}``."""
            ctx = ctx_of(request, EMBEDDINGS_ROUTE)
            try:
                return await pipeline.serve(request, ctx, EmbeddingsAdapter(self))
            except ServingError as exc:
                return openai_error(exc)


def embeddings_schema(max_batch_items: int, max_text_chars: int) -> dict[str, Any]:
    """The embeddings request, for the OpenAPI document (the limits the server enforces)."""
    text = {"type": "string", "minLength": 1, "maxLength": max_text_chars, "pattern": VISIBLE_CHARACTER}
    return {
        "title": "EmbeddingsRequest",
        "type": "object",
        "required": ["model", "input"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 128},
            "input": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": max_batch_items}]},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "user": {"type": "string", "maxLength": 256},
        },
    }
