"""Hot reload of prodai.yaml in a running server: A/B weights and versions without a restart or a failed request.

:class:`ConfigReloader` watches the config file the server started with: it looks at its inode, size and
mtime every ``interval_s`` (``prodai ab-set`` replaces the file atomically, so a new inode shows up), and
reloads at once on SIGHUP or ``POST /admin/reload``. A reload:

1. reads and validates the whole file (``PRODAI_*`` overrides applied, as at start-up). An invalid file is
   refused: the error (naming key and line) is logged, ``prodai_config_reload_success`` drops to 0, and the
   last good config stays live.
2. builds the new :class:`~prodai_cli.serving.ab.ABRouter` (aliases resolved through the registry), loads
   and warms every version it names that is not loaded yet (requests keep flowing to the old router
   meanwhile), and only then swaps the router reference: a request sees the old split or the new one,
   never a version that is still loading. A version that does not load (``version: 99`` written by hand)
   refuses the reload like an invalid file.
3. adopts new breaker thresholds, and retires versions no longer named a few seconds later (requests
   already routed to them finish; one that still reaches a retiring version is served by its fallback).

API keys reload on their own (:class:`~prodai_cli.serving.protection.auth.KeyStore` re-reads the files it came from
within a second of a change). Other sections (serving, cache, rate limits, filters, monitoring) take effect
at the next start; a reload that changes them says so in a warning. A server started with ``--model``
serves that model only and ignores ``ab:``.

Series: ``prodai_config_reload_success`` (1 when the last reload, or the start, succeeded),
``prodai_config_reload_timestamp_seconds`` (when the live config was loaded) and
``prodai_config_reloads_total{result}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.config import ProdaiConfig, Settings, file_signature, parse_config_text, read_bounded
from prodai_cli.errors import ConfigError, ProdaiError, ReloadRejected

if TYPE_CHECKING:
    from prodai_cli.serving.ab.breaker import Breakers
    from prodai_cli.serving.ab.router import ABRouter
    from prodai_cli.serving.ab.routing import ABRouting
    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.pool import ModelPool

logger = logging.getLogger("prodai.serving.reload")

POLL_INTERVAL_S = 0.5
# How long a version no longer named keeps its batcher after the switch: requests routed to it just before
# the swap are queued within microseconds (milliseconds with a Redis cache lookup in between).
RETIRE_DELAY_S = 5.0
# Sections a running server reads only at start-up (keys reload on their own; ab is what reloads).
RESTART_SECTIONS = ("serving", "cache", "rate_limit", "filters", "monitoring", "redis_url")


@dataclass
class ReloadOutcome:
    """The result of one reload attempt (``/health`` shows the last one)."""

    ok: bool
    at: float
    changed: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"ok": self.ok, "at": round(self.at, 3), "changed": self.changed, "error": self.error}


class ReloadMetrics:
    """The reload series."""

    def __init__(self, metrics: ServerMetrics) -> None:
        from prometheus_client import Counter, Gauge

        registry = metrics.registry
        self.success = Gauge(
            "prodai_config_reload_success",
            "1 when the last config reload (or the start) succeeded; 0 after a refused one",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.timestamp = Gauge(
            "prodai_config_reload_timestamp_seconds",
            "Unix time the live config was loaded (start-up or the last successful reload)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter("prodai_config_reloads", "Config reloads, by result", ["result"], registry=registry)


def resolve_router(settings: Settings, config: ProdaiConfig) -> ABRouter:
    """The router an A/B-mode server should run for ``config`` (blocking: may ask the registry).

    ``ab.enabled``: the configured split (aliases resolved to version numbers). ``ab`` off: everything to
    ``serving.model`` (else ``registry.default_model``), pinned to a registered version.

    Raises:
        ConfigError: ``ab`` is off and nothing else names a registered model to serve.
        ModelNotFoundError: An alias, model or version that the registry does not know.

    """
    from prodai_cli.refs import parse_model_ref
    from prodai_cli.registry import Registry
    from prodai_cli.serving.ab.router import ABRouter
    from prodai_cli.serving.pool import pin_model_ref

    live = Settings(config=config, path=settings.path, root=settings.root)
    ab = config.ab
    if ab.enabled:
        model = ab.model
        if any(isinstance(v.version, str) for v in ab.variants.values()) or isinstance(ab.shadow.version, str):
            registry = Registry(live)
            return ABRouter.from_config(
                ab, resolve_alias=lambda alias: registry.get_version(f"{model}@{alias}").version
            )
        return ABRouter.from_config(ab)
    ref = config.serving.model or config.registry.default_model
    if not ref:
        raise ConfigError(
            "ab.enabled is false and neither serving.model nor registry.default_model names a model to serve",
            hint="Set serving.model: NAME/VERSION, or turn ab back on",
        )
    pinned = pin_model_ref(live, ref)
    if Path(pinned).is_dir():
        raise ConfigError(f"serving.model {ref!r} is a directory: a running A/B server serves registered versions")
    parsed = parse_model_ref(pinned)
    assert parsed.version is not None  # pin_model_ref returns NAME/VERSION for anything but a directory
    return ABRouter.single(parsed.name, int(parsed.version), user_header=ab.user_header)


class ABReload:
    """Applies a new config's ``ab:`` section to a running A/B-mode server (step 2 and 3 of the module doc).

    Args:
        resolve: Builds the router a new config asks for (blocking; :func:`resolve_router` bound to the
            start-up settings, which say where the registry is).
        routing: The live router holder.
        pool: The model pool.
        breakers: The per-version breakers.
        on_keys: Called with the pool keys that must be ready (readiness follows the live router).

    """

    def __init__(
        self,
        resolve: Callable[[ProdaiConfig], ABRouter],
        routing: ABRouting,
        pool: ModelPool,
        breakers: Breakers,
        on_keys: Callable[[list[str]], None],
        *,
        retire_delay_s: float = RETIRE_DELAY_S,
    ) -> None:
        self.resolve = resolve
        self.routing = routing
        self.pool = pool
        self.breakers = breakers
        self.on_keys = on_keys
        self.retire_delay_s = retire_delay_s
        self._retiring: set[asyncio.Task[None]] = set()

    async def __call__(self, config: ProdaiConfig) -> list[str]:
        """Switch to ``config``'s split; returns what changed.

        Raises:
            ConfigError: Nothing to serve.
            ReloadRejected: A version the new split names does not load.
            ProdaiError: The registry refused an alias.

        """
        changed: list[str] = []
        try:
            router = await asyncio.to_thread(self.resolve, config)
        except ValueError as exc:
            raise ConfigError(f"ab: {exc}") from None
        current = self.routing.current
        if router.describe() != current.describe() or router.user_header != current.user_header:
            await self._load(router)
            old_keys = self.routing.pool_keys()
            self.routing.swap(router)
            new_keys = self.routing.pool_keys()
            self.on_keys(new_keys)
            for key in set(old_keys) - set(new_keys):
                task = asyncio.create_task(self._retire_later(key), name=f"prodai-retire-{key}")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            logger.info("A/B split switched", extra={"ab": router.describe()})
            changed.append("ab")
        if config.ab.breaker != self.breakers.config:
            self.breakers.reconfigure(config.ab.breaker)
            changed.append("ab.breaker")
        return changed

    async def _load(self, router: ABRouter) -> None:
        """Load and warm every version of ``router`` before it may take traffic."""
        keys = self.routing.pool_keys(router)
        live = set(self.routing.pool_keys())
        for key in keys:
            try:
                await self.pool.ensure(key)
            except ProdaiError as exc:
                # Forget what this attempt added, so a corrected file loads it afresh.
                for added in keys:
                    entry = self.pool.get(added)
                    if added not in live and entry is not None and not entry.ready:
                        await self.pool.retire(added)
                raise ReloadRejected(f"ab: {exc.message}") from None

    async def _retire_later(self, key: str) -> None:
        await asyncio.sleep(self.retire_delay_s)
        if key not in self.routing.pool_keys():  # a later reload may have named it again
            await self.pool.retire(key)
            logger.info("model retired", extra={"model": key})

    def cancel(self) -> None:
        """Drop pending retirements (shutdown retires everything anyway)."""
        for task in list(self._retiring):
            task.cancel()


class ConfigReloader:
    """Watches the config file and applies changes (see the module docstring).

    Args:
        path: The config file the server started with; None (embedded defaults): nothing is watched.
        config: The config the server started with (to tell which sections a reload changed).
        metrics: The server's metrics (the reload series are added).
        apply: Applies a valid config and returns what changed (None: only report restart-only changes).
        interval_s: How often the file is looked at.

    """

    def __init__(
        self,
        path: Path | None,
        config: ProdaiConfig,
        metrics: ServerMetrics,
        apply: Callable[[ProdaiConfig], Awaitable[list[str]]] | None,
        *,
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.path = path
        self.config = config
        self.apply = apply
        self.interval_s = interval_s
        self.metrics = ReloadMetrics(metrics)
        self.last = ReloadOutcome(ok=True, at=time.time(), changed=["start"])
        self.metrics.success.set(1)
        self.metrics.timestamp.set(self.last.at)
        self._signature = file_signature(self.path) if self.path is not None else None
        self._lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> dict[str, Any]:
        """For ``/health``: the watched file and the last reload."""
        return {"path": str(self.path) if self.path else None, "last_reload": self.last.to_dict()}

    async def run(self) -> None:
        """Poll the file (and wake on :meth:`request`) until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.path is None:
            return
        while True:
            forced = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
                    forced = True
            self._wake.clear()
            try:
                if forced or file_signature(self.path) != self._signature:
                    await self.reload(reason="signal" if forced else "file changed")
            except Exception:  # the watcher must outlive any surprise; the next change tries again
                logger.exception("config reload crashed")

    def request(self) -> None:
        """Ask for a reload now (from a signal handler or another thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    async def reload(self, *, reason: str = "request") -> ReloadOutcome:
        """Read, validate and apply the file now; the outcome is also kept in :attr:`last`."""
        async with self._lock:
            if self.path is None:
                return self._fail("the server started without a config file: nothing to reload")
            self._signature = file_signature(self.path)
            try:
                # Read and parse off the event loop (bounded: config/bounds.py): predictions never wait on it.
                text = await asyncio.to_thread(read_bounded, self.path, "Config file")
                config = await asyncio.to_thread(
                    functools.partial(parse_config_text, text, source=self.path.name, env=True, empty_ok=False)
                )
                changed = await self.apply(config) if self.apply is not None else []
            except (OSError, UnicodeDecodeError) as exc:
                return self._fail(f"cannot read {self.path}: {exc}")
            except ProdaiError as exc:
                return self._fail(exc.message)
            restart = [s for s in RESTART_SECTIONS if getattr(config, s) != getattr(self.config, s)]
            if config.auth.model_dump(exclude={"keys"}) != self.config.auth.model_dump(exclude={"keys"}):
                restart.append("auth")
            if restart:
                logger.warning(
                    "config sections changed that take effect after a restart",
                    extra={"sections": restart, "path": str(self.path)},
                )
            self.config = config
            self.last = ReloadOutcome(ok=True, at=time.time(), changed=changed)
            self.metrics.success.set(1)
            self.metrics.timestamp.set(self.last.at)
            self.metrics.reloads.labels("success").inc()
            logger.info("config reloaded", extra={"reason": reason, "changed": changed, "path": str(self.path)})
            return self.last

    def _fail(self, error: str) -> ReloadOutcome:
        self.last = ReloadOutcome(ok=False, at=time.time(), error=error)
        self.metrics.success.set(0)
        self.metrics.reloads.labels("failure").inc()
        logger.error("config reload refused; the last good config stays live", extra={"error": error})
        return self.last


def install_sighup(reloader: ConfigReloader) -> Callable[[], None]:
    """Reload on SIGHUP (main thread only); returns a function restoring the previous handler."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return lambda: None
    previous = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        reloader.request()

    signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
