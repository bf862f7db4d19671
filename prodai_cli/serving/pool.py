"""The models a server holds: several versions loaded at once, each with its own micro-batcher.

Entries are keyed by the model reference they were loaded from; the server pins references to
``NAME/VERSION`` (or a local directory) before loading, so a key names exactly one version. Loading runs
in a thread of its own and warming on the compute thread, so the event loop keeps answering ``/health/live``
(and ``/health/ready`` with 503) meanwhile. A/B reloads call :meth:`ModelPool.ensure` for every version
the new split names (loaded and warmed before it takes traffic) and :meth:`ModelPool.retire` for versions
no longer named.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from prodai_cli.config import ServingConfig, Settings
    from prodai_cli.runtime import ModelRuntime
    from prodai_cli.serving.batcher import MicroBatcher
    from prodai_cli.serving.metrics import ServerMetrics

logger = logging.getLogger("prodai.serving.pool")

Status = Literal["loading", "ready", "failed", "retired"]
# What a served model's trace is checked on when it is made (a server has no inputs of its own at load): texts
# of 1 to 512 words, so the check runs short and full-length rows, padded and not.
TRACE_PROBE_TEXTS = tuple(
    " ".join(("requests arrive and the model answers them in batches while the queue stays short " * 40).split()[:n])
    for n in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 512)
)


def model_key(name: str, version: int | str) -> str:
    """The pool key of a registered version: ``NAME/VERSION`` (what :func:`parse_model_ref` reads back)."""
    return f"{name}/{version}"


@dataclass(eq=False)
class ServedModel:
    """One loaded version: its runtime, its batcher, and where it is in its life.

    Attributes:
        key: The reference it was loaded from (``clf/2`` or a directory).
        status: ``loading`` -> ``ready`` (or ``failed``) -> ``retired``.
        runtime: The loaded model (None until loaded).
        batcher: Its micro-batcher (None until loaded).
        error: Why loading failed.

    """

    key: str
    status: Status = "loading"
    runtime: ModelRuntime | None = None
    batcher: MicroBatcher | None = None
    error: str | None = None
    load_seconds: float | None = None
    _loaded: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _load_started: bool = field(default=False, repr=False)

    @property
    def ready(self) -> bool:
        """Loaded, warmed and accepting requests."""
        return self.status == "ready"

    @property
    def version(self) -> str:
        """The registry version (``local`` for a directory; the key until loaded)."""
        return self.runtime.version if self.runtime is not None else self.key

    @property
    def name(self) -> str:
        """The registered model name (the key until loaded)."""
        return self.runtime.name if self.runtime is not None else self.key

    @property
    def task(self) -> str | None:
        """``text-classification`` or ``embedding`` once loaded."""
        return self.runtime.task if self.runtime is not None else None

    def describe(self) -> dict[str, Any]:
        """JSON-ready state for ``/health``."""
        data: dict[str, Any] = {"status": self.status}
        if self.runtime is not None:
            data.update(
                name=self.runtime.name,
                version=self.runtime.version,
                task=self.runtime.task,
                device=self.runtime.device,
                precision=self.runtime.precision,
                max_length=self.runtime.max_length,
            )
        if self.batcher is not None:
            data["queued"] = self.batcher.queued_texts
        if self.load_seconds is not None:
            data["load_seconds"] = round(self.load_seconds, 3)
        if self.error:
            data["error"] = self.error
        return data


class ModelPool:
    """Loads, holds and retires model versions for one server process.

    Args:
        settings: Settings (registry access for references).
        serving: The ``serving`` section (device, precision, batching and queue limits).
        metrics: Server metrics, handed to every batcher.

    """

    def __init__(self, settings: Settings, serving: ServingConfig, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.serving = serving
        self.metrics = metrics
        self._models: dict[str, ServedModel] = {}

    def get(self, key: str) -> ServedModel | None:
        """The entry loaded (or loading) from ``key``."""
        return self._models.get(key)

    def by_version(self, version: str | int) -> ServedModel | None:
        """The ready entry serving registry version ``version`` (first match)."""
        for model in self._models.values():
            if model.ready and model.version == str(version):
                return model
        return None

    def entries(self) -> list[ServedModel]:
        """Every entry, in load order."""
        return list(self._models.values())

    def add(self, key: str) -> ServedModel:
        """Register ``key`` as loading (visible in /health) without starting the load yet."""
        if key not in self._models:
            self._models[key] = ServedModel(key=key)
        return self._models[key]

    async def ensure(self, key: str) -> ServedModel:
        """Load and warm ``key`` unless it is loaded (or loading: then wait for that load).

        Raises:
            ProdaiError: The reference or the files do not load (the entry stays ``failed``).

        """
        model = self.add(key)
        if model.ready:
            return model
        if model.status == "loading" and not model._load_started:
            model._load_started = True
            await self._load(model)
        else:
            await model._loaded.wait()
        if not model.ready:
            from prodai_cli.errors import ProdaiError

            raise ProdaiError(f"Model {key} did not load: {model.error}")
        return model

    async def _load(self, model: ServedModel) -> None:
        from prodai_cli.runtime.compute import compute_thread, run_in_fresh_thread
        from prodai_cli.serving.batcher import MicroBatcher

        started = time.perf_counter()
        logger.info("loading model", extra={"model": model.key})
        try:
            # Load on a thread of its own (other models keep serving meanwhile) that exits afterwards, and
            # warm up on the compute thread that will run the forward passes: see runtime/compute.py for why
            # torch work must not be spread over long-lived threads.
            runtime = await run_in_fresh_thread(self._load_runtime, model.key)
            await asyncio.get_running_loop().run_in_executor(compute_thread(), runtime.warmup)
        except Exception as exc:
            model.status = "failed"
            model.error = str(exc) or type(exc).__name__
            logger.error("model failed to load", extra={"model": model.key, "error": model.error})
            model._loaded.set()
            return
        batcher = MicroBatcher(
            runtime,
            max_batch_tokens=self.serving.max_batch_tokens or runtime.max_batch_tokens,
            max_batch_size=self.serving.max_batch_size,
            max_wait_ms=self.serving.max_wait_ms,
            max_queue=self.serving.max_queue,
            metrics=self.metrics,
        )
        batcher.start()
        model.runtime = runtime
        model.batcher = batcher
        model.load_seconds = time.perf_counter() - started
        model.status = "ready"
        self.metrics.model_loaded.labels(runtime.version).set(1)
        logger.info(
            "model ready",
            extra={
                "model": model.key,
                "model_version": runtime.version,
                "task": runtime.task,
                "device": runtime.device,
                "trace": runtime.trace_state,
                "load_seconds": round(model.load_seconds, 3),
            },
        )
        model._loaded.set()

    def _load_runtime(self, key: str) -> ModelRuntime:
        from prodai_cli.runtime import load_runtime

        trace_dir = self.settings.state_dir / "traces" if self.serving.trace else None
        runtime = load_runtime(
            key, self.settings, device=self.serving.device, precision=self.serving.precision, trace_dir=trace_dir
        )
        if runtime.trace_state == "eager":
            # No trace stored yet for this version: make one now (checked against the model, ~1 s for MiniLM)
            # so this and every later start runs it; a batch job's trace of the same version serves as well.
            try:
                state = runtime.adopt_trace(TRACE_PROBE_TEXTS)
            except Exception as exc:  # a trace only ever saves time: never fail a load over it
                state = f"failed: {exc}"
            if state != "traced":
                logger.info("serving the model itself, not a trace", extra={"model": key, "trace": state})
        runtime.scores = True  # per-label scores (top_k, OIP v2 ``scores``); /predict shows them only on request
        return runtime

    async def retire(self, key: str, *, timeout: float = 30.0) -> None:
        """Stop routing to ``key``'s version, let its queue drain, and drop it from the pool."""
        model = self._models.pop(key, None)
        if model is None:
            return
        model.status = "retired"
        if model.batcher is not None:
            await asyncio.to_thread(model.batcher.stop, timeout)
        if model.runtime is not None:
            self.metrics.model_loaded.labels(model.runtime.version).set(0)

    async def close(self, timeout: float = 30.0) -> None:
        """Retire every entry (server shutdown)."""
        for key in list(self._models):
            await self.retire(key, timeout=timeout)


def pin_model_ref(settings: Settings, ref: str) -> str:
    """Turn a reference into the exact thing every worker loads: a directory, or ``NAME/VERSION``.

    Raises:
        UsageError: Not a directory and not a model reference.
        ModelNotFoundError: Unknown model, version or alias.

    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from prodai_cli.refs import parse_model_ref

    parsed = parse_model_ref(ref)
    if parsed.version is not None:
        return model_key(parsed.name, parsed.version)
    from prodai_cli.registry import Registry

    info = Registry(settings).get_version(parsed)
    return model_key(info.name, info.version)
