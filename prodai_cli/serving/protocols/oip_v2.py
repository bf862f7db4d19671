"""Open Inference Protocol v2 (KServe/Triton "V2") over HTTP/REST, as an adapter onto the prediction pipeline.

Routes (the `KServe v2 REST spec <https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/>`_):

- ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``: no key needed, like ``/health``.
- ``GET /v2/models/{name}[/versions/{version}]`` (model metadata) and ``.../ready``: no key needed either
  (``/health`` shows the same names and versions).
- ``POST /v2/models/{name}[/versions/{version}]/infer``: the same pipeline as ``/predict`` (API key, rate
  limits, cache, A/B routing and stickiness, breaker/fallback, filters, metrics under the route template).

One input, a ``BYTES`` tensor of texts, shape ``[n]`` or ``[n, 1]`` with ``1 <= n <= serving.max_batch_items``,
each text at most ``serving.max_text_chars`` characters. Its data comes as JSON ``data`` or through the binary
tensor extension (``Inference-Header-Content-Length``: the JSON header, then raw tensors; a BYTES element is a
4-byte little-endian length and its UTF-8 bytes); the whole body stays under ``serving.max_body_bytes``.
Outputs: ``label`` (BYTES ``[n]``), ``confidence`` (FP32 ``[n]``), ``scores`` (FP32 ``[n, labels]``) for a
classifier, ``embedding`` (FP32 ``[n, dim]``) for an embedder; ``outputs`` picks some of them, and each is
returned as JSON or binary (``parameters.binary_data``, or the request's ``binary_data_output``). Refusals
are ``{"error": "..."}`` with the pipeline's status (400 for a malformed request, 401/403, 404 for a model
or version not served, 413, 429, 503, 504).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prodai_cli.serving.errors import NotFound, ServiceUnavailable, ServingError
from prodai_cli.serving.middleware import context_of
from prodai_cli.serving.pipeline import Inference, RequestContext, Route, Router
from prodai_cli.untrusted import VISIBLE_CHARACTER, UntrustedInputError, decode, is_blank, loads

if TYPE_CHECKING:
    from fastapi import FastAPI

    from prodai_cli.serving.pool import ServedModel
    from prodai_cli.serving.state import ServerState

INPUT_NAME = "text"
HEADER_LENGTH = "inference-header-content-length"
CLASSIFIER_OUTPUTS = ("label", "confidence", "scores")
EMBEDDER_OUTPUTS = ("embedding",)
MAX_ID_CHARS = 256
EXTENSIONS = ["binary_tensor_data"]


class OipError(ServingError):
    """400: a request the protocol cannot read (wrong datatype, shape, data or output names)."""

    status_code = 400
    code = "bad_request"


def oip_error(exc: ServingError) -> Response:
    """A refusal in the protocol's form: ``{"error": "..."}``, the pipeline's status and headers."""
    # The protocol answers malformed requests with 400 where the seed routes say 422.
    status = 400 if exc.status_code == 422 else exc.status_code
    return JSONResponse({"error": exc.message}, status_code=status, headers=exc.headers)


# --------------------------------------------------------------------------------------------- tensors


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """Split a binary BYTES tensor (4-byte little-endian length, then the bytes) into ``count`` elements."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:
            raise OipError(f"Input {INPUT_NAME!r} has more binary data than its shape holds")
        if offset + 4 > len(raw):
            raise OipError(f"Input {INPUT_NAME!r} has a truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise OipError(f"Input {INPUT_NAME!r} has a BYTES element longer than its binary data")
        elements.append(raw[offset : offset + size])
        offset += size
    if len(elements) != count:
        raise OipError(f"Input {INPUT_NAME!r} has {len(elements)} elements; its shape says {count}")
    return elements


def serialize_bytes(values: list[str]) -> bytes:
    """A BYTES tensor in the binary extension's layout."""
    parts: list[bytes] = []
    for value in values:
        data = value.encode("utf-8", "surrogatepass")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def serialize_fp32(rows: list[Any]) -> bytes:
    """A row-major FP32 tensor, little-endian (a flat list or a list of rows)."""
    import numpy as np

    return np.asarray(rows, dtype="<f4").tobytes()


def _flatten(data: Any) -> list[Any]:
    """Row-major elements of JSON tensor data given flat or nested (``[["a"], ["b"]]``)."""
    if not isinstance(data, list):
        raise OipError(f"Input {INPUT_NAME!r} data must be a list")
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OipError(f"{what} must be a JSON object")
    return value


@dataclass(frozen=True)
class OutputTensor:
    """One output of an inference response, before a transport encodes it.

    Attributes:
        name: ``label``, ``confidence``, ``scores`` or ``embedding``.
        datatype: ``BYTES`` or ``FP32``.
        shape: The tensor's shape.
        values: One value (or one row) per text.
        binary: Whether the caller asked for it as binary data (HTTP; gRPC always sends raw contents).

    """

    name: str
    datatype: str
    shape: list[int]
    values: list[Any]
    binary: bool

    def serialize(self) -> bytes:
        """The tensor's raw bytes: length-prefixed BYTES elements, or little-endian FP32."""
        return serialize_bytes(self.values) if self.datatype == "BYTES" else serialize_fp32(self.values)


# --------------------------------------------------------------------------------------------- adapter


class InferAdapter:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` as a pipeline adapter.

    Args:
        oip: The protocol's server side (pool, limits).
        name: The model name from the URL.
        version: The version from the URL, or None for the one the router picks.

    """

    def __init__(self, oip: OipV2, name: str, version: str | None) -> None:
        self.oip = oip
        self.name = name
        self.version = version
        self._shape_2d = False
        self._binary_default = False

    def parse(self, ctx: RequestContext, body: bytes) -> list[str]:
        """Split off binary data, validate the request and return its texts (400 with a reason otherwise)."""
        self.oip.known_model(self.name)  # after the guards: an unauthenticated caller learns nothing
        header_length = ctx.headers.get(HEADER_LENGTH)
        binary = b""
        if header_length is not None:
            if not header_length.strip().isdigit() or int(header_length) > len(body):
                raise OipError("Inference-Header-Content-Length must be a number no larger than the body")
            split = int(header_length)
            body, binary = body[:split], body[split:]
        else:
            media_type = ctx.headers.get("content-type", "application/json").partition(";")[0].strip().lower()
            if media_type not in ("application/json", ""):
                raise OipError(f"Content-Type {media_type[:100]!r} needs Inference-Header-Content-Length")
        limits = self.oip.limits
        try:
            document = loads(
                decode(body), max_depth=limits.max_json_depth, max_number_digits=limits.max_json_number_digits
            )
        except UntrustedInputError as exc:
            raise OipError(
                f"Request header is {exc}" if str(exc).startswith("not ") else f"Request refused: {exc}"
            ) from None
        return self.parse_request(ctx, document, binary)

    def parse_request(self, ctx: RequestContext, document: Any, binary: bytes) -> list[str]:
        """Validate a decoded request (its JSON form, whatever the transport) and return its texts.

        The caller has checked :meth:`OipV2.known_model` (after the guards).

        Args:
            ctx: The request.
            document: The request's JSON form: ``id``, ``parameters``, ``inputs``, ``outputs``.
            binary: The raw tensor data after the header (binary extension, or gRPC's raw contents).

        """
        request = _obj(document, "The request")
        unknown = set(request) - {"id", "parameters", "inputs", "outputs"}
        if unknown:
            raise OipError(f"Unknown request fields: {sorted(unknown)[:5]}")
        request_id = request.get("id")
        if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS):
            raise OipError(f"id must be a string of at most {MAX_ID_CHARS} characters")
        parameters = _obj(request.get("parameters", {}), "parameters")
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise OipError(f"Send exactly one input: the BYTES tensor {INPUT_NAME!r} of texts")
        texts = self._texts(_obj(inputs[0], "An input"), binary)
        outputs = self._outputs(request.get("outputs"), parameters.get("binary_data_output") is True)
        ctx.options["oip"] = {"id": request_id, "outputs": outputs}
        names = [name for name, _ in outputs] if outputs is not None else self.oip.output_names(self.name)
        if "scores" in names:
            ctx.params["scores"] = True  # per-label scores travel only where asked for (and are cached apart)
        ctx.log_fields["texts"] = len(texts)
        if self.oip.log_bodies:
            ctx.log_fields["body"] = texts
        return texts

    def _texts(self, tensor: dict[str, Any], binary: bytes) -> list[str]:
        if tensor.get("datatype") != "BYTES":
            raise OipError(f"Input {INPUT_NAME!r} must have datatype BYTES, not {str(tensor.get('datatype'))[:20]!r}")
        shape: Any = tensor.get("shape")
        valid_shape = (
            isinstance(shape, list)
            and len(shape) in (1, 2)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and (len(shape) == 1 or shape[1] == 1)
        )
        if not valid_shape:
            raise OipError(f"Input {INPUT_NAME!r} must have shape [n] or [n, 1]")
        count = int(shape[0])
        limit = self.oip.limits.max_batch_items
        if not 1 <= count <= limit:
            raise OipError(f"Input {INPUT_NAME!r} must hold 1 to {limit} texts, not {count}")
        params = _obj(tensor.get("parameters", {}), "Input parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
                raise OipError("binary_data_size must equal the binary data that follows the header")
            if "data" in tensor:
                raise OipError(f"Input {INPUT_NAME!r} has both data and binary_data_size")
            raw_elements = _bytes_elements(binary, count)
            try:
                elements: list[Any] = [element.decode("utf-8") for element in raw_elements]
            except UnicodeDecodeError:
                raise OipError(f"Input {INPUT_NAME!r} holds bytes that are not UTF-8 text") from None
        else:
            if binary:
                raise OipError("Binary data follows the header but no input declares binary_data_size")
            elements = _flatten(tensor.get("data"))
            if len(elements) != count:
                raise OipError(f"Input {INPUT_NAME!r} has {len(elements)} elements; its shape says {count}")
        max_chars = self.oip.limits.max_text_chars
        for index, text in enumerate(elements):
            if not isinstance(text, str):
                raise OipError(f"Element {index} of {INPUT_NAME!r} is not a string")
            if len(text) > max_chars:
                raise OipError(f"Element {index} of {INPUT_NAME!r} is longer than {max_chars} characters")
            if is_blank(text):
                raise OipError(f"Element {index} of {INPUT_NAME!r} is empty or only whitespace/control characters")
        self._shape_2d = len(shape) == 2
        return elements

    def _outputs(self, requested: Any, binary_default: bool) -> list[tuple[str, bool]] | None:
        """The requested outputs as ``(name, binary)``; None: every output (binary per ``binary_default``)."""
        self._binary_default = binary_default
        if requested is None:
            return None
        if not isinstance(requested, list) or not requested:
            raise OipError("outputs must be a non-empty list")
        available = self.oip.output_names(self.name)
        chosen: list[tuple[str, bool]] = []
        for item in requested:
            output = _obj(item, "An output")
            name = output.get("name")
            if name not in available:
                raise OipError(f"Unknown output {str(name)[:64]!r}; this model has {list(available)}")
            params = _obj(output.get("parameters", {}), "Output parameters")
            binary = params.get("binary_data", binary_default)
            chosen.append((str(name), binary is True))
        if len({name for name, _ in chosen}) != len(chosen):
            raise OipError("An output is requested twice")
        return chosen

    def route(self, ctx: RequestContext, router: Router) -> Route:
        """The router's choice, or the version in the URL (404 when this server does not serve it)."""
        route = router.route(ctx) if self.version is None else self.oip.route_version(ctx, router, self.version)
        if route.model.name != self.name:
            raise NotFound(f"Model {self.name[:128]!r} is not served here")
        ctx.options["oip_model"] = route.model
        return route

    def output_tensors(self, ctx: RequestContext, inference: Inference) -> list[OutputTensor]:
        """The requested outputs of an inference, in request order (the transports encode them)."""
        model: ServedModel = ctx.options["oip_model"]
        requested: list[tuple[str, bool]] | None = ctx.options["oip"]["outputs"]
        if requested is None:
            requested = [(name, self._binary_default) for name in self.oip.output_names(self.name)]
        outputs = inference.outputs
        count = len(outputs)
        tensors: list[OutputTensor] = []
        labels_count = len(model.runtime.labels) if model.runtime is not None else 0
        for name, binary in requested:
            if name == "label":
                values: list[Any] = [str(o["label"]) for o in outputs]
                datatype, shape = "BYTES", [count]
            elif name == "confidence":
                values = [float(o["confidence"]) for o in outputs]
                datatype, shape = "FP32", [count]
            elif name == "scores":
                values = [[float(s) for s in o.get("scores", [])] for o in outputs]
                datatype, shape = "FP32", [count, len(values[0]) if values else labels_count]
            else:
                values = [o["embedding"] for o in outputs]
                datatype, shape = "FP32", [count, len(values[0]) if values else 0]
            if self._shape_2d and len(shape) == 1:
                shape = [count, 1]  # answer in the shape the texts came in
            tensors.append(OutputTensor(name, datatype, shape, values, binary))
        return tensors

    def render(self, ctx: RequestContext, inference: Inference) -> Response:
        """The protocol's response: JSON, or the JSON header and binary tensors."""
        options = ctx.options["oip"]
        tensors: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for output in self.output_tensors(ctx, inference):
            tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
            if output.binary:
                blob = output.serialize()
                tensor["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                values, name = output.values, output.name
                tensor["data"] = values if len(output.shape) == 1 or name in ("label", "confidence") else _rows(values)
            tensors.append(tensor)
        document: dict[str, Any] = {"model_name": self.name, "model_version": inference.model_version}
        if options["id"] is not None:
            document["id"] = options["id"]
        document["outputs"] = tensors
        header = json.dumps(document, separators=(",", ":")).encode()
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(
            header + b"".join(blobs),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )


def _rows(values: list[Any]) -> list[Any]:
    # JSON tensor data is row-major and flat (nested lists are allowed on input, flat is what clients expect).
    return [value for row in values for value in row]


# --------------------------------------------------------------------------------------------- routes


class OipV2:
    """The protocol's server side: model lookups, metadata, and the routes.

    Args:
        state: The server's state (pool, pipeline, routing).

    """

    def __init__(self, state: ServerState) -> None:
        serving = state.serving
        self.state = state
        self.log_bodies = serving.log_bodies
        # The same body limits as /predict: the serving section itself, not a copy of its values.
        self.limits = serving

    def ready_models(self, name: str | None = None) -> list[ServedModel]:
        """The ready versions (of ``name``), in load order."""
        return [m for m in self.state.pool.entries() if m.ready and (name is None or m.name == name)]

    def known_model(self, name: str) -> list[ServedModel]:
        """The ready versions of ``name``; 503 while loading, 404 when no such model is served."""
        models = self.ready_models(name)
        if models:
            return models
        if not self.state.ready:
            raise ServiceUnavailable("The model is loading; retry shortly", retry_after_s=2, code="not_ready")
        raise NotFound(f"Model {name[:128]!r} is not served here")

    def output_names(self, name: str) -> tuple[str, ...]:
        """The outputs of model ``name``."""
        models = self.ready_models(name)
        task = models[0].task if models else None
        return EMBEDDER_OUTPUTS if task == "embedding" else CLASSIFIER_OUTPUTS

    def route_version(self, ctx: RequestContext, router: Router, version: str) -> Route:
        """The route to an explicit version: its A/B variant when it is one, else the one served (or 404)."""
        from prodai_cli.serving.ab.router import Assignment
        from prodai_cli.serving.pool import model_key

        routing = self.state.routing
        if routing is not None:
            ab = routing.current
            for variant in ab.variants:
                if str(variant.version) == version:
                    model = self.state.pool.get(model_key(ab.model, variant.version))
                    if model is None or not model.ready:
                        raise ServiceUnavailable("The version is loading; retry shortly", code="not_ready")
                    return Route(model=model, variant=variant.name, assignment=Assignment(ab, variant))
            raise NotFound(f"Version {version[:32]!r} is not served here")
        route = router.route(ctx)
        if route.model.version != version:
            raise NotFound(f"Version {version[:32]!r} is not served here")
        return route

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """Model metadata: versions, platform, inputs and outputs with datatypes and shapes."""
        models = self.known_model(name)
        if version is not None and version not in {m.version for m in models}:
            raise NotFound(f"Version {version[:32]!r} of {name[:128]!r} is not served here")
        model = models[0]
        runtime = model.runtime
        outputs: list[dict[str, Any]]
        if model.task == "embedding":
            dim = int(runtime.model.config.hidden_size) if runtime is not None else -1
            outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}]
        else:
            labels = len(runtime.labels) if runtime is not None else -1
            outputs = [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, labels]},
            ]
        document: dict[str, Any] = {
            "name": name,
            "versions": [m.version for m in models] if version is None else [version],
            "platform": f"prodai_{model.task or 'unknown'}",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
        }
        if runtime is not None and model.task != "embedding":
            document["parameters"] = {"labels": list(runtime.labels)}
        return document

    def register(self, app: FastAPI) -> None:
        """Add the protocol's routes to ``app``."""
        from prodai_cli import __version__

        state = self.state
        pipeline = state.pipeline

        def ctx_of(request: Request, route: str) -> RequestContext:
            ctx = context_of(request.state)
            if ctx is None:
                raise RuntimeError("request context missing: ObservabilityMiddleware is not installed")
            ctx.route = route  # the metric label: the template, whatever the model name
            return ctx

        async def infer(request: Request, name: str, version: str | None, route: str) -> Response:
            ctx = ctx_of(request, route)
            try:
                return await pipeline.serve(request, ctx, InferAdapter(self, name, version))
            except ServingError as exc:
                return oip_error(exc)

        tags: list[str | Enum] = ["open inference protocol v2"]

        @app.get("/v2", tags=tags, summary="Server metadata")
        async def server_metadata(request: Request) -> dict[str, Any]:
            """Name, version and the protocol extensions this server supports."""
            ctx_of(request, "/v2")
            return {"name": "prodai", "version": __version__, "extensions": EXTENSIONS}

        @app.get("/v2/health/live", tags=tags, summary="Server live")
        async def server_live(request: Request) -> dict[str, Any]:
            """200 while the process serves HTTP."""
            ctx_of(request, "/v2/health/live")
            return {"live": True}

        @app.get("/v2/health/ready", tags=tags, summary="Server ready", responses={503: {"description": "Not ready"}})
        async def server_ready(request: Request) -> Response:
            """200 once every configured version is ready (as ``/health/ready``)."""
            ctx_of(request, "/v2/health/ready")
            ready = state.ready
            return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

        async def model_ready(request: Request, name: str, version: str | None, route: str) -> Response:
            ctx_of(request, route)
            models = self.ready_models(name)
            ok = bool(models) and (version is None or version in {m.version for m in models})
            if not ok and state.ready:
                return oip_error(NotFound(f"Model {name[:128]!r} (version {version}) is not served here"))
            return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

        async def model_metadata(request: Request, name: str, version: str | None, route: str) -> Response:
            ctx_of(request, route)
            try:
                return JSONResponse(self.metadata(name, version))
            except ServingError as exc:
                return oip_error(exc)

        errors: dict[int | str, dict[str, Any]] = {
            400: {"description": "Malformed request ({error})"},
            404: {"description": "Model or version not served ({error})"},
            503: {"description": "Loading ({error})"},
        }
        schema = infer_schema(self.limits.max_batch_items, self.limits.max_text_chars)
        body = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
        infer_errors: dict[int | str, dict[str, Any]] = {
            **errors,
            401: {"description": "Missing or bad API key ({error})"},
            413: {"description": "Body too large ({error})"},
            429: {"description": "Rate limited ({error})"},
            504: {"description": "Timed out ({error})"},
        }
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            versioned = "{version}" in prefix

            def bind(handler: Any, route: str, versioned: bool = versioned) -> Any:
                if versioned:

                    async def with_version(request: Request, name: str, version: str) -> Response:
                        response: Response = await handler(request, name, version, route)
                        return response

                    return with_version

                async def without_version(request: Request, name: str) -> Response:
                    response: Response = await handler(request, name, None, route)
                    return response

                return without_version

            app.add_api_route(
                prefix,
                bind(model_metadata, prefix),
                methods=["GET"],
                tags=tags,
                summary="Model metadata",
                responses=errors,
                response_model=None,
            )
            app.add_api_route(
                f"{prefix}/ready",
                bind(model_ready, f"{prefix}/ready"),
                methods=["GET"],
                tags=tags,
                summary="Model ready",
                responses=errors,
                response_model=None,
            )
            app.add_api_route(
                f"{prefix}/infer",
                bind(infer, f"{prefix}/infer"),
                methods=["POST"],
                tags=tags,
                summary="Inference (JSON or binary tensor data)",
                responses=infer_errors,
                response_model=None,
                openapi_extra=body,
            )


def infer_schema(max_batch_items: int, max_text_chars: int) -> dict[str, Any]:
    """The JSON form of an infer request, for the OpenAPI document (binary bodies are described in the guide).

    JSON Schema cannot say that ``shape[0]`` equals the number of texts: a request can fit this schema and
    still get 400 for that.
    """
    text = {"type": "string", "minLength": 1, "maxLength": max_text_chars, "pattern": VISIBLE_CHARACTER}
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 64},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": max_batch_items},
                "minItems": 1,
                "maxItems": 2,
            },
            "datatype": {"type": "string", "enum": ["BYTES"]},
            "data": {"type": "array", "items": text, "minItems": 1, "maxItems": max_batch_items},
        },
    }
    output = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "enum": [*CLASSIFIER_OUTPUTS, *EMBEDDER_OUTPUTS]},
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"binary_data": {"type": "boolean"}},
            },
        },
    }
    return {
        "title": "InferenceRequest",
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "maxLength": MAX_ID_CHARS},
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
            "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
            "outputs": {"type": "array", "items": output, "minItems": 1, "maxItems": 3},
        },
    }
