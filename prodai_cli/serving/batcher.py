"""Dynamic micro-batching: requests that arrive while the model is busy share its next forward pass.

One :class:`MicroBatcher` per loaded model version queues that version's requests; its rounds run on the
process's one compute thread (:func:`prodai_cli.runtime.compute.compute_thread`, shared by every model so
torch keeps one OpenMP team; inference never runs on the event loop, so health checks and metrics answer
while the model is busy). A round is: optionally wait ``max_wait_ms`` for the batch to fill, take what is
queued (up to ``max_batch_size`` texts), tokenize it once, cut it into forward passes by length
(:func:`plan_forward_passes`: within the padded-token budget, splitting where the padding saved outweighs
another pass), run them, hand each request its outputs as soon as its last text is done. A request that
arrives while no round is scheduled schedules one; a round that leaves work queued schedules the next,
behind any other model's round. With no timer by default an idle server answers a lone request at once,
and a busy one batches exactly the requests that had to wait anyway.

The queue is bounded in texts: a request that does not fit gets :class:`QueueFull` (503 + Retry-After)
instead of waiting behind a backlog it cannot beat. A request that times out or whose client goes away is
skipped if the worker has not taken it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prodai_cli.runtime.compute import compute_thread
from prodai_cli.serving.errors import InferenceTimeout, ModelError, ServiceUnavailable

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from prodai_cli.runtime import ModelRuntime
    from prodai_cli.serving.metrics import ServerMetrics

logger = logging.getLogger("prodai.serving.batcher")

# The fixed cost of one forward pass, in padded tokens' worth of compute: what one more pass must save in
# padding to be worth it. On a CPU a MiniLM-sized encoder spends ~5 ms per pass before the first token
# (~40 tokens' worth), but a pass also pays the round's other work and each of its ~60 OpenMP barriers, and
# smaller GEMMs run slower per token: priced at 128 rather than 32, passes at 64 clients held ~15 texts
# instead of ~8.4 and the server answered 1.02-1.08x the requests with a 5-11% lower p99 (three quiet runs
# of bench/serve_throughput.py against 32, issue 16), and the same req/s with a 16-21% lower p99 at 8 and 32
# clients (one run). On an accelerator padding is nearly free next to kernel launches.
CPU_PASS_OVERHEAD_TOKENS = 128
# Set to a dict by a caller that wants a request's timings (the tracing spans): ``submit`` fills in
# ``enqueued`` and ``started`` (time.monotonic of queueing and of its round's start) and ``texts`` (in the round).
batch_timing: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "prodai_batch_timing", default=None
)
ACCELERATOR_PASS_OVERHEAD_TOKENS = 4096


def plan_forward_passes(
    lengths: list[int], *, max_batch_tokens: int, max_batch_size: int, overhead_tokens: int
) -> list[list[int]]:
    """Cut one round of queued texts into forward passes, cheapest first.

    Concurrent requests have mixed lengths; one pass over all of them pads every text to the longest. Texts
    are sorted by length and cut where the padding saved beats the cost of another pass (dynamic
    programming over cut points, O(n * max_batch_size)), under the token budget (``len(pass) *
    longest <= max_batch_tokens``, a single text always fits) and the size cap. Passes come shortest texts
    first, so most requests are answered after the first pass.

    Args:
        lengths: Tokenized length of each text.
        max_batch_tokens: Padded-token budget of one pass.
        max_batch_size: Most texts per pass.
        overhead_tokens: Fixed cost of a pass, in padded tokens.

    Returns:
        Lists of indices into ``lengths``; together they hold every index once.

    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    count = len(order)
    best = [0.0] + [float("inf")] * count
    start_of = [0] * (count + 1)
    for end in range(1, count + 1):
        longest = max(1, lengths[order[end - 1]])  # ascending order: the last text is the longest
        for start in range(end, 0, -1):
            size = end - start + 1
            if size > max_batch_size or (size > 1 and size * longest > max_batch_tokens):
                break
            cost = best[start - 1] + overhead_tokens + size * longest
            if cost < best[end]:
                best[end] = cost
                start_of[end] = start - 1
    passes: list[list[int]] = []
    end = count
    while end > 0:
        begin = start_of[end]
        passes.append(order[begin:end])
        end = begin
    passes.reverse()
    return passes


class QueueFull(ServiceUnavailable):
    """503: the batcher's queue holds ``max_queue`` texts already."""

    code = "queue_full"


class BatcherStopped(ServiceUnavailable):
    """503: the model is being retired or the server is shutting down."""

    code = "model_stopped"


@dataclass(eq=False)
class _Request:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[dict[str, Any]]]
    enqueued: float = field(default_factory=time.monotonic)
    abandoned: bool = False
    started: float = 0.0  # when its round began (tracing)
    round_texts: int = 0


@dataclass
class BatcherStats:
    """Counters of one batcher (also exported as metrics)."""

    batches: int = 0
    texts: int = 0
    max_batch: int = 0
    errors: int = 0


class MicroBatcher:
    """Gathers concurrent requests for one model version into token-budgeted forward passes.

    Args:
        runtime: The loaded model (``encode`` and ``predict_encoded`` are used; both thread-safe).
        max_batch_tokens: Padded-token budget of one forward pass.
        max_batch_size: Most texts taken from the queue per round (and per forward pass).
        max_wait_ms: Extra time to let a batch fill after the first request arrives; 0 takes what is queued.
        max_queue: Most texts waiting; more get :class:`QueueFull`.
        metrics: Where batch sizes, queue depth and model errors are recorded (optional).
        compute: A one-thread executor that runs the rounds (default: the process's compute thread).

    """

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        metrics: ServerMetrics | None = None,
        compute: Executor | None = None,
    ) -> None:
        self.runtime = runtime
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.stats = BatcherStats()
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._started = False
        self._scheduled = False  # a round is queued on (or running on) the compute thread
        self._compute = compute if compute is not None else compute_thread()

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start taking requests off the queue (idempotent); until then they wait."""
        with self._cond:
            self._started = True
            self._schedule()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work and finish what is queued (up to ``timeout`` seconds). Not from the compute thread.

        Requests still queued when the timeout passes are failed with :class:`BatcherStopped`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # a round waiting for its batch to fill goes at once
            while self._scheduled:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            leftovers = list(self._queue)
            self._queue.clear()
            self._set_queued(0)
        for request in leftovers:
            _deliver(request, error=BatcherStopped("The model is shutting down"))

    @property
    def idle(self) -> bool:
        """Nothing queued and no round queued on or running on the compute thread (read without the lock: a hint)."""
        return not self._scheduled and self._queued_texts == 0

    @property
    def queued_texts(self) -> int:
        """Texts waiting for the model right now."""
        return self._queued_texts

    # ------------------------------------------------------------------------------------ submitting
    async def submit(self, texts: list[str], *, timeout: float) -> list[dict[str, Any]]:
        """Queue texts for the model and wait for their outputs (in input order).

        Args:
            texts: The inputs of one request.
            timeout: Seconds to wait in all (queue + inference).

        Raises:
            QueueFull: The queue has no room for these texts.
            BatcherStopped: The batcher is stopping.
            InferenceTimeout: No answer within ``timeout``.
            ModelError: The model raised on these texts.

        """
        loop = asyncio.get_running_loop()
        request = _Request(texts=texts, loop=loop, future=loop.create_future())
        with self._cond:
            if self._stopping:
                raise BatcherStopped("The model is shutting down")
            if self._queued_texts + len(texts) > self.max_queue:
                raise QueueFull(f"The server is busy ({self._queued_texts} texts queued); retry shortly")
            self._queue.append(request)
            self._set_queued(self._queued_texts + len(texts))
            self._cond.notify()  # a round waiting for its batch to fill (max_wait_ms) counts this one
            self._schedule()
        # A timer on the request's own future rather than asyncio.wait_for: no extra future and no extra
        # loop turn between the worker's answer and this coroutine (it adds up at one client).
        timer = loop.call_later(timeout, _expire, request.future, timeout)
        try:
            outputs = await request.future
            timing = batch_timing.get()
            if timing is not None:
                timing.update(enqueued=request.enqueued, started=request.started, texts=request.round_texts)
            return outputs
        except InferenceTimeout:
            if self.metrics is not None:
                self.metrics.model_errors.labels(self.runtime.version, "timeout").inc()
            raise
        finally:
            timer.cancel()
            # Timed out or the client went away: the worker skips it if it has not started on it.
            request.abandoned = True

    # ------------------------------------------------------------------------------------ worker
    def _set_queued(self, value: int) -> None:
        delta = value - self._queued_texts
        self._queued_texts = value
        if self.metrics is not None and delta:
            self.metrics.queue_depth.inc(delta)

    def _schedule(self) -> None:
        """Queue a round on the compute thread if there is work and none is queued. Call with the lock held."""
        if self._started and not self._scheduled and self._queue:
            self._scheduled = True
            self._compute.submit(self._round)

    def _take(self) -> list[_Request]:
        """The requests of this round (empty when all that was queued had been abandoned)."""
        with self._cond:
            if self._queue and self.max_wait_s > 0 and not self._stopping:
                deadline = self._queue[0].enqueued + self.max_wait_s
                while self._queued_texts < self.max_batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            taken: list[_Request] = []
            count = 0
            while self._queue:
                head = self._queue[0]
                if taken and count + len(head.texts) > self.max_batch_size:
                    break
                self._queue.popleft()
                self._set_queued(self._queued_texts - len(head.texts))
                if head.abandoned:
                    continue
                taken.append(head)
                count += len(head.texts)
            return taken

    def _round(self) -> None:
        """One round on the compute thread; schedules the next while work is queued."""
        taken: list[_Request] = []
        try:
            taken = self._take()
            if taken:
                self._process(taken)
        except BaseException as exc:  # never leave requests waiting on a round that failed
            logger.exception("batcher round failed", extra={"model_version": self.runtime.version})
            for request in taken:
                _deliver(request, error=self._model_error(exc))
        finally:
            with self._cond:
                self._scheduled = False
                self._schedule()  # behind any other model's round already queued
                self._cond.notify_all()  # stop() waits for the last round

    def _process(self, taken: list[_Request]) -> None:
        texts = [text for request in taken for text in request.texts]
        started = time.monotonic()
        for request in taken:
            request.started, request.round_texts = started, len(texts)
        # Which request (and position in it) each text belongs to.
        owners = [(r, p) for r, request in enumerate(taken) for p in range(len(request.texts))]
        outputs: list[list[dict[str, Any] | None]] = [[None] * len(request.texts) for request in taken]
        failed: set[int] = set()
        try:
            encoded = self.runtime.encode(texts)
        except Exception:
            # One undecodable input must not fail its neighbours: retry each request on its own.
            self._isolate(taken, range(len(taken)), outputs)
            return
        overhead = CPU_PASS_OVERHEAD_TOKENS if self.runtime.device == "cpu" else ACCELERATOR_PASS_OVERHEAD_TOKENS
        passes = plan_forward_passes(
            encoded.lengths,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            overhead_tokens=overhead,
        )
        for batch in passes:
            involved = {owners[i][0] for i in batch}
            if involved <= failed:
                continue
            try:
                results = self.runtime.predict_encoded(encoded.select(batch), max_batch_size=len(batch))
            except Exception:
                failed |= involved
                continue
            self._record_batch(len(batch))
            for index, result in zip(batch, results, strict=True):
                r, p = owners[index]
                outputs[r][p] = result
            for r in involved - failed:
                if all(o is not None for o in outputs[r]):
                    _deliver(taken[r], result=outputs[r])  # type: ignore[arg-type]
        if failed:
            self._isolate(taken, sorted(failed), outputs)

    def _isolate(self, taken: list[_Request], indices: Any, outputs: list[list[dict[str, Any] | None]]) -> None:
        """Run the given requests one by one so only the request whose input breaks the model fails."""
        for r in indices:
            request = taken[r]
            try:
                result = self.runtime.predict(request.texts, max_batch_tokens=self.max_batch_tokens)
            except Exception as exc:
                logger.error(
                    "model error",
                    extra={"model_version": self.runtime.version, "error_type": type(exc).__name__},
                )
                _deliver(request, error=self._model_error(exc))
                continue
            self._record_batch(len(request.texts))
            outputs[r] = list(result)
            _deliver(request, result=result)

    def _record_batch(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.texts += size
        self.stats.max_batch = max(self.stats.max_batch, size)
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)

    def _model_error(self, exc: BaseException) -> ModelError:
        self.stats.errors += 1
        error_type = type(exc).__name__
        if self.metrics is not None:
            self.metrics.model_errors.labels(self.runtime.version, error_type).inc()
        return ModelError(self.runtime.version, error_type, f"{error_type}: {exc}")


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    """The request's deadline passed: fail its future (the worker's late answer is then dropped)."""
    if not future.done():
        future.set_exception(InferenceTimeout(f"The prediction did not finish within {timeout:g} s"))


def _deliver(
    request: _Request, *, result: list[dict[str, Any]] | None = None, error: BaseException | None = None
) -> None:
    """Complete a request's future from the worker thread (a no-op if it was already cancelled)."""

    def settle() -> None:
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(result if result is not None else [])

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        request.loop.call_soon_threadsafe(settle)
