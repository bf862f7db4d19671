"""Request and response shapes of the model server (the seed tutorial's shapes, so its clients keep working).

Request models are built per app because their limits (``max_text_chars``, ``max_batch_items``) come from
the config; the OpenAPI document shows the same limits the server enforces. Unknown fields are errors.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from prodai_cli.untrusted import DEFAULT_MAX_DEPTH, DEFAULT_MAX_NUMBER_DIGITS, VISIBLE_CHARACTER, is_blank


def _not_blank(text: str) -> str:
    # The empty-text policy shared with `prodai batch` (prodai_cli.untrusted.is_blank).
    if is_blank(text):
        raise ValueError("text is empty or only whitespace/control characters")
    return text


TOP_K_HELP = (
    "Classification: also return the top_k most likely labels as scores [{label, score}] (a number at least "
    "the number of labels returns all of them); embeddings ignore it"
)


def _whole_number(value: object) -> object:
    # JSON Schema's "integer" includes 3.0; true, "3" and 3.5 are not whole numbers, whatever pydantic's lax mode says.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


TopK = Annotated[int, Field(ge=1), BeforeValidator(_whole_number)]


class RequestModels:
    """The request models of one app (limits from its ``serving`` section)."""

    def __init__(
        self,
        max_text_chars: int,
        max_batch_items: int,
        *,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
        max_json_number_digits: int = DEFAULT_MAX_NUMBER_DIGITS,
    ) -> None:
        self.max_json_depth = max_json_depth
        self.max_json_number_digits = max_json_number_digits
        # Lone surrogates never get this far: the body parser (prodai_cli.untrusted.loads) refuses them.
        # The schema says what the validator enforces: at least one character that is not whitespace or a
        # control character (JSON Schema patterns match anywhere in the string).
        text_type = Annotated[
            str,
            StringConstraints(max_length=max_text_chars),
            AfterValidator(_not_blank),
            WithJsonSchema(
                {"type": "string", "minLength": 1, "maxLength": max_text_chars, "pattern": VISIBLE_CHARACTER}
            ),
        ]

        class PredictRequest(BaseModel):
            """One text to classify or embed."""

            model_config = ConfigDict(extra="forbid", title="PredictRequest")
            text: text_type = Field(description=f"The input, at most {max_text_chars} characters")
            top_k: TopK | None = Field(None, description=TOP_K_HELP)

        class BatchPredictRequest(BaseModel):
            """Several texts, answered in order."""

            model_config = ConfigDict(extra="forbid", title="BatchPredictRequest")
            texts: list[text_type] = Field(
                min_length=1,
                max_length=max_batch_items,
                description=f"1 to {max_batch_items} inputs of at most {max_text_chars} characters each",
            )
            top_k: TopK | None = Field(None, description=TOP_K_HELP)

        self.predict: type[BaseModel] = PredictRequest
        self.batch: type[BaseModel] = BatchPredictRequest

    @staticmethod
    def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
        """``openapi_extra`` documenting ``model`` as the JSON request body (the route parses it itself)."""
        return {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": model.model_json_schema()}},
            }
        }


class LabelScore(BaseModel):
    """One label's probability (``top_k``)."""

    label: str
    score: float = Field(ge=0, le=1)


class ClassificationPrediction(BaseModel):
    """A text-classification answer."""

    label: str
    confidence: float = Field(ge=0, le=1)
    scores: list[LabelScore] | None = Field(None, description="With top_k: the most likely labels, best first")
    model_version: str
    variant: str


class EmbeddingPrediction(BaseModel):
    """An embedding answer (L2-normalised vector)."""

    embedding: list[float]
    model_version: str
    variant: str


Prediction = ClassificationPrediction | EmbeddingPrediction


class BatchPredictResponse(BaseModel):
    """Answers to ``/predict/batch``, in input order."""

    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    """Every refusal: a reason, a machine-readable code, the request id and (422) per-field errors."""

    detail: str
    code: str
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


class HealthResponse(BaseModel):
    """``/health``: overall status and every configured model version."""

    status: str
    model_loaded: bool
    pid: int = Field(description="The worker process that answered")
    models: dict[str, dict[str, Any]]
    ab: dict[str, Any] | None = Field(None, description="The live A/B split and its breakers (A/B servers only)")
    config: dict[str, Any] | None = Field(None, description="The watched config file and its last reload")


class ProbeResponse(BaseModel):
    """``/health/live`` and ``/health/ready``."""

    status: str
    reason: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body larger than serving.max_body_bytes"},
    415: {"model": ErrorResponse, "description": "Body is not application/json"},
    422: {"model": ErrorResponse, "description": "Malformed JSON, unknown field, text too long, too many texts"},
    500: {"model": ErrorResponse, "description": "The model failed on a valid input (counted as a model error)"},
    503: {"model": ErrorResponse, "description": "Not ready, queue full or shutting down (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "No answer within serving.request_timeout_s"},
}
