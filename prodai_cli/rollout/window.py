"""One A/B variant's live figures over a window, from two reads of a server's ``/metrics``.

A rollout step judges only the traffic of that step: the counters and the latency histogram are read when
the step starts and again while it runs, and the difference is the step's window. Every figure here comes
from series the server already exports:

- ``prodai_requests_total{variant}``: requests the variant answered, by HTTP status (5xx are failures);
- ``prodai_ab_fallbacks_total{variant}``: requests assigned to the variant that another variant answered
  because it failed, timed out or had its breaker open (failures of the variant the client never saw);
- ``prodai_variant_latency_seconds{variant}``: the latency histogram of the requests the variant answered;
- ``prodai_shadow_compared_total{variant}`` and ``prodai_shadow_agreement_total{variant}``: texts the variant
  answered that a shadow copy on another version was compared with, and their summed agreement (the rollout
  shadows the stable version when an ``agreement`` SLO is asked for).

``error_rate`` is (5xx + fallbacks) / (answered + fallbacks); latency percentiles are interpolated in the
histogram's buckets like Prometheus' ``histogram_quantile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prodai_cli.errors import ProdaiError

REQUESTS = "prodai_requests_total"
FALLBACKS = "prodai_ab_fallbacks_total"
LATENCY = "prodai_variant_latency_seconds"
COMPARED = "prodai_shadow_compared_total"
AGREED = "prodai_shadow_agreement_total"


@dataclass
class Snapshot:
    """A variant's cumulative counters at one moment (JSON-ready, kept in the rollout's state file)."""

    answered: float = 0.0
    server_errors: float = 0.0
    fallbacks: float = 0.0
    latency_sum: float = 0.0
    # Upper bound (seconds; "+Inf" as math.inf) -> cumulative count, as the histogram exports it.
    buckets: dict[float, float] = field(default_factory=dict)
    compared: float = 0.0
    agreed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (bucket bounds as strings, ``+Inf`` included)."""
        return {
            "answered": self.answered,
            "server_errors": self.server_errors,
            "fallbacks": self.fallbacks,
            "latency_sum": self.latency_sum,
            "compared": self.compared,
            "agreed": self.agreed,
            "buckets": {("+Inf" if math.isinf(k) else repr(k)): v for k, v in self.buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        """The inverse of :meth:`to_dict`."""
        return cls(
            answered=float(data.get("answered", 0.0)),
            server_errors=float(data.get("server_errors", 0.0)),
            fallbacks=float(data.get("fallbacks", 0.0)),
            latency_sum=float(data.get("latency_sum", 0.0)),
            buckets={float(k): float(v) for k, v in (data.get("buckets") or {}).items()},
            compared=float(data.get("compared", 0.0)),
            agreed=float(data.get("agreed", 0.0)),
        )


def snapshot(metrics_text: str, variant: str) -> Snapshot:
    """The counters of ``variant`` in a ``/metrics`` body.

    Raises:
        ProdaiError: The text is not Prometheus exposition text.

    """
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot()
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("variant") != variant:
                    continue
                value = float(sample.value)
                if sample.name == REQUESTS:
                    snap.answered += value
                    if labels.get("status", "").startswith("5"):
                        snap.server_errors += value
                elif sample.name == FALLBACKS:
                    snap.fallbacks += value
                elif sample.name == f"{LATENCY}_bucket":
                    bound = float(labels.get("le", "+Inf"))
                    snap.buckets[bound] = snap.buckets.get(bound, 0.0) + value
                elif sample.name == f"{LATENCY}_sum":
                    snap.latency_sum += value
                elif sample.name == COMPARED:
                    snap.compared += value
                elif sample.name == AGREED:
                    snap.agreed += value
    except ValueError as exc:
        raise ProdaiError(f"The server's /metrics is not Prometheus text: {exc}") from None
    return snap


@dataclass(frozen=True)
class Window:
    """A variant's figures between two snapshots."""

    answered: float
    server_errors: float
    fallbacks: float
    latency_sum: float
    buckets: dict[float, float]
    seconds: float
    compared: float = 0.0
    agreed: float = 0.0

    @property
    def requests(self) -> float:
        """Requests assigned to the variant: the ones it answered plus the ones a fallback answered for it."""
        return self.answered + self.fallbacks

    @property
    def error_rate(self) -> float | None:
        """Failed / assigned requests (None without traffic)."""
        if self.requests <= 0:
            return None
        return (self.server_errors + self.fallbacks) / self.requests

    @property
    def agreement(self) -> float | None:
        """Share of the compared texts answered like the shadow (None before any comparison)."""
        return self.agreed / self.compared if self.compared > 0 else None

    def percentile_ms(self, percent: float) -> float | None:
        """Latency percentile in ms, interpolated within the histogram bucket (None without traffic)."""
        total = self.buckets.get(math.inf, 0.0)
        if total <= 0:
            return None
        rank = percent / 100.0 * total
        lower_bound, lower_count = 0.0, 0.0
        for bound in sorted(self.buckets):
            count = self.buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound * 1000.0  # past the last finite bucket: its bound is all we know
                if count == lower_count:
                    return bound * 1000.0
                return (lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)) * 1000.0
            lower_bound, lower_count = bound, count
        return None

    def figure(self, key: str) -> float | None:
        """The figure an SLO reads: ``pNN_ms``, ``avg_ms``, ``error_rate``, ``rps`` or ``agreement``."""
        if key == "error_rate":
            return self.error_rate
        if key == "agreement":
            return self.agreement
        if key == "rps":
            return self.requests / self.seconds if self.seconds > 0 else None
        if key == "avg_ms":
            count = self.buckets.get(math.inf, 0.0)
            return self.latency_sum / count * 1000.0 if count > 0 else None
        if key.startswith("p") and key.endswith("_ms"):
            return self.percentile_ms(float(key[1:-3]))
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the window's headline figures."""
        return {
            "requests": self.requests,
            "answered": self.answered,
            "server_errors": self.server_errors,
            "fallbacks": self.fallbacks,
            "error_rate": self.error_rate,
            "p50_ms": self.percentile_ms(50),
            "p95_ms": self.percentile_ms(95),
            "p99_ms": self.percentile_ms(99),
            "seconds": self.seconds,
            "compared": self.compared,
            "agreement": self.agreement,
        }


def window(before: Snapshot, after: Snapshot, seconds: float) -> Window:
    """``after - before``; a counter that went down means the server restarted, so ``after`` is the window."""
    if after.answered < before.answered or after.fallbacks < before.fallbacks:
        before = Snapshot()

    def delta(a: float, b: float) -> float:
        return max(a - b, 0.0)

    return Window(
        answered=delta(after.answered, before.answered),
        server_errors=delta(after.server_errors, before.server_errors),
        fallbacks=delta(after.fallbacks, before.fallbacks),
        latency_sum=delta(after.latency_sum, before.latency_sum),
        buckets={bound: delta(count, before.buckets.get(bound, 0.0)) for bound, count in after.buckets.items()},
        seconds=seconds,
        compared=delta(after.compared, before.compared),
        agreed=delta(after.agreed, before.agreed),
    )


def combine(windows: list[Window], seconds: float) -> Window:
    """The sum of several servers' windows over the same step (replicas of one deployment).

    Counters and histogram buckets add up (the replicas run the same image, so the same bucket bounds);
    ``seconds`` is the step's elapsed time, not a sum: the replicas served side by side.
    """
    buckets: dict[float, float] = {}
    for part in windows:
        for bound, count in part.buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + count
    return Window(
        answered=sum(part.answered for part in windows),
        server_errors=sum(part.server_errors for part in windows),
        fallbacks=sum(part.fallbacks for part in windows),
        latency_sum=sum(part.latency_sum for part in windows),
        buckets=buckets,
        seconds=seconds,
        compared=sum(part.compared for part in windows),
        agreed=sum(part.agreed for part in windows),
    )
