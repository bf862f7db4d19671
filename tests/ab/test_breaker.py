"""Circuit breaker (with a fake clock) and the retry helper."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from prodai_cli.config import BreakerConfig
from prodai_cli.serving.ab.breaker import (
    Breakers,
    BreakerState,
    CircuitBreaker,
    RetryableError,
    RetryPolicy,
    is_retryable,
    retry_async,
    retry_call,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _breaker(**overrides: float) -> tuple[CircuitBreaker, FakeClock]:
    settings = {"consecutive_failures": 3, "failure_rate": 0.5, "window": 10, "min_calls": 6, "reset_timeout_s": 5.0}
    settings.update(overrides)
    clock = FakeClock()
    return CircuitBreaker(BreakerConfig.model_validate(settings), clock=clock), clock


def _call(breaker: CircuitBreaker, ok: bool) -> bool:
    """One call through the breaker; False when the breaker refused it."""
    permit = breaker.acquire()
    if permit is None:
        return False
    if ok:
        permit.success()
    else:
        permit.failure()
    return True


def test_opens_after_consecutive_failures() -> None:
    breaker, _ = _breaker()
    assert _call(breaker, False) and _call(breaker, False)
    assert breaker.state is BreakerState.CLOSED
    assert _call(breaker, False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.acquire() is None
    assert breaker.opened_count == 1


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = _breaker(consecutive_failures=3, failure_rate=1.0, min_calls=10)
    for _ in range(4):
        _call(breaker, False)
        _call(breaker, False)
        _call(breaker, True)
    assert breaker.state is BreakerState.CLOSED


def test_opens_on_failure_rate_over_the_window_after_min_calls() -> None:
    # Never 3 failures in a row, but 50% of the window fails.
    breaker, _ = _breaker(consecutive_failures=3, failure_rate=0.5, window=10, min_calls=6)
    outcomes = [False, True, False, True, False]  # 3/5 failed, but fewer than min_calls
    for ok in outcomes:
        _call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED
    _call(breaker, True)  # 3/6 = 50%: a success does not open it...
    assert breaker.state is BreakerState.CLOSED
    _call(breaker, False)  # ...the next failure is judged: 4/7 >= 50%
    assert breaker.state is BreakerState.OPEN


def test_failure_rate_below_threshold_stays_closed_over_a_long_run() -> None:
    breaker, _ = _breaker(consecutive_failures=5, failure_rate=0.5, window=10, min_calls=6)
    for i in range(200):
        _call(breaker, i % 3 != 0)  # one failure in three
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["window_calls"] == 10  # the window slides, it does not grow


def test_half_open_probe_success_closes() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        _call(breaker, False)
    clock.advance(4.9)
    assert breaker.state is BreakerState.OPEN and breaker.acquire() is None
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe is not None and probe.probe
    assert breaker.acquire() is None  # one probe at a time
    probe.success()
    assert breaker.state is BreakerState.CLOSED
    permit = breaker.acquire()
    assert permit is not None and not permit.probe


def test_half_open_probe_failure_reopens_for_another_timeout() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        _call(breaker, False)
    clock.advance(5)
    probe = breaker.acquire()
    assert probe is not None
    probe.failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_count == 2
    clock.advance(4)
    assert breaker.acquire() is None
    clock.advance(1)
    assert breaker.acquire() is not None


def test_recovers_once_the_failure_stops() -> None:
    breaker, clock = _breaker()
    served = 0
    for step in range(100):
        clock.advance(0.5)
        healthy = step >= 40  # fails for 20 s, then recovers
        served += _call(breaker, healthy)
    assert breaker.state is BreakerState.CLOSED
    # While failing, the breaker let through only the first failures and one probe per timeout.
    assert served < 100 - 25


def test_released_probe_frees_the_slot_and_stale_probe_is_replaced() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        _call(breaker, False)
    clock.advance(5)
    probe = breaker.acquire()
    assert probe is not None
    probe.release()  # e.g. the client sent bad input: says nothing about the version
    second = breaker.acquire()
    assert second is not None and second.probe
    # This probe never reports back: after another timeout a new probe may go.
    assert breaker.acquire() is None
    clock.advance(5)
    third = breaker.acquire()
    assert third is not None and third.probe
    third.success()
    assert breaker.state is BreakerState.CLOSED


def test_late_outcomes_from_before_a_state_change_are_ignored() -> None:
    breaker, clock = _breaker()
    slow = breaker.acquire()  # admitted while closed, answers much later
    assert slow is not None
    for _ in range(3):
        _call(breaker, False)
    clock.advance(5)
    assert breaker.state is BreakerState.HALF_OPEN
    slow.success()  # must not close the breaker: it is not the probe
    assert breaker.state is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe is not None
    probe.success()
    stale_failures = [breaker.acquire() for _ in range(3)]
    for _ in range(3):
        _call(breaker, False)
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    for permit in stale_failures:
        assert permit is not None
        permit.failure()
    assert breaker.state is BreakerState.HALF_OPEN


def test_thread_safety_counts_every_outcome_once() -> None:
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=10**6, failure_rate=1.0, window=1000, min_calls=1000))
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for i in range(2000):
            permit = breaker.acquire()
            assert permit is not None
            permit.success() if i % 2 else permit.failure()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    snapshot = breaker.snapshot()
    assert snapshot["window_calls"] == 1000
    assert snapshot["state"] == "closed"
    assert 0.4 < snapshot["window_failure_rate"] < 0.6


def test_breakers_are_per_version_and_reconfigure_keeps_or_resets_state() -> None:
    clock = FakeClock()
    config = BreakerConfig(consecutive_failures=2, window=10, min_calls=10, reset_timeout_s=5)
    board = Breakers(config, clock=clock)
    for _ in range(2):
        permit = board.acquire(1)
        assert permit is not None
        permit.failure()
    assert board.is_open(1) and not board.is_open(2)
    assert board.acquire(1) is None and board.acquire(2) is not None
    assert board.snapshot()[1]["state"] == "open"
    board.reconfigure(BreakerConfig(consecutive_failures=2, window=10, min_calls=10, reset_timeout_s=5))
    assert board.is_open(1)  # same thresholds: state kept across a reload
    board.reconfigure(BreakerConfig(consecutive_failures=4, window=10, min_calls=10, reset_timeout_s=5))
    assert not board.is_open(1)


# ------------------------------------------------------------------------------------------- retries


class Flaky(RetryableError):
    pass


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retryable = True  # marked retryable, but a 4xx must win


def test_is_retryable() -> None:
    assert is_retryable(Flaky())
    assert not is_retryable(ValueError("bad input"))
    assert not is_retryable(HttpError(422))
    assert not is_retryable(HttpError(429))
    assert is_retryable(HttpError(503))

    class Response:
        status_code = 404

    class ClientError(Exception):
        retryable = True
        response = Response()

    assert not is_retryable(ClientError())


def test_retry_call_retries_retryable_errors_then_succeeds() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Flaky()
        return "ok"

    assert retry_call(fn, RetryPolicy(attempts=3), sleep=sleeps.append, rng=random.Random(0)) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("error", [ValueError("bad input"), HttpError(400), HttpError(404)])
def test_retry_call_never_retries_non_retryable_errors(error: Exception) -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def fn() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        retry_call(fn, RetryPolicy(attempts=5), sleep=sleeps.append)
    assert calls == [1] and sleeps == []


def test_retry_call_gives_up_after_attempts_and_raises_the_last_error() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise Flaky(f"attempt {len(calls)}")

    with pytest.raises(Flaky, match="attempt 4"):
        retry_call(fn, RetryPolicy(attempts=4), sleep=lambda _s: None)
    assert len(calls) == 4


def test_backoff_grows_is_jittered_and_capped() -> None:
    policy = RetryPolicy(attempts=12, base_delay_s=0.1, max_delay_s=1.0, multiplier=2.0)
    rng = random.Random(1)
    for retry in range(11):
        cap = min(1.0, 0.1 * 2**retry)
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 150  # jittered, not a fixed schedule
    assert max(policy.delay(50, rng) for _ in range(100)) <= 1.0
    sleeps: list[float] = []

    def always() -> None:
        raise Flaky()

    with pytest.raises(Flaky):
        retry_call(always, policy, sleep=sleeps.append, rng=rng)
    assert len(sleeps) == 11 and max(sleeps) <= 1.0 and sleeps[0] <= 0.1
    assert sum(sleeps[-4:]) >= 2.0  # the late pauses sit near the cap


def test_retry_async() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    async def fn() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise Flaky()
        return 42

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    assert asyncio.run(retry_async(fn, RetryPolicy(attempts=2), sleep=fake_sleep)) == 42
    assert len(sleeps) == 1

    async def client_error() -> int:
        raise HttpError(400)

    with pytest.raises(HttpError):
        asyncio.run(retry_async(client_error, RetryPolicy(attempts=3), sleep=fake_sleep))
    assert len(sleeps) == 1


def test_retry_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)
