"""SLO expressions and durations: ``p95 < 200ms``, ``error_rate < 1%``, ``rps > 50``, ``30s``, ``2m``.

Pure Python on the ground floor (it imports only errors), because the config validator below every
feature, the load test, ship's gate and the verdict all use it.

Grammar (case-insensitive, spaces optional)::

    SLO      := METRIC OP NUMBER [UNIT]
    METRIC   := pNN | avg | min | max        latency in ms (UNIT ms, s; none means ms)
              | error_rate                   failed/all requests (UNIT %; none means a fraction 0..1)
              | rps                          requests per second (UNIT rps, /s or none)
              | agreement                    share of texts a candidate answers like the stable version,
                                             from shadow comparisons (UNIT %; none means 0..1); live
                                             traffic only (``prodai rollout``), a load test cannot see it
    OP       := < | <= | > | >=
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from prodai_cli.errors import UsageError

LATENCY_METRICS = ("avg", "min", "max")
SLO_SYNTAX_HINT = "Write SLOs like 'p95 < 200ms', 'p99 <= 1s', 'avg < 50ms', 'error_rate < 1%' or 'rps > 50'"
# Percentiles the summary always carries, whatever the SLOs ask for.
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)

_SLO = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|%|rps|/s)?\s*$",
    re.IGNORECASE,
)
_PERCENTILE = re.compile(r"^p(?P<p>[0-9]{1,3}(?:\.[0-9]+)?)$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def percentile_key(percent: float) -> str:
    """The summary key of a latency percentile: 95 -> ``p95_ms``, 99.9 -> ``p99.9_ms``."""
    return f"p{percent:g}_ms"


@dataclass(frozen=True)
class Slo:
    """One parsed SLO.

    Attributes:
        text: The expression in normal form (``p95 < 200ms``).
        metric: ``pNN``, ``avg``, ``min``, ``max``, ``error_rate`` or ``rps``.
        op: One of ``<``, ``<=``, ``>``, ``>=``.
        threshold: In ms for latency, a fraction for ``error_rate``, requests/s for ``rps``.

    """

    text: str
    metric: str
    op: str
    threshold: float

    @property
    def percentile(self) -> float | None:
        """The percentile a ``pNN`` SLO is about (95.0), else None."""
        match = _PERCENTILE.match(self.metric)
        return float(match.group("p")) if match else None

    @property
    def key(self) -> str:
        """The figure of the run summary this SLO reads (``p95_ms``, ``avg_ms``, ``error_rate``, ``rps``)."""
        percent = self.percentile
        if percent is not None:
            return percentile_key(percent)
        if self.metric in LATENCY_METRICS:
            return f"{self.metric}_ms"
        return self.metric

    @property
    def unit(self) -> str:
        """``ms``, ``%`` or ``rps``: how the threshold and the observed value are shown."""
        if self.metric in ("error_rate", "agreement"):
            return "%"
        if self.metric == "rps":
            return "rps"
        return "ms"

    @property
    def is_latency(self) -> bool:
        """True for latency SLOs (pNN, avg, min, max): the ones a latency scale applies to."""
        return self.unit == "ms"

    def holds(self, observed: float | None, threshold: float | None = None) -> bool:
        """Whether ``observed`` satisfies the SLO; a missing figure (no requests measured) never does.

        Args:
            observed: The measured figure.
            threshold: The threshold to judge against instead of the SLO's own (a scaled one).

        """
        limit = self.threshold if threshold is None else threshold
        if observed is None or math.isnan(observed):
            return False
        if self.op == "<":
            return observed < limit
        if self.op == "<=":
            return observed <= limit
        if self.op == ">":
            return observed > limit
        return observed >= limit

    def show(self, value: float | None) -> str:
        """A figure of this SLO's metric for people: ``12 ms``, ``0.50%``, ``48.2 rps``."""
        if value is None:
            return "n/a"
        if self.unit == "%":
            return f"{value * 100:.2f}%"
        if self.unit == "rps":
            return f"{value:.1f} rps"
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@dataclass(frozen=True)
class SloResult:
    """An SLO judged against a run."""

    slo: Slo
    observed: float | None
    passed: bool
    # The threshold judged against: the SLO's own times the latency scale for a scaled latency SLO.
    allowed: float | None = None
    scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the shape of ``summary.json``'s ``slos`` list)."""
        return {
            "slo": self.slo.text,
            "metric": self.slo.metric,
            "key": self.slo.key,
            "op": self.slo.op,
            "threshold": self.slo.threshold,
            "allowed": self.slo.threshold if self.allowed is None else self.allowed,
            "scale": self.scale,
            "unit": self.slo.unit,
            "observed": self.observed,
            "passed": self.passed,
        }

    def describe(self) -> str:
        """``p95 < 1ms (observed 14 ms)``; a scaled SLO adds what it allowed: ``allowed 3200 ms at x3.2``."""
        scaled = f", allowed {self.slo.show(self.allowed)} at x{self.scale:.2g} machine load" if self.scale != 1 else ""
        return f"{self.slo.text} (observed {self.slo.show(self.observed)}{scaled})"


def parse_slo(text: str, *, live: bool = False) -> Slo:
    """Parse one SLO expression.

    Args:
        text: For example ``p95 < 200ms``, ``error_rate < 1%`` or ``rps > 50``.
        live: Judged on a server's live traffic (``prodai rollout``), where ``agreement`` can be measured.

    Returns:
        The parsed SLO, its threshold in the metric's base unit (ms, fraction, requests/s).

    Raises:
        UsageError: The expression does not follow the grammar; the message says what is wrong.

    """
    match = _SLO.match(text or "")
    if not match:
        raise UsageError(f"Invalid SLO {text!r}", hint=SLO_SYNTAX_HINT)
    metric = match.group("metric").lower()
    op = match.group("op")
    value = float(match.group("value"))
    unit = (match.group("unit") or "").lower()
    percentile = _PERCENTILE.match(metric)
    if percentile or metric in LATENCY_METRICS:
        if percentile and not 0 < float(percentile.group("p")) < 100:
            raise UsageError(f"Invalid SLO {text!r}: percentiles lie between p0 and p100", hint="max is the slowest")
        if unit not in ("", "ms", "s"):
            raise UsageError(f"Invalid SLO {text!r}: {metric} is a latency; write it in ms or s", hint=SLO_SYNTAX_HINT)
        threshold = value * 1000.0 if unit == "s" else value
        shown = f"{value:g}{unit or 'ms'}"
    elif metric == "error_rate":
        if unit not in ("", "%"):
            raise UsageError(f"Invalid SLO {text!r}: error_rate is a share, like 1% or 0.01", hint=SLO_SYNTAX_HINT)
        threshold = value / 100.0 if unit == "%" else value
        if threshold > 1:
            raise UsageError(f"Invalid SLO {text!r}: an error rate cannot exceed 100%", hint=SLO_SYNTAX_HINT)
        shown = f"{threshold * 100:g}%"
    elif metric == "agreement" and live:
        if unit not in ("", "%"):
            raise UsageError(f"Invalid SLO {text!r}: agreement is a share, like 90% or 0.9", hint=SLO_SYNTAX_HINT)
        threshold = value / 100.0 if unit == "%" else value
        if threshold > 1:
            raise UsageError(f"Invalid SLO {text!r}: agreement cannot exceed 100%", hint=SLO_SYNTAX_HINT)
        shown = f"{threshold * 100:g}%"
    elif metric == "rps":
        if unit not in ("", "rps", "/s"):
            raise UsageError(f"Invalid SLO {text!r}: rps is requests per second", hint="Write it as 'rps > 50'")
        threshold = value
        shown = f"{threshold:g}"
    else:
        raise UsageError(
            f"Invalid SLO {text!r}: unknown metric {match.group('metric')!r}",
            hint="Metrics: p50, p90, p95, p99 (any pNN), avg, min, max, error_rate, rps"
            + ("" if live else " (agreement is judged on live traffic by prodai rollout only)"),
        )
    return Slo(text=f"{metric} {op} {shown}", metric=metric, op=op, threshold=threshold)


def parse_slos(texts: list[str] | tuple[str, ...], *, live: bool = False) -> list[Slo]:
    """Parse several SLOs (the first bad one raises :class:`UsageError`); ``live`` as in :func:`parse_slo`."""
    return [parse_slo(text, live=live) for text in texts]


def percentiles_for(slos: list[Slo]) -> list[float]:
    """The default percentiles plus any other ``pNN`` the SLOs ask for, ascending."""
    wanted = set(DEFAULT_PERCENTILES)
    wanted.update(p for p in (slo.percentile for slo in slos) if p is not None)
    return sorted(wanted)


def evaluate(slos: list[Slo], figures: dict[str, Any], latency_scale: float = 1.0) -> list[SloResult]:
    """Judge every SLO against the figures of a run (``p95_ms``, ``error_rate``, ``rps``...).

    A run that measured no request has no latency or error rate: those SLOs fail rather than pass vacuously.

    Args:
        slos: The SLOs.
        figures: The run's figures.
        latency_scale: Multiplies latency thresholds (see :mod:`prodai_cli.loadtest.contention`); error rate
            and rps SLOs are never scaled.

    """
    results = []
    for slo in slos:
        raw = figures.get(slo.key)
        observed = float(raw) if isinstance(raw, (int, float)) else None
        if not figures.get("requests"):
            observed = None if slo.metric != "rps" else observed
        scale = latency_scale if slo.is_latency else 1.0
        allowed = slo.threshold * scale
        results.append(
            SloResult(slo=slo, observed=observed, passed=slo.holds(observed, allowed), allowed=allowed, scale=scale)
        )
    return results


def parse_duration(text: str | float | int, *, what: str = "duration", allow_zero: bool = False) -> float:
    """Parse ``30s``, ``2m``, ``1m30s``, ``1h``, ``500ms`` or a bare number of seconds.

    Args:
        text: The duration.
        what: Its name in error messages (``--duration``, ``--warmup``).
        allow_zero: Accept ``0`` / ``0s``.

    Returns:
        Seconds.

    Raises:
        UsageError: Not a duration, or zero when that is not allowed.

    """
    hint = "Write durations like 30s, 2m, 1m30s or 500ms"
    if isinstance(text, bool):
        raise UsageError(f"Invalid {what} {text!r}", hint=hint)
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        raw = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", raw):
            seconds = float(raw)
        elif raw and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", raw):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(raw))
        else:
            raise UsageError(f"Invalid {what} {text!r}", hint=hint)
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise UsageError(f"Invalid {what} {text!r}", hint=hint)
    if seconds == 0 and not allow_zero:
        raise UsageError(f"Invalid {what} {text!r}: it must be longer than 0", hint=hint)
    return seconds
