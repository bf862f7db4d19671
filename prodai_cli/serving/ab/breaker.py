"""Per-version circuit breakers and a retry helper with capped, jittered exponential backoff.

A breaker stops sending traffic to a model version that keeps failing, so its requests go to a fallback
instead of failing too::

    CLOSED --(N failures in a row, or failure rate >= threshold over the window)--> OPEN
    OPEN   --(reset_timeout_s elapsed; the next request is let through as a probe)--> HALF_OPEN
    HALF_OPEN --(probe succeeds)--> CLOSED        HALF_OPEN --(probe fails)--> OPEN

Callers ask for a :class:`Permit` before a call and report its outcome on the permit. The permit carries the
breaker's generation, so a slow call admitted before the breaker opened cannot close it later by
succeeding. Every method is guarded by a lock and never blocks or awaits, so one breaker serves threads
and an event loop alike. Time comes from an injectable clock (tests pass a fake one).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prodai_cli.config import BreakerConfig

T = TypeVar("T")
Clock = Callable[[], float]


class BreakerState(enum.StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Permit:
    """Leave to make one call through a breaker; report its outcome exactly once.

    Attributes:
        breaker: The breaker that granted it.
        generation: The breaker's generation when granted; outcomes from older generations are ignored.
        probe: True when this call is the half-open probe that decides whether the breaker closes.

    """

    breaker: CircuitBreaker
    generation: int
    probe: bool

    def success(self) -> None:
        """The call worked."""
        self.breaker._record(self, ok=True)

    def failure(self) -> None:
        """The call failed in a way that says the version is unhealthy (not a client's bad input)."""
        self.breaker._record(self, ok=False)

    def release(self) -> None:
        """The call ended without telling anything about the version (cancelled, bad input): frees a probe."""
        self.breaker._release(self)


class CircuitBreaker:
    """One version's breaker.

    Args:
        config: Thresholds (``ab.breaker`` in prodai.yaml).
        clock: Monotonic seconds; ``time.monotonic`` unless a test injects a fake.
        name: Used in ``repr`` and by callers' logs.

    """

    def __init__(self, config: BreakerConfig | None = None, *, clock: Clock = time.monotonic, name: str = "") -> None:
        self.config = config if config is not None else BreakerConfig()
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._window: collections.deque[bool] = collections.deque(maxlen=self.config.window)
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.opened_count = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.state.value})"

    # ------------------------------------------------------------------------------------ queries
    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose reset timeout has passed reports HALF_OPEN."""
        with self._lock:
            self._tick()
            return self._state

    @property
    def is_open(self) -> bool:
        """True while the breaker refuses every call (before the reset timeout)."""
        return self.state is BreakerState.OPEN

    def snapshot(self) -> dict[str, Any]:
        """State, counters and the failure rate over the window, for /health and metrics."""
        with self._lock:
            self._tick()
            window = list(self._window)
            return {
                "state": self._state.value,
                "consecutive_failures": self._consecutive,
                "window_calls": len(window),
                "window_failure_rate": (window.count(False) / len(window)) if window else 0.0,
                "opened_count": self.opened_count,
            }

    # ------------------------------------------------------------------------------------ calls
    def acquire(self) -> Permit | None:
        """Leave to make a call, or None while the breaker is open (send the request to a fallback).

        In HALF_OPEN exactly one probe is admitted at a time; a probe that never reports back is replaced
        after another ``reset_timeout_s``.
        """
        with self._lock:
            self._tick()
            if self._state is BreakerState.CLOSED:
                return Permit(self, self._generation, probe=False)
            if self._state is BreakerState.HALF_OPEN:
                now = self._clock()
                stale = self._probe_started is not None and now - self._probe_started >= self.config.reset_timeout_s
                if self._probe_started is None or stale:
                    self._probe_started = now
                    return Permit(self, self._generation, probe=True)
            return None

    def _tick(self) -> None:
        # Called with the lock held: an open breaker becomes half-open once its timeout has passed.
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.config.reset_timeout_s:
            self._state = BreakerState.HALF_OPEN
            self._generation += 1
            self._probe_started = None

    def _record(self, permit: Permit, *, ok: bool) -> None:
        with self._lock:
            self._tick()
            if permit.generation != self._generation:
                return  # admitted before the last state change: says nothing about the version now
            if self._state is BreakerState.HALF_OPEN:
                if not permit.probe:
                    return
                if ok:
                    self._close()
                else:
                    self._open()
                return
            if self._state is not BreakerState.CLOSED:
                return
            self._window.append(ok)
            if ok:
                self._consecutive = 0
                return
            self._consecutive += 1
            failures = self._window.count(False)
            rate_tripped = (
                len(self._window) >= self.config.min_calls and failures / len(self._window) >= self.config.failure_rate
            )
            if self._consecutive >= self.config.consecutive_failures or rate_tripped:
                self._open()

    def _release(self, permit: Permit) -> None:
        with self._lock:
            if permit.probe and permit.generation == self._generation and self._state is BreakerState.HALF_OPEN:
                self._probe_started = None

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._generation += 1
        self._opened_at = self._clock()
        self._probe_started = None
        self._window.clear()
        self._consecutive = 0
        self.opened_count += 1

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._generation += 1
        self._probe_started = None
        self._window.clear()
        self._consecutive = 0


class Breakers:
    """One breaker per model version, created on first use.

    Args:
        config: Thresholds shared by every breaker.
        clock: Injected into every breaker.

    """

    def __init__(self, config: BreakerConfig | None = None, *, clock: Clock = time.monotonic) -> None:
        self.config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[int, CircuitBreaker] = {}

    def get(self, version: int) -> CircuitBreaker:
        """The breaker of ``version``."""
        with self._lock:
            breaker = self._breakers.get(version)
            if breaker is None:
                breaker = CircuitBreaker(self.config, clock=self._clock, name=f"v{version}")
                self._breakers[version] = breaker
            return breaker

    def acquire(self, version: int) -> Permit | None:
        """``get(version).acquire()``: the shape :meth:`ABRouter.fallback_for` expects."""
        return self.get(version).acquire()

    def is_open(self, version: int) -> bool:
        """True while ``version``'s breaker refuses calls."""
        return self.get(version).is_open

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """Every breaker's :meth:`CircuitBreaker.snapshot`, by version."""
        with self._lock:
            breakers = dict(self._breakers)
        return {version: breaker.snapshot() for version, breaker in sorted(breakers.items())}

    def reconfigure(self, config: BreakerConfig) -> None:
        """Adopt new thresholds after a config reload.

        Unchanged thresholds keep every breaker's state (an open breaker stays open across a weights
        change); changed thresholds start every breaker afresh, closed.
        """
        with self._lock:
            if config == self.config:
                return
            self.config = config
            self._breakers = {}


# --------------------------------------------------------------------------------------------- retries


class RetryableError(Exception):
    """Base for errors a second attempt may cure (a transient device or resource failure)."""

    retryable = True


def is_retryable(exc: BaseException) -> bool:
    """True for errors marked retryable; never for a client's error (anything carrying a 4xx status).

    An exception is marked by deriving from :class:`RetryableError` or by a true ``retryable`` attribute.
    The status is read from ``exc.status_code`` or ``exc.response.status_code`` (HTTPException, httpx).
    """
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return False
    return getattr(exc, "retryable", False) is True


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    Attempt ``n`` (0-based) that fails waits a random time in ``[cap_n / 2, cap_n]`` where
    ``cap_n = min(max_delay_s, base_delay_s * multiplier ** n)``: the jitter spreads retries of many clients
    apart, the floor keeps a real pause, the cap bounds the wait.

    Attributes:
        attempts: Total tries, the first included (1 disables retrying).
        base_delay_s: Cap of the first pause.
        max_delay_s: Cap of every pause.
        multiplier: Growth of the cap per attempt.

    """

    attempts: int = 3
    base_delay_s: float = 0.05
    max_delay_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The pause before retry number ``retry`` (0 for the pause after the first failure)."""
        cap = min(self.max_delay_s, self.base_delay_s * self.multiplier**retry)
        uniform = rng.uniform if rng is not None else random.uniform
        return uniform(cap / 2, cap)


def retry_call(
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn``, retrying errors ``retryable`` accepts with backoff; re-raise anything else at once.

    Raises:
        Exception: ``fn``'s error when it is not retryable or the attempts are used up.

    """
    policy = policy or RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= policy.attempts or not retryable(exc):
                raise
            sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")  # pragma: no cover


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None = None,
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """The awaitable form of :func:`retry_call` (``fn`` makes a fresh awaitable per attempt)."""
    policy = policy or RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            return await fn()
        except Exception as exc:
            if attempt + 1 >= policy.attempts or not retryable(exc):
                raise
            await sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")  # pragma: no cover
