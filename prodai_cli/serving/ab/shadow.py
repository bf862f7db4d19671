"""Shadow traffic: a sampled copy of answered requests runs on another version, and the answers are compared.

The pipeline calls :class:`Shadowing` (its ``shadow`` seam) with a request's texts and the answer the client
gets, once that answer is computed. A copy is then started as its own task on the shadow version's
micro-batcher; the client's response never waits for it. A copy's answer is never returned and never
cached, and it never passes the guards, so it costs the client no rate-limit tokens.

Shadow work is the first thing a busy server gives up. A copy waits (without a task of its own) until the
answering version's batcher is idle (nothing queued, no round running), so a shadow round only takes the
compute thread in a gap between client rounds, and the copies that waited together run as one round. A copy
is dropped and counted when:

- ``busy``: no such gap came within :data:`IDLE_WAIT_S` (the server is saturated), or the answering version
  already holds a full round of queued texts when the copy is made;
- ``queue_full``: the shadow already has ``ab.shadow.max_pending`` texts waiting or in flight;
- ``not_ready``: the shadow version is not loaded (yet), or is being retired;
- ``timeout`` / ``stopping``: the shadow's batcher was full, too slow or shutting down.

Each compared text adds 1 to ``prodai_shadow_compared_total{variant,shadow}`` and its agreement to
``prodai_shadow_agreement_total{variant,shadow}``: 1 or 0 for a classification (same label or not), the
cosine similarity of the two vectors for an embedding. Agreement over any window is the ratio of the two
counters' increases (``prodai rollout --slo "agreement > 0.9"`` and ``ab-show`` read it that way). Latency of
each side of a copied request: ``prodai_shadow_latency_seconds{side="primary"|"shadow",shadow}``; failures of
the shadow: ``prodai_shadow_errors_total{shadow}``; drops: ``prodai_shadow_dropped_total{shadow,reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prodai_cli.serving.batcher import BatcherStopped, QueueFull
from prodai_cli.serving.errors import InferenceTimeout, ModelError, ServingError
from prodai_cli.serving.pool import model_key

if TYPE_CHECKING:
    from prodai_cli.serving.ab.router import Shadow
    from prodai_cli.serving.ab.routing import ABRouting
    from prodai_cli.serving.batcher import MicroBatcher
    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.pipeline import Inference, RequestContext, Route
    from prodai_cli.serving.pool import ModelPool

logger = logging.getLogger("prodai.serving.shadow")

COMPARED_METRIC = "prodai_shadow_compared_total"
AGREEMENT_METRIC = "prodai_shadow_agreement_total"
LATENCY_METRIC = "prodai_shadow_latency_seconds"
ERRORS_METRIC = "prodai_shadow_errors_total"
DROPPED_METRIC = "prodai_shadow_dropped_total"
# How long a copy waits for a gap in the answering version's queue before it is dropped as `busy`.
IDLE_WAIT_S = 1.0
# How often the waiting copies look for that gap (one task for all of them).
IDLE_POLL_S = 0.003


@dataclass
class _Copy:
    shadow: Shadow
    texts: list[str]
    inference: Inference
    primary_s: float
    primary: MicroBatcher | None
    made: float


def agreement(primary: dict[str, Any], shadow: dict[str, Any]) -> float | None:
    """How far the shadow's answer for one text agrees with the primary's: 1/0 by label, else cosine.

    None when the two cannot be compared (different tasks, a missing field, a zero vector).
    """
    if "label" in primary and "label" in shadow:
        return 1.0 if primary["label"] == shadow["label"] else 0.0
    left, right = primary.get("embedding"), shadow.get("embedding")
    if not isinstance(left, list) or not isinstance(right, list) or len(left) != len(right) or not left:
        return None
    dot = sum(float(a) * float(b) for a, b in zip(left, right, strict=True))
    norms = math.sqrt(sum(float(a) ** 2 for a in left)) * math.sqrt(sum(float(b) ** 2 for b in right))
    return dot / norms if norms > 0 else None


class ShadowMetrics:
    """The shadow series, registered on the server's registry."""

    def __init__(self, metrics: ServerMetrics) -> None:
        from prometheus_client import Counter, Histogram

        from prodai_cli.serving.metrics import LATENCY_BUCKETS

        registry = metrics.registry
        self.compared = Counter(
            COMPARED_METRIC.removesuffix("_total"),
            "Texts whose shadow answer was compared with the answer the client got",
            ["variant", "shadow"],
            registry=registry,
        )
        self.agreement = Counter(
            AGREEMENT_METRIC.removesuffix("_total"),
            "Sum of per-text agreement with the shadow (1/0 same label; cosine for embeddings)",
            ["variant", "shadow"],
            registry=registry,
        )
        self.latency = Histogram(
            LATENCY_METRIC,
            "Model time of a copied request on each side (primary: the answer the client got; shadow: the copy)",
            ["side", "shadow"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            ERRORS_METRIC.removesuffix("_total"), "Copies the shadow version failed on", ["shadow"], registry=registry
        )
        self.dropped = Counter(
            DROPPED_METRIC.removesuffix("_total"),
            "Copies not run (busy, queue_full, not_ready, timeout, stopping)",
            ["shadow", "reason"],
            registry=registry,
        )


class Shadowing:
    """The pipeline's ``shadow`` seam: copy, run and compare (see the module docstring).

    Args:
        routing: The live A/B router holder (its ``shadow`` says whether and where to copy).
        pool: Where the shadow version is loaded.
        metrics: The shadow series.
        timeout_s: How long a copy may wait and run on the shadow's batcher.
        rng: Random source for sampling (seed it in tests).

    """

    def __init__(
        self,
        routing: ABRouting,
        pool: ModelPool,
        metrics: ShadowMetrics,
        *,
        timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.routing = routing
        self.pool = pool
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._rng = rng if rng is not None else random.Random()
        self._pending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: deque[_Copy] = deque()
        self._drainer: asyncio.Task[None] | None = None

    def __call__(
        self, ctx: RequestContext, route: Route, texts: list[str], inference: Inference, primary_s: float
    ) -> None:
        """Start a copy of this answered request when the shadow is on and it is sampled; never raises."""
        shadow = self.routing.current.shadow
        if shadow is None or not texts or inference.fallback is not None:
            return
        if inference.model_version == str(shadow.version):
            return  # the shadow's own version answered: nothing to compare
        if shadow.sample < 1.0 and self._rng.random() >= shadow.sample:
            return
        reason = self._refusal(shadow, route, len(texts))
        if reason is not None:
            self.metrics.dropped.labels(shadow.name, reason).inc()
            return
        self._pending += len(texts)
        loop = asyncio.get_running_loop()
        self._waiting.append(_Copy(shadow, texts, inference, primary_s, route.model.batcher, loop.time()))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="prodai-shadow-drain")

    @property
    def pending(self) -> int:
        """Texts the shadow has in flight now."""
        return self._pending

    def _refusal(self, shadow: Shadow, route: Route, count: int) -> str | None:
        primary = route.model.batcher
        if primary is not None and primary.queued_texts >= primary.max_batch_size:
            return "busy"
        if self._pending + count > shadow.max_pending:
            return "queue_full"
        model = self.pool.get(model_key(self.routing.current.model, shadow.version))
        if model is None or not model.ready or model.batcher is None:
            return "not_ready"
        return None

    async def _drain(self) -> None:
        """Start the waiting copies whose answering version has nothing queued; drop those that waited too long."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            now = loop.time()
            still: deque[_Copy] = deque()
            for copy in self._waiting:
                if copy.primary is None or copy.primary.idle:
                    task = asyncio.create_task(self._run(copy.shadow, copy.texts, copy.inference, copy.primary_s))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif now - copy.made > IDLE_WAIT_S:
                    self.metrics.dropped.labels(copy.shadow.name, "busy").inc()
                    self._pending -= len(copy.texts)
                else:
                    still.append(copy)
            self._waiting = still
            if still:
                await asyncio.sleep(IDLE_POLL_S)

    async def _run(self, shadow: Shadow, texts: list[str], inference: Inference, primary_s: float) -> None:
        try:
            model = self.pool.get(model_key(self.routing.current.model, shadow.version))
            if model is None or model.batcher is None or not model.ready:
                self.metrics.dropped.labels(shadow.name, "not_ready").inc()
                return
            started = time.perf_counter()
            try:
                outputs = await model.batcher.submit(texts, timeout=self.timeout_s)
            except (QueueFull, BatcherStopped) as exc:
                reason = "stopping" if isinstance(exc, BatcherStopped) else "busy"
                self.metrics.dropped.labels(shadow.name, reason).inc()
                return
            except InferenceTimeout:
                self.metrics.dropped.labels(shadow.name, "timeout").inc()
                return
            except (ModelError, ServingError) as exc:
                self.metrics.errors.labels(shadow.name).inc()
                logger.warning("shadow copy failed", extra={"shadow": shadow.name, "error": type(exc).__name__})
                return
            self.metrics.latency.labels("shadow", shadow.name).observe(time.perf_counter() - started)
            self.metrics.latency.labels("primary", shadow.name).observe(primary_s)
            self._compare(shadow, inference, outputs)
        except Exception:  # a copy must never take anything down with it
            self.metrics.errors.labels(shadow.name).inc()
            logger.exception("shadow copy failed unexpectedly", extra={"shadow": shadow.name})
        finally:
            self._pending -= len(texts)

    def _compare(self, shadow: Shadow, inference: Inference, outputs: list[dict[str, Any]]) -> None:
        compared = 0
        agreed = 0.0
        for primary, copy in zip(inference.outputs, outputs, strict=False):
            score = agreement(primary, copy)
            if score is not None:
                compared += 1
                agreed += score
        if compared:
            self.metrics.compared.labels(inference.variant, shadow.name).inc(compared)
            self.metrics.agreement.labels(inference.variant, shadow.name).inc(agreed)

    async def aclose(self) -> None:
        """Cancel copies still waiting or in flight (shutdown: they answer nobody)."""
        self._waiting.clear()
        tasks = [*self._tasks, *([self._drainer] if self._drainer is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
