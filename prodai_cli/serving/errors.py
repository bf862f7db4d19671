"""HTTP errors of the model server: every refusal is one of these, rendered as ``{"detail", "code"}``.

Any step of the request path (size limit, auth, rate limit, validation, routing, batching) raises a
:class:`ServingError` subclass; one exception handler in the app turns it into a JSON response that carries
the request id, so no step builds responses by hand and no refusal can turn into a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ServingError(Exception):
    """A request the server refuses on purpose.

    Attributes:
        status_code: HTTP status.
        code: Short machine-readable reason (``body_too_large``, ``queue_full``...).
        message: Human-readable reason, safe to show the client (never echoes secrets or bodies).
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``...).
        errors: Optional per-field details (validation).

    """

    status_code = 500
    code = "error"

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.errors = errors
        if code is not None:
            self.code = code

    def body(self, request_id: str | None) -> dict[str, Any]:
        """The JSON body of the response."""
        data: dict[str, Any] = {"detail": self.message, "code": self.code}
        if self.errors:
            data["errors"] = self.errors
        if request_id:
            data["request_id"] = request_id
        return data


class BodyTooLarge(ServingError):
    """413: the body is larger than ``serving.max_body_bytes`` (checked while it streams in)."""

    status_code = 413
    code = "body_too_large"


class NotFound(ServingError):
    """404: a model or version this server does not serve (the protocol routes name them in the URL)."""

    status_code = 404
    code = "not_found"


class UnsupportedMediaType(ServingError):
    """415: the body is not ``application/json``."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidRequest(ServingError):
    """422: malformed JSON, unknown fields, wrong types, texts too long, batches too large."""

    status_code = 422
    code = "invalid_request"


class Unauthorized(ServingError):
    """401: missing or bad credentials (raised by the auth guard)."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ServingError):
    """403: valid credentials without the needed scope (raised by the auth guard)."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(ServingError):
    """429: a rate limit was hit (raised by the rate-limit guard, with ``Retry-After``)."""

    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(ServingError):
    """503: not ready yet, queue full, or no model can serve; always carries ``Retry-After``."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))}, code=code)


class InferenceTimeout(ServingError):
    """504: the prediction did not finish within ``serving.request_timeout_s``."""

    status_code = 504
    code = "timeout"


class InferenceFailed(ServingError):
    """500: the model raised on a validated input (counted in ``prodai_model_errors_total``).

    The breaker/fallback step (A/B) catches :class:`ModelError` before it becomes this.
    """

    status_code = 500
    code = "inference_failed"


class ModelError(Exception):
    """The model raised while predicting a batch (the batcher's error, before it becomes an HTTP answer).

    Attributes:
        model_version: The version that failed.
        error_type: The exception's class name (the ``error_type`` metric label).

    """

    def __init__(self, model_version: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.model_version = model_version
        self.error_type = error_type
