"""SLO expressions, durations and verdicts (pure Python: no Locust, no server)."""

from __future__ import annotations

import pytest

from prodai_cli.config import parse_config_text
from prodai_cli.errors import EXIT_USAGE, ConfigError, UsageError
from prodai_cli.slo import evaluate, parse_duration, parse_slo, parse_slos, percentiles_for


@pytest.mark.parametrize(
    ("text", "normal", "key", "op", "threshold"),
    [
        ("p95 < 200ms", "p95 < 200ms", "p95_ms", "<", 200.0),
        ("P99<=1s", "p99 <= 1s", "p99_ms", "<=", 1000.0),
        ("p50 < 80", "p50 < 80ms", "p50_ms", "<", 80.0),
        ("p99.9 < 2.5s", "p99.9 < 2.5s", "p99.9_ms", "<", 2500.0),
        ("avg < 50ms", "avg < 50ms", "avg_ms", "<", 50.0),
        ("max <= 900ms", "max <= 900ms", "max_ms", "<=", 900.0),
        ("error_rate < 1%", "error_rate < 1%", "error_rate", "<", 0.01),
        ("error_rate<0.05", "error_rate < 5%", "error_rate", "<", 0.05),
        ("rps > 50", "rps > 50", "rps", ">", 50.0),
        ("rps >= 12.5/s", "rps >= 12.5", "rps", ">=", 12.5),
    ],
)
def test_parse_slo_forms(text: str, normal: str, key: str, op: str, threshold: float) -> None:
    slo = parse_slo(text)
    assert (slo.text, slo.key, slo.op) == (normal, key, op)
    assert slo.threshold == pytest.approx(threshold)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p95 <", "Invalid SLO 'p95 <'"),
        ("p95 = 200ms", "Invalid SLO 'p95 = 200ms'"),
        ("latency < 200ms", "unknown metric 'latency'"),
        ("p100 < 1s", "percentiles lie between p0 and p100"),
        ("p0 < 1s", "percentiles lie between p0 and p100"),
        ("p95 < 5%", "p95 is a latency; write it in ms or s"),
        ("error_rate < 20ms", "error_rate is a share"),
        ("error_rate < 150%", "cannot exceed 100%"),
        ("rps > 5ms", "rps is requests per second"),
        ("", "Invalid SLO ''"),
    ],
)
def test_bad_slo_is_a_usage_error_that_says_why(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_slo(text)
    assert message in err.value.message
    assert err.value.exit_code == EXIT_USAGE


def test_verdict_per_slo_uses_strict_and_inclusive_bounds() -> None:
    slos = parse_slos(["p95 < 200ms", "p99 <= 300ms", "error_rate < 1%", "rps > 50", "max < 1s"])
    figures = {"requests": 1000, "p95_ms": 200.0, "p99_ms": 300.0, "error_rate": 0.0099, "rps": 50.0, "max_ms": 999}
    verdict = {r.slo.text: r.passed for r in evaluate(slos, figures)}
    assert verdict == {
        "p95 < 200ms": False,  # equal is not below
        "p99 <= 300ms": True,
        "error_rate < 1%": True,
        "rps > 50": False,
        "max < 1s": True,
    }
    failed = next(r for r in evaluate(slos, figures) if r.slo.text == "p95 < 200ms")
    assert failed.describe() == "p95 < 200ms (observed 200 ms)"
    assert failed.to_dict()["observed"] == 200.0


def test_a_run_without_requests_fails_every_latency_and_error_slo() -> None:
    slos = parse_slos(["p95 < 10s", "error_rate < 100%", "rps >= 0"])
    results = evaluate(slos, {"requests": 0, "p95_ms": None, "error_rate": None, "rps": 0.0})
    assert [r.passed for r in results] == [False, False, True]
    assert results[0].describe() == "p95 < 10s (observed n/a)"


def test_percentiles_for_adds_what_slos_name() -> None:
    assert percentiles_for(parse_slos(["p75 < 1s", "p99.9 < 2s", "p95 < 1s"])) == [50.0, 75.0, 90.0, 95.0, 99.0, 99.9]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0), ("500ms", 0.5), ("5", 5.0), ("0.5s", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "x", "30 sec", "-1s", "m", "1m 3x", "0s"])
def test_bad_duration_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_duration(text, what="--duration")
    assert "--duration" in err.value.message


def test_zero_warmup_is_allowed() -> None:
    assert parse_duration("0s", what="--warmup", allow_zero=True) == 0.0


def test_config_rejects_bad_loadtest_values_naming_key_and_line() -> None:
    text = "loadtest:\n  users: 3\n  duration: 3 minutes\n  slo:\n    - p95 < 200ms\n    - p95 <> 3\n"
    with pytest.raises(ConfigError) as err:
        parse_config_text(text)
    message = str(err.value)
    assert "loadtest.duration: Value error, Invalid duration '3 minutes'" in message
    assert "(prodai.yaml line 3)" in message
    assert "loadtest.slo: Value error, Invalid SLO 'p95 <> 3'" in message


def test_config_defaults_parse() -> None:
    config = parse_config_text("loadtest:\n  warmup: 5s\n  slo: ['p99 < 1s', 'rps > 10']\n")
    assert config.loadtest.warmup == "5s"
    assert [s.text for s in parse_slos(config.loadtest.slo)] == ["p99 < 1s", "rps > 10"]
