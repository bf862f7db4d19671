"""A/B routing in the server: the live router, and breakers, fallback, retries and the cascade around the model.

Two pipeline seams (see :mod:`prodai_cli.serving.pipeline`):

- :class:`ABRouting` is the pipeline's ``router``: it holds the live :class:`~prodai_cli.serving.ab.ABRouter`
  (an immutable snapshot; a config reload swaps the reference once every version it names is loaded and
  warmed) and assigns each request a variant from the user id header (sticky) or at random by weight.
- :class:`Resilience` is the pipeline's ``resilience`` wrapper around the micro-batcher. Per request:

  1. take a permit from the assigned version's circuit breaker (none while it is open);
  2. run the model, retrying with capped, jittered backoff only when the queue was momentarily full (a
     model error or a client's 4xx is never retried: the batcher already re-ran a failed batch request by
     request, so a retry would fail the same way);
  3. on a model error, an open breaker or a version being retired, serve the request from the fallback
     order (``ab.fallback`` first, then the other versions by weight, each through its own breaker), mark
     the answer with ``X-Fallback`` and count it; fallback answers are never cached;
  4. with ``ab.cascade`` on, re-ask the large variant for the texts the small variant answered with a
     confidence below the threshold (embeddings carry no confidence and never escalate).

Series (on the server's registry): ``prodai_ab_fallbacks_total{variant,fallback,reason}``,
``prodai_cascade_escalations_total{variant,target}`` (texts), ``prodai_breaker_open{model_version}`` (1 while a
version's breaker is open or half-open; the deploy alert rules read it).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prodai_cli.serving.ab.breaker import BreakerState, RetryPolicy, retry_async
from prodai_cli.serving.ab.router import ESCALATIONS_METRIC, FALLBACKS_METRIC, Assignment
from prodai_cli.serving.batcher import BatcherStopped, QueueFull
from prodai_cli.serving.errors import InferenceTimeout, ModelError, ServiceUnavailable
from prodai_cli.serving.pipeline import Inference, Route
from prodai_cli.serving.pool import model_key

if TYPE_CHECKING:
    from prodai_cli.serving.ab.breaker import Breakers, Permit
    from prodai_cli.serving.ab.router import ABRouter, Variant
    from prodai_cli.serving.metrics import ServerMetrics
    from prodai_cli.serving.pipeline import Infer, RequestContext
    from prodai_cli.serving.pool import ModelPool

logger = logging.getLogger("prodai.serving.ab")

BREAKER_METRIC = "prodai_breaker_open"
# A momentarily full queue is the one failure a short wait cures; everything else would fail again.
QUEUE_RETRY = RetryPolicy(attempts=3, base_delay_s=0.02, max_delay_s=0.2)


class ABMetrics:
    """The A/B series, registered on the server's registry."""

    def __init__(self, metrics: ServerMetrics) -> None:
        from prometheus_client import Counter, Gauge

        registry = metrics.registry
        self.fallbacks = Counter(
            FALLBACKS_METRIC.removesuffix("_total"),
            "Requests served by a fallback variant instead of the assigned one",
            ["variant", "fallback", "reason"],
            registry=registry,
        )
        self.escalations = Counter(
            ESCALATIONS_METRIC.removesuffix("_total"),
            "Texts the cascade re-asked of the large variant (small model not confident enough)",
            ["variant", "target"],
            registry=registry,
        )
        self.breaker_open = Gauge(
            BREAKER_METRIC,
            "1 while the version's circuit breaker is open or half-open (probing), 0 when closed",
            ["model_version"],
            registry=registry,
            multiprocess_mode="livemax",
        )


class ABRouting:
    """The pipeline's router in A/B mode: sticky assignment over the live :class:`ABRouter`.

    Args:
        pool: Where the versions are loaded.
        router: The first router (its versions must be loaded before requests are answered).

    """

    def __init__(self, pool: ModelPool, router: ABRouter) -> None:
        self.pool = pool
        self.current = router

    def pool_keys(self, router: ABRouter | None = None) -> list[str]:
        """Pool keys of every version ``router`` (default: the live one) names."""
        chosen = router or self.current
        return [model_key(chosen.model, version) for version in sorted(chosen.versions)]

    def swap(self, router: ABRouter) -> None:
        """Make ``router`` live (its versions must be loaded and warmed)."""
        self.current = router

    def route(self, ctx: RequestContext) -> Route:
        """Assign the request a variant: by the user id header when present, else at random by weight."""
        router = self.current
        variant = router.choose(ctx.headers.get(router.user_header))
        model = self.pool.get(model_key(router.model, variant.version))
        if model is None or not model.ready:
            raise ServiceUnavailable("The model is loading; retry shortly", retry_after_s=2, code="not_ready")
        return Route(model=model, variant=variant.name, assignment=Assignment(router, variant))


class Resilience:
    """The pipeline's ``resilience`` wrapper: breaker, retry, fallback and cascade (see the module docstring).

    Args:
        pool: Where fallback and cascade versions are found.
        breakers: One breaker per version (reconfigured on reload).
        metrics: The A/B series.
        retry: Backoff for a momentarily full queue.

    """

    def __init__(
        self, pool: ModelPool, breakers: Breakers, metrics: ABMetrics, *, retry: RetryPolicy = QUEUE_RETRY
    ) -> None:
        self.pool = pool
        self.breakers = breakers
        self.metrics = metrics
        self.retry = retry

    async def __call__(self, ctx: RequestContext, route: Route, texts: list[str], run_model: Infer) -> Inference:
        """Serve ``texts`` on ``route`` (see the module docstring); a route without A/B passes straight through."""
        assignment = route.assignment
        if not isinstance(assignment, Assignment):
            return await run_model(ctx, route, texts)
        inference = await self._serve(ctx, route, assignment, texts, run_model)
        if assignment.router.cascade is not None and inference.fallback is None:
            inference = await self._cascade(ctx, assignment, texts, inference, run_model)
        return inference

    def refresh_gauges(self) -> None:
        """Set ``prodai_breaker_open`` from every breaker's state (an open breaker turns half-open by time)."""
        for version, snapshot in self.breakers.snapshot().items():
            self.metrics.breaker_open.labels(str(version)).set(0 if snapshot["state"] == "closed" else 1)

    # ------------------------------------------------------------------------------------ internals
    def _route_to(self, assignment: Assignment, variant: Variant) -> Route | None:
        model = self.pool.get(model_key(assignment.router.model, variant.version))
        if model is None or not model.ready:
            return None
        return Route(model=model, variant=variant.name, assignment=Assignment(assignment.router, variant))

    def _gauge(self, version: int) -> None:
        state = self.breakers.get(version).state
        self.metrics.breaker_open.labels(str(version)).set(0 if state is BreakerState.CLOSED else 1)

    async def _attempt(
        self, ctx: RequestContext, route: Route, texts: list[str], run_model: Infer, permit: Permit, version: int
    ) -> Inference:
        """One call through a breaker permit; the outcome is reported on the permit."""

        async def call() -> Inference:
            return await run_model(ctx, route, texts)

        try:
            inference = await retry_async(call, self.retry, retryable=lambda exc: isinstance(exc, QueueFull))
        except (ModelError, InferenceTimeout):
            permit.failure()
            self._gauge(version)
            raise
        except BaseException:
            # Busy, stopping or cancelled: says nothing about the version's health.
            permit.release()
            raise
        permit.success()
        self._gauge(version)
        return inference

    async def _serve(
        self, ctx: RequestContext, route: Route, assignment: Assignment, texts: list[str], run_model: Infer
    ) -> Inference:
        variant = assignment.variant
        permit = self.breakers.acquire(variant.version)
        reason = "breaker_open"
        failure: ModelError | None = None
        if permit is None:
            self._gauge(variant.version)
        else:
            try:
                return await self._attempt(ctx, route, texts, run_model, permit, variant.version)
            except ModelError as exc:
                reason, failure = "model_error", exc
            except BatcherStopped:
                reason = "retired"  # a reload retired the version between routing and queueing
        for candidate in assignment.router.fallback_order(variant):
            fallback_route = self._route_to(assignment, candidate)
            if fallback_route is None:
                continue
            fallback_permit = self.breakers.acquire(candidate.version)
            if fallback_permit is None:
                continue
            try:
                inference = await self._attempt(
                    ctx, fallback_route, texts, run_model, fallback_permit, candidate.version
                )
            except (ModelError, BatcherStopped):
                continue
            self.metrics.fallbacks.labels(variant.name, candidate.name, reason).inc()
            ctx.log_fields["fallback"] = candidate.name
            return replace(inference, fallback=f"{variant.name}->{candidate.name}; reason={reason}")
        if failure is not None:
            raise failure  # no other version could serve: the model's own error (500)
        retry_after = max(1, round(self.breakers.config.reset_timeout_s))
        raise ServiceUnavailable(
            f"Variant {variant.name!r} (version {variant.version}) is unavailable and no fallback could serve",
            retry_after_s=retry_after,
            code="no_healthy_version",
        )

    async def _cascade(
        self, ctx: RequestContext, assignment: Assignment, texts: list[str], inference: Inference, run_model: Infer
    ) -> Inference:
        """Re-ask the large variant for the texts the small one was unsure of; keep the small answer on failure."""
        router = assignment.router
        target: Variant | None = None
        unsure: list[int] = []
        for index, output in enumerate(inference.outputs):
            confidence = output.get("confidence")
            number = float(confidence) if isinstance(confidence, (int, float)) else None
            escalate_to = router.escalation(assignment.variant, number)
            if escalate_to is not None:
                target = escalate_to
                unsure.append(index)
        if target is None:
            return inference
        large_route = self._route_to(assignment, target)
        permit = self.breakers.acquire(target.version) if large_route is not None else None
        if large_route is None or permit is None:
            return inference
        try:
            escalated = await self._attempt(
                ctx, large_route, [texts[i] for i in unsure], run_model, permit, target.version
            )
        except (ModelError, InferenceTimeout, BatcherStopped, QueueFull) as exc:
            logger.warning(
                "cascade escalation failed; answering with the small variant",
                extra={"variant": target.name, "error": type(exc).__name__},
            )
            return inference
        self.metrics.escalations.labels(assignment.variant.name, target.name).inc(len(unsure))
        ctx.log_fields["escalated"] = len(unsure)
        if len(unsure) == len(texts):
            return Inference(escalated.outputs, escalated.model_version, target.name)
        outputs: list[dict[str, Any]] = list(inference.outputs)
        for index, output in zip(unsure, escalated.outputs, strict=True):
            outputs[index] = {**output, "model_version": escalated.model_version, "variant": target.name}
        return inference.with_outputs(outputs)
