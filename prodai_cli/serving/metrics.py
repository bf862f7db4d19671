"""Prometheus metrics of the model server, on a registry of its own (one per app).

Series (other parts of prodai read these names; keep them stable):

- ``prodai_requests_total{route,status,model_version,variant}``: every answered request.
- ``prodai_request_latency_seconds{route}``: histogram of time in the server, first byte in to last out.
- ``prodai_batch_size``: histogram of texts per forward-pass call of the micro-batcher.
- ``prodai_queue_depth``: texts waiting for the model (all versions).
- ``prodai_inflight_requests``: requests being handled right now.
- ``prodai_model_errors_total{model_version,error_type}``: predictions that failed (exception class
  name, or ``timeout``).
- ``prodai_model_loaded{model_version}``: 1 once a version is loaded and warmed.

Protection (auth, rate limits, cache, redaction), A/B (fallbacks, cascade, breakers) and config reloads add
their series to the same registry: see :mod:`~prodai_cli.serving.protection.steps`,
:mod:`~prodai_cli.serving.ab.routing` and :mod:`~prodai_cli.serving.ab.reload`.

Several workers (``prodai serve --workers N``): prometheus_client's multiprocess mode. When
``PROMETHEUS_MULTIPROC_DIR`` is set before the worker imports prometheus_client (``prodai serve`` sets it to a
fresh directory), every worker writes its samples to memory-mapped files there and ``/metrics`` on any worker
returns the sum over all workers (gauges: the sum over live workers). Without it each process reports only
its own numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
VARIANT_LATENCY_METRIC = "prodai_variant_latency_seconds"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_enabled() -> bool:
    """Whether prometheus_client runs in multiprocess mode in this process."""
    return bool(os.environ.get(MULTIPROC_ENV))


class ServerMetrics:
    """The server's metric objects, registered on a private :class:`prometheus_client.CollectorRegistry`.

    A private registry lets a test process build several apps without "Duplicated timeseries" errors.
    Other server parts (A/B, cache, rate limits) add their own series with ``registry=metrics.registry``.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_enabled()
        # Called before every scrape: parts that keep their own counts copy them into their series here.
        self.before_render: list[Callable[[], object]] = []
        if not self.multiprocess:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=self.registry)
        registry = self.registry
        self.requests = Counter(
            "prodai_requests",
            "Requests answered, by route, HTTP status, model version and A/B variant",
            ["route", "status", "model_version", "variant"],
            registry=registry,
        )
        self.latency = Histogram(
            "prodai_request_latency_seconds",
            "Time from request start to response end",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Per A/B variant, for judging one arm of a split on its own (prodai rollout reads it per step).
        self.variant_latency = Histogram(
            VARIANT_LATENCY_METRIC,
            "Time from request start to response end, by the A/B variant that answered (model routes only)",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "prodai_batch_size", "Texts per micro-batch sent to the model", buckets=BATCH_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge(
            "prodai_queue_depth", "Texts waiting for the model", registry=registry, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "prodai_inflight_requests", "Requests being handled", registry=registry, multiprocess_mode="livesum"
        )
        self.model_errors = Counter(
            "prodai_model_errors",
            "Failed predictions by model version and error type",
            ["model_version", "error_type"],
            registry=registry,
        )
        self.model_loaded = Gauge(
            "prodai_model_loaded",
            "1 when the version is loaded and warmed",
            ["model_version"],
            registry=registry,
            multiprocess_mode="livemax",
        )

    def render(self) -> bytes:
        """The exposition text for ``/metrics`` (summed over workers in multiprocess mode)."""
        from prometheus_client import CollectorRegistry, generate_latest

        for refresh in self.before_render:
            refresh()
        if self.multiprocess:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(merged))
        return bytes(generate_latest(self.registry))

    def observe_request(self, route: str, status: int, model_version: str, variant: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(route, str(status), model_version, variant).inc()
        self.latency.labels(route).observe(seconds)
        if variant:
            self.variant_latency.labels(variant).observe(seconds)


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse Prometheus text into ``{sample name: [(labels, value), ...]}`` (tests, bench, ab-show).

    Args:
        text: The body of a ``/metrics`` response.

    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def sample_sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: Any) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = {k: str(v) for k, v in labels.items()}
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in wanted.items())
    )
