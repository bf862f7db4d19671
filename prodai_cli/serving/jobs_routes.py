"""Batch jobs over HTTP: the seed's ``/batch_predict`` + ``/batch_result`` and the ``/v1/jobs`` API.

Every route needs a key with the ``jobs`` scope (``admin`` also grants it) and passes the same guard as
``/predict`` (failed-auth lockout, rate limits). A key sees and cancels only the jobs it submitted, and may
have at most ``jobs.max_queued_per_key`` queued or running at once (429 past that). A job pins one model
version at submit (A/B weights do not apply); an unknown model, version or alias is a 422 then, never a
failure in a worker.

The work itself is :mod:`prodai_cli.jobs`: records and results in files under the jobs directory, run by
the embedded backend (a low-priority child process of this server) or by ``prodai worker`` processes
through Celery and Redis (``jobs.backend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from prodai_cli.errors import ConfigError, InputError, JobError, JobNotFoundError, ModelNotFoundError, UsageError
from prodai_cli.jobs.store import JobRecord, JobStatus, JobStore
from prodai_cli.jobs.submit import (
    JobQueue,
    QuotaExceeded,
    allowed_input,
    batch_settings,
    jobs_dir,
    pin_model,
    submit,
    texts_writer,
)
from prodai_cli.serving.errors import (
    BodyTooLarge,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
)
from prodai_cli.serving.middleware import context_of
from prodai_cli.serving.pipeline import check_content_type, read_body
from prodai_cli.untrusted import UntrustedInputError, decode, is_blank, loads

logger = logging.getLogger("prodai.serving.jobs")

if TYPE_CHECKING:
    from fastapi import FastAPI

    from prodai_cli.config import Settings
    from prodai_cli.serving.pipeline import RequestContext
    from prodai_cli.serving.state import ServerState

JOBS_ROUTES = ("/batch_predict", "/v1/jobs")
JSONL_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines", "text/plain"})
SEED_STATUS = {"queued": "pending", "running": "pending", "succeeded": "completed"}
MAX_PAGE = 100
_FIELD_CHARS = 128


class JobsApi:
    """The jobs routes of one server app, its job store and queue, and the jobs metrics."""

    def __init__(self, settings: Settings, state: ServerState) -> None:
        self.settings = settings
        self.config = settings.config.jobs
        self.state = state
        self.store = JobStore(jobs_dir(settings))
        self.queue: JobQueue | None = None
        if self.config.backend == "celery":
            # Refuse at start-up, not at the first submit: no Redis configured, or Celery not installed.
            import importlib.util

            from prodai_cli.jobs.celery_app import redis_url

            redis_url(settings)
            if importlib.util.find_spec("celery") is None:
                raise ConfigError(
                    "jobs.backend is celery but Celery is not installed", hint="pip install 'prodai[jobs]'"
                )
        from prometheus_client import Gauge

        registry = state.metrics.registry
        self.by_status = Gauge(
            "prodai_jobs", "Batch jobs by status", ["status"], registry=registry, multiprocess_mode="livemax"
        )
        self.queue_length = Gauge(
            "prodai_jobs_queue_length",
            "Jobs queued and not yet started (the worker autoscaling signal)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.workers = Gauge(
            "prodai_jobs_workers",
            "Processes taking jobs: live `prodai worker` processes (Celery; from their Redis heartbeats), "
            "1 on the embedded backend (this server)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        state.metrics.before_render.append(self.refresh_metrics)

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the backend: the embedded watcher thread, or the Celery producer."""
        if self.config.backend == "celery":
            from prodai_cli.jobs.celery_app import CeleryQueue

            self.queue = CeleryQueue(self.settings)
        else:
            from prodai_cli.jobs.embedded import EmbeddedQueue

            self.queue = EmbeddedQueue(
                self.store, config_path=self.settings.path, root=self.settings.root, nice=self.config.nice
            )
        with contextlib.suppress(OSError):
            self.store.prune(self.config.keep_days)

    def close(self) -> None:
        """Stop the backend (a running embedded job is stopped and resumes at the next start)."""
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    def refresh_metrics(self) -> None:
        """Copy the job counts into the gauges (before each scrape)."""
        counts = self.store.counts()
        for status, count in counts.items():
            self.by_status.labels(status).set(count)
        self.queue_length.set(counts.get("queued", 0))
        workers = self.queue.worker_count() if self.queue is not None else None
        if workers is not None:
            self.workers.set(workers)

    # ------------------------------------------------------------------------------------- helpers
    async def authorize(self, request: Request) -> RequestContext:
        """The ``/predict`` guard with the ``jobs`` scope: 401/403/429 as there."""
        ctx = context_of(request.state)
        if ctx is None:
            raise RuntimeError("request context missing: ObservabilityMiddleware is not installed")
        protection = self.state.protection
        assert protection is not None  # create_app sets it before any request
        await protection.authorize(ctx, "jobs")
        return ctx

    def owned(self, ctx: RequestContext, job_id: str) -> JobRecord:
        """The job, if this key may see it (another key's job is a 404, not a 403: ids are not disclosed)."""
        try:
            record = self.store.get(job_id)
        except JobNotFoundError as exc:
            raise NotFound(exc.message, code="job_not_found") from None
        if ctx.principal is not None and record.owner != ctx.principal:
            raise NotFound(f"No job {job_id}", code="job_not_found")
        return record

    def default_model(self) -> str:
        """The model a job runs when the request names none: the server's configured default."""
        config = self.settings.config
        ref = config.serving.model or config.registry.default_model or (self.state.model_keys or [""])[0]
        if not ref:
            raise InvalidRequest('No model named and this server has no default; send "model"')
        return ref

    async def new_job(
        self,
        ctx: RequestContext,
        *,
        kind: str,
        model_ref: str | None,
        write_input: Callable[[Path], None] | None,
        input_path: str | None = None,
        text_field: str = "text",
        id_field: str = "id",
    ) -> JobRecord:
        """Pin the model, create the job and enqueue it; refusals as the HTTP errors they are."""
        if self.queue is None:
            raise ServiceUnavailable("The jobs backend is not running (the server is starting or stopping)")
        ref = model_ref or self.default_model()
        try:
            if model_ref is None and Path(ref).is_dir():
                pinned, version = ref, "local"  # the server's own model directory (a client may name only refs)
            else:
                pinned, version = await asyncio.to_thread(pin_model, self.settings, ref)
        except ModelNotFoundError as exc:
            raise InvalidRequest(exc.message, code="unknown_model") from None
        except UsageError as exc:  # a malformed reference
            raise InvalidRequest(exc.message, code="bad_model_ref") from None
        batch = self.settings.config.batch
        record = JobRecord(
            id=self.store.new_id(),
            model=pinned,
            model_ref=ref,
            model_version=version,
            owner=ctx.principal,
            kind=kind,
            text_field=text_field,
            id_field=id_field,
            input_path=input_path,
            settings=batch_settings(batch, self.config, beside_server=self.config.backend == "embedded"),
        )
        queue = self.queue
        try:
            await asyncio.to_thread(
                submit, self.store, queue, record, write_input, max_active=self.config.max_queued_per_key
            )
        except QuotaExceeded as exc:
            raise TooManyRequests(exc.message, code="job_quota", headers={"Retry-After": "5"}) from None
        except JobError as exc:
            raise ServiceUnavailable(exc.message, code="queue_unavailable") from None
        except OSError as exc:
            raise self.storage_error(exc) from None
        ctx.log_fields["job_id"] = record.id
        return record

    async def json_body(self, request: Request) -> dict[str, Any]:
        """A bounded, UTF-8, JSON-object body (413, 415 or 422 otherwise)."""
        body = await read_body(request, self.config.max_body_bytes)
        check_content_type(request.headers)
        batch = self.settings.config.batch
        try:
            data = loads(decode(body), max_depth=batch.max_json_depth, max_number_digits=batch.max_json_number_digits)
        except UntrustedInputError as exc:
            raise InvalidRequest(f"Invalid JSON body: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The body must be a JSON object")
        return data

    async def stream_upload(self, request: Request) -> Path:
        """Stream a JSONL body to a staging file, refusing it past ``jobs.max_upload_bytes``."""
        limit = self.config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"Upload of {declared} bytes exceeds jobs.max_upload_bytes ({limit})")
        try:
            staging = self.store.staging_file()
            handle = open(staging, "wb")  # noqa: SIM115  # closed by the with below; opening is what may fail
        except OSError as exc:
            raise self.storage_error(exc) from None
        size = 0
        try:
            with handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(f"Upload exceeds jobs.max_upload_bytes ({limit})")
                    handle.write(chunk)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        if size == 0:
            staging.unlink(missing_ok=True)
            raise InvalidRequest("The uploaded input is empty", code="empty_input")
        return staging

    def storage_error(self, exc: OSError) -> ServiceUnavailable:
        """A jobs directory that cannot be written, as the 503 it is (the server's setup, not the request).

        The directory and the OS error go to the server's log only (a client learns no server path); the
        client gets the reason and the key its operator must change.
        """
        logger.error("jobs directory not writable", extra={"dir": str(self.store.root), "error": str(exc)})
        return ServiceUnavailable(
            "The server cannot write its jobs directory; its operator must set jobs.dir to a writable directory",
            code="jobs_storage",
        )

    def committed_bytes(self, record: JobRecord, which: str) -> int:
        """How much of the results or errors file is committed (a running job's tail may be torn)."""
        manifest = self.store.job_dir(record.id) / "results.manifest.json"
        try:
            progress = json.loads(manifest.read_text(encoding="utf-8"))["progress"]
            return int(progress["output_bytes" if which == "results" else "errors_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def seed_results(self, record: JobRecord, count: int) -> list[dict[str, Any] | None]:
        """The predictions of a ``/batch_predict`` job in input order; a refused text gets ``{"error"}``."""
        results: list[dict[str, Any] | None] = [None] * count
        with open(self.store.results_path(record.id), encoding="utf-8") as handle:
            for line in handle:
                item = json.loads(line)
                index = item.pop("id")
                item.pop("line", None)
                if isinstance(index, int) and 0 <= index < count:
                    results[index] = item
        errors = self.store.errors_path(record.id)
        if errors.exists():
            with open(errors, encoding="utf-8") as handle:
                for line in handle:
                    bad = json.loads(line)
                    index = bad.get("id", int(bad["line"]) - 1)
                    if isinstance(index, int) and 0 <= index < count:
                        results[index] = {"error": bad["error"]}
        return results


def register_jobs(app: FastAPI, settings: Settings, state: ServerState) -> JobsApi:
    """Add the jobs routes to the server app; the lifespan calls ``start()`` and ``close()`` on the result."""
    from prodai_cli.serving.schemas import ERROR_RESPONSES, ErrorResponse

    api = JobsApi(settings, state)
    config = api.config
    max_text_chars = settings.config.serving.max_text_chars
    model_field = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 512}, {"type": "null"}]}
    name_field = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": _FIELD_CHARS}, {"type": "null"}]}
    seed_body = {
        "type": "object",
        "properties": {
            "texts": {
                "type": "array",
                "items": {"type": "string", "maxLength": max_text_chars},
                "minItems": 1,
                "maxItems": config.max_texts,
            },
            "model": model_field,
        },
        "required": ["texts"],
        "additionalProperties": False,
    }
    path_body = {
        "type": "object",
        "properties": {
            "input_path": {"type": "string", "minLength": 1, "maxLength": 512},
            "model": model_field,
            "text_field": name_field,
            "id_field": name_field,
        },
        "required": ["input_path"],
        "additionalProperties": False,
    }
    jsonl_body = {"type": "string", "format": "binary"}
    refusals = {
        **ERROR_RESPONSES,
        401: {"model": ErrorResponse, "description": "Missing or bad API key"},
        403: {"model": ErrorResponse, "description": "The key lacks the jobs scope; input_path not allowed"},
        404: {"model": ErrorResponse, "description": "No such job, or another key's"},
        429: {"model": ErrorResponse, "description": "Rate limited, or jobs.max_queued_per_key reached"},
    }
    accepted: dict[int | str, dict[str, Any]] = {202: {"description": "Queued"}, **refusals}

    @app.post(
        "/batch_predict",
        tags=["jobs"],
        summary="Queue texts for prediction",
        status_code=202,
        response_model=None,
        responses=accepted,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": seed_body}}}},
    )
    async def batch_predict(request: Request) -> JSONResponse:
        """``{"texts": [...], "model"?: REF}`` -> 202 ``{"task_id"}``; poll ``GET /batch_result/{task_id}``."""
        ctx = await api.authorize(request)
        data = await api.json_body(request)
        unknown = sorted(set(data) - {"texts", "model"})
        if unknown:
            raise InvalidRequest(f"Unknown field(s): {', '.join(k[:_FIELD_CHARS] for k in unknown)}")
        texts = data.get("texts")
        if not isinstance(texts, list) or not texts:
            raise InvalidRequest('"texts" must be a non-empty list of strings')
        if len(texts) > config.max_texts:
            raise InvalidRequest(f'"texts" has {len(texts)} items; the most is {config.max_texts} (jobs.max_texts)')
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest(f"texts[{index}] must be a string")
            if len(text) > max_text_chars:
                raise InvalidRequest(f"texts[{index}] is longer than {max_text_chars} characters")
        model = _optional_str(data, "model")
        record = await api.new_job(ctx, kind="texts", model_ref=model, write_input=texts_writer(texts))
        return JSONResponse({"task_id": record.id, "status": "pending"}, status_code=202)

    @app.get(
        "/batch_result/{task_id}",
        tags=["jobs"],
        summary="A /batch_predict task's status and results",
        response_model=None,
        responses=refusals,
    )
    async def batch_result(task_id: str, request: Request) -> JSONResponse:
        """``{"status": "pending"|"completed"|"failed"|"cancelled", "results": [...]}`` (results once completed)."""
        ctx = await api.authorize(request)
        record = api.owned(ctx, task_id)
        status = SEED_STATUS.get(record.status, record.status)
        body: dict[str, Any] = {
            "task_id": record.id,
            "status": status,
            "progress": {"done": record.lines_done, "total": record.lines_total},
        }
        if record.error:
            body["error"] = record.error
        if status == "completed":
            body["results"] = await asyncio.to_thread(api.seed_results, record, record.lines_total)
        return JSONResponse(body)

    @app.post(
        "/v1/jobs",
        tags=["jobs"],
        summary="Submit a JSONL file as a job",
        status_code=202,
        response_model=None,
        responses=accepted,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": path_body},
                    "application/x-ndjson": {"schema": jsonl_body},
                },
            }
        },
    )
    async def create_job(request: Request) -> JSONResponse:
        """A JSONL body (``?model=REF&text_field=&id_field=``), or JSON ``{"model", "input_path", ...}``."""
        ctx = await api.authorize(request)
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type in JSONL_TYPES:
            params = request.query_params
            fields = {name: _field(params.get(name), name) for name in ("text_field", "id_field")}
            model = params.get("model")
            staging = await api.stream_upload(request)
            try:
                record = await api.new_job(
                    ctx,
                    kind="upload",
                    model_ref=model[:512] if model else None,
                    write_input=lambda path: os.replace(staging, path),
                    text_field=fields["text_field"] or "text",
                    id_field=fields["id_field"] or "id",
                )
            finally:
                staging.unlink(missing_ok=True)
        elif media_type == "application/json" or not media_type:
            data = await api.json_body(request)
            unknown = sorted(set(data) - {"model", "input_path", "text_field", "id_field"})
            if unknown:
                raise InvalidRequest(f"Unknown field(s): {', '.join(k[:_FIELD_CHARS] for k in unknown)}")
            path_text = _optional_str(data, "input_path")
            if not path_text:
                raise InvalidRequest('Send "input_path" (a file in jobs.input_dirs) or upload the JSONL as the body')
            try:
                path = await asyncio.to_thread(allowed_input, path_text, config.input_dirs, settings.root)
            except UsageError as exc:
                raise Forbidden(exc.message, code="input_path_refused") from None
            except InputError as exc:
                raise InvalidRequest(exc.message, code="input_unreadable") from None
            record = await api.new_job(
                ctx,
                kind="path",
                model_ref=_optional_str(data, "model"),
                write_input=None,
                input_path=str(path),
                text_field=_field(_optional_str(data, "text_field"), "text_field") or "text",
                id_field=_field(_optional_str(data, "id_field"), "id_field") or "id",
            )
        else:
            raise UnsupportedMediaType(
                f"Content-Type {media_type[:100]!r} is not supported; upload application/x-ndjson "
                "or send application/json naming input_path"
            )
        return JSONResponse(record.public(), status_code=202)

    @app.get(
        "/v1/jobs", tags=["jobs"], summary="This key's jobs, newest first", response_model=None, responses=refusals
    )
    async def list_jobs(
        request: Request,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        status: Annotated[JobStatus | None, Query()] = None,
    ) -> JSONResponse:
        """``{"jobs": [...], "total", "offset", "limit"}``; ``limit`` at most 100."""
        ctx = await api.authorize(request)
        records, total = await asyncio.to_thread(
            api.store.page, owner=ctx.principal, status=status, offset=offset, limit=limit
        )
        return JSONResponse({"jobs": [r.public() for r in records], "total": total, "offset": offset, "limit": limit})

    @app.get(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        summary="A job's status and progress",
        response_model=None,
        responses=refusals,
    )
    async def get_job(job_id: str, request: Request) -> JSONResponse:
        """Status ``queued|running|succeeded|failed|cancelled``, progress, items/s, errors, times."""
        ctx = await api.authorize(request)
        return JSONResponse(api.owned(ctx, job_id).public())

    async def stream_file(job_id: str, request: Request, which: str) -> Response:
        ctx = await api.authorize(request)
        record = api.owned(ctx, job_id)
        path = api.store.results_path(job_id) if which == "results" else api.store.errors_path(job_id)
        size = api.committed_bytes(record, which)
        return StreamingResponse(_read_prefix(path, size), media_type="application/x-ndjson")

    @app.get(
        "/v1/jobs/{job_id}/results",
        tags=["jobs"],
        summary="A job's predictions (JSONL, streamed)",
        responses={200: {"content": {"application/x-ndjson": {}}, "description": "JSONL"}, **refusals},
        response_class=StreamingResponse,
    )
    async def job_results(job_id: str, request: Request) -> Response:
        """Every committed prediction line so far (all of them once the job succeeded)."""
        return await stream_file(job_id, request, "results")

    @app.get(
        "/v1/jobs/{job_id}/errors",
        tags=["jobs"],
        summary="A job's bad input lines (JSONL, streamed)",
        responses={200: {"content": {"application/x-ndjson": {}}, "description": "JSONL"}, **refusals},
        response_class=StreamingResponse,
    )
    async def job_errors(job_id: str, request: Request) -> Response:
        """One line per bad input line: its line number, the reason and the start of the line."""
        return await stream_file(job_id, request, "errors")

    @app.delete(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        summary="Cancel a job",
        status_code=202,
        response_model=None,
        responses=accepted,
    )
    async def cancel_job(job_id: str, request: Request) -> JSONResponse:
        """A queued job ends at once; a running one stops within seconds (its committed results stay)."""
        ctx = await api.authorize(request)
        api.owned(ctx, job_id)
        record = await asyncio.to_thread(api.store.request_cancel, job_id)
        if api.queue is not None:
            api.queue.cancelled(job_id)
        return JSONResponse(record.public(), status_code=202)

    return api


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or is_blank(value) or len(value) > 512:
        raise InvalidRequest(f'"{name}" must be a non-empty string of at most 512 characters')
    return value


def _field(value: str | None, name: str) -> str | None:
    if value is not None and (not value or len(value) > _FIELD_CHARS):
        raise InvalidRequest(f"{name} must be 1-{_FIELD_CHARS} characters")
    return value


async def _read_prefix(path: Path, size: int) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of ``path`` in blocks (a missing file is empty)."""
    remaining = size
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, across yields
    except FileNotFoundError:
        return
    try:
        while remaining > 0:
            block = await asyncio.to_thread(handle.read, min(remaining, 1 << 16))
            if not block:
                break
            remaining -= len(block)
            yield block
    finally:
        handle.close()


__all__ = ["JOBS_ROUTES", "JobsApi", "register_jobs"]
