"""What one server app holds at run time (:class:`ServerState`): config sections, pool, pipeline, lifecycle.

Its own module so that the routes and the wiring code can both read it without importing the app factory
(which imports them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prodai_cli.config import MonitoringConfig, ServingConfig
    from prodai_cli.serving.ab.reload import ConfigReloader
    from prodai_cli.serving.ab.routing import ABRouting, Resilience
    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.pipeline import PredictPipeline
    from prodai_cli.serving.pool import ModelPool
    from prodai_cli.serving.protection.steps import Protection

logger = logging.getLogger("prodai.serving")


class ServerState:
    """Everything one server app holds: config sections, metrics, pool, pipeline, lifecycle flags.

    Reachable from handlers and from wiring code as ``app.state.prodai``.

    Args:
        serving: The ``serving`` section (drain delay, the default bind address).
        monitoring: The ``monitoring`` section (whether ``/metrics`` is served).
        metrics: The server's metrics.
        pool: The model pool.
        pipeline: The request pipeline.
        model_keys: The pool keys that must be ready.

    Attributes:
        model_keys: The pool keys this server must have ready before it reports ready.
        draining: Set on SIGTERM (or shutdown): readiness answers 503 from then on.
        on_fatal: Called with a reason when a configured model fails to load (the runner stops the server;
            uvicorn workers exit with status 3 so their supervisor stops); None keeps serving 503s.

    """

    def __init__(
        self,
        serving: ServingConfig,
        monitoring: MonitoringConfig,
        metrics: ServerMetrics,
        pool: ModelPool,
        pipeline: PredictPipeline,
        model_keys: list[str],
    ) -> None:
        self.serving = serving
        self.monitoring = monitoring
        self.metrics = metrics
        self.pool = pool
        self.pipeline = pipeline
        self.model_keys = model_keys
        self.draining = False
        self.started = time.time()
        self.load_error: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Set by create_app: the protection steps, the A/B parts (None without A/B) and the config watcher.
        self.protection: Protection | None = None
        self.routing: ABRouting | None = None
        self.resilience: Resilience | None = None
        self.reloader: ConfigReloader | None = None
        self.bind: tuple[str, int | None] = (self.serving.host, self.serving.port)

    def not_ready_reason(self) -> str | None:
        """Why ``/health/ready`` is 503, or None when ready."""
        if self.draining:
            return "draining: the server is shutting down"
        if self.load_error:
            return f"model failed to load: {self.load_error}"
        for key in self.model_keys:
            model = self.pool.get(key)
            if model is None or not model.ready:
                return f"loading model {key}"
        return None

    @property
    def ready(self) -> bool:
        """Every configured version loaded and warmed, and not draining."""
        return self.not_ready_reason() is None

    def health(self) -> dict[str, Any]:
        """The ``/health`` document."""
        loaded = all((m := self.pool.get(k)) is not None and m.ready for k in self.model_keys)
        if self.draining:
            status = "draining"
        elif self.load_error:
            status = "failed"
        else:
            status = "ok" if loaded else "loading"
        document: dict[str, Any] = {
            "status": status,
            "model_loaded": loaded,
            "pid": os.getpid(),
            "models": {m.key: m.describe() for m in self.pool.entries()},
        }
        if self.routing is not None and self.resilience is not None:
            breakers = self.resilience.breakers.snapshot()
            document["ab"] = {
                **self.routing.current.describe(),
                "breakers": {str(version): snapshot for version, snapshot in breakers.items()},
            }
        if self.reloader is not None:
            document["config"] = self.reloader.describe()
        return document

    def begin_drain(self) -> None:
        """Report not-ready from now on (requests are still served until the server stops)."""
        if not self.draining:
            self.draining = True
            logger.info("draining", extra={"drain_delay_s": self.serving.drain_delay_s})

    async def load_models(self) -> None:
        """Load and warm every configured version (the lifespan runs this in the background)."""
        for key in self.model_keys:
            try:
                await self.pool.ensure(key)
            except Exception as exc:
                self.load_error = str(exc) or type(exc).__name__
                logger.error("server cannot start", extra={"model": key, "error": self.load_error})
                if self.on_fatal is not None:
                    self.on_fatal(self.load_error)
                return
