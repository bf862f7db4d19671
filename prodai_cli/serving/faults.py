"""Fault injection for resilience drills: make chosen model versions fail their forward pass, live.

Off unless ``PRODAI_FAULTS_FILE`` names a file when the server starts (then the server logs a warning).
The file lists the versions whose forward passes must raise, one per line (``2`` or ``clf/2``; ``#`` starts
a comment; a missing or empty file injects nothing). The server re-reads it when it changes (looked at, at
most, every 0.2 s), so a drill starts and stops a failure without a restart::

    PRODAI_FAULTS_FILE=/tmp/faults prodai serve
    echo 2 > /tmp/faults        # version 2 now raises InjectedFault on every prediction
    : > /tmp/faults             # and now it does not

An entry may add ``delay=DURATION`` (``2 delay=1500ms``, ``clf/2 delay=2s``): that version's forward passes
then sleep that long and answer normally instead of raising (a slowed server: the latency gate must fail).

Only the forward pass is replaced: loading and warm-up run for real, and a failing prediction takes the
server's real error path (the micro-batcher's model error, ``prodai_model_errors_total{error_type=
"InjectedFault"}``, the version's circuit breaker, the A/B fallback, the HTTP answer). Use it to prove
that a failing version's traffic is served by its fallback, in staging or in tests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prodai_cli.errors import ProdaiError
from prodai_cli.serving.pool import ModelPool
from prodai_cli.slo import parse_duration

if TYPE_CHECKING:
    from prodai_cli.config import ServingConfig, Settings
    from prodai_cli.runtime import ModelRuntime
    from prodai_cli.serving.metrics import ServerMetrics

logger = logging.getLogger("prodai.serving")

ENV_FAULTS_FILE = "PRODAI_FAULTS_FILE"
CHECK_INTERVAL_S = 0.2


class InjectedFault(RuntimeError):
    """The forward pass of a version listed in the faults file."""


class FaultPlan:
    """Which versions fail right now, from the faults file (re-read when it changes)."""

    def __init__(self, path: Path, clock: Any = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._signature: tuple[int, int, int] | None = None
        self._failing: frozenset[str] = frozenset()
        self._slow: dict[str, float] = {}

    def _read(self) -> tuple[frozenset[str], dict[str, float]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return frozenset(), {}
        failing: set[str] = set()
        slow: dict[str, float] = {}
        for line in text.splitlines():
            entry, _, option = line.split("#", 1)[0].strip().partition(" ")
            if not entry:
                continue
            option = option.strip()
            if option.startswith("delay="):
                try:
                    slow[entry] = parse_duration(option.removeprefix("delay="), what="delay", allow_zero=True)
                except ProdaiError:
                    logger.warning("fault injection: unreadable option", extra={"line": line})
            else:
                failing.add(entry)
        return frozenset(failing), slow

    def failing(self) -> frozenset[str]:
        """The entries of the file (``2``, ``clf/2``), re-read if it changed since the last look."""
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + CHECK_INTERVAL_S
                try:
                    st = os.stat(self.path)
                    signature: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
                except OSError:
                    signature = None
                if signature != self._signature:
                    self._signature = signature
                    failing, slow = self._read()
                    if failing != self._failing or slow != self._slow:
                        logger.warning(
                            "fault injection changed", extra={"failing_versions": sorted(failing), "slow": slow}
                        )
                    self._failing, self._slow = failing, slow
            return self._failing

    def delay(self, name: str, version: str) -> float:
        """Seconds a forward pass of the version sleeps (``VERSION delay=1500ms`` entries), else 0."""
        self.failing()  # re-read when due
        return self._slow.get(version, self._slow.get(f"{name}/{version}", 0.0))

    def fails(self, name: str, version: str) -> bool:
        """True when the version (by number or ``name/number``) is listed without a delay."""
        failing = self.failing()
        return bool(failing) and (version in failing or f"{name}/{version}" in failing)


class FaultInjectingRuntime:
    """A :class:`~prodai_cli.runtime.ModelRuntime` whose forward passes raise while the plan lists its version."""

    def __init__(self, runtime: ModelRuntime, plan: FaultPlan) -> None:
        self._runtime = runtime
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def _check(self) -> None:
        delay = self._plan.delay(self._runtime.name, self._runtime.version)
        if delay:
            time.sleep(delay)  # on the compute thread, like a slow model
        if self._plan.fails(self._runtime.name, self._runtime.version):
            raise InjectedFault(f"fault injected into version {self._runtime.version} ({self._plan.path})")

    def predict(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """The runtime's ``predict``, unless a fault is injected."""
        self._check()
        return self._runtime.predict(*args, **kwargs)

    def predict_encoded(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """The runtime's ``predict_encoded``, unless a fault is injected."""
        self._check()
        return self._runtime.predict_encoded(*args, **kwargs)


class FaultInjectingPool(ModelPool):
    """A :class:`ModelPool` whose loaded (and warmed) runtimes obey a :class:`FaultPlan`."""

    def __init__(self, settings: Settings, serving: ServingConfig, metrics: ServerMetrics, plan: FaultPlan) -> None:
        super().__init__(settings, serving, metrics)
        self.plan = plan

    def _load_runtime(self, key: str) -> ModelRuntime:
        runtime = super()._load_runtime(key)  # loads and warms for real
        return cast("ModelRuntime", FaultInjectingRuntime(runtime, self.plan))


def fault_plan_from_env(environ: dict[str, str] | None = None) -> FaultPlan | None:
    """The plan ``PRODAI_FAULTS_FILE`` names, or None (the normal case: no injection)."""
    value = (environ if environ is not None else os.environ).get(ENV_FAULTS_FILE)
    if not value:
        return None
    return FaultPlan(Path(value).expanduser().resolve())
