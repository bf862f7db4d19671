"""Issue 21 (canary), without a server: step parsing, the per-variant window a step is judged on, the plan a
dry run prints, and the refusals that must come before anything is written (a real MLflow SQLite registry;
tests/integration/test_rollout_server.py runs rollouts against real servers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import run_cli

from prodai_cli.errors import UsageError
from prodai_cli.rollout import parse_steps
from prodai_cli.rollout.window import snapshot, window

STABLE_SPLIT = """\
ab:
  enabled: true
  model: clf
  variants:
    production: {version: 1, weight: 1.0, alias: production}
"""


def test_steps_parse_as_increasing_shares_ending_at_100_percent() -> None:
    assert parse_steps("5%,25%,50%,100%") == [0.05, 0.25, 0.5, 1.0]
    assert parse_steps("0.1, 1") == [0.1, 1.0]
    for bad in ("", "50%,25%,100%", "5%,50%", "0%,100%", "5%,5%,100%", "150%", "abc", ",".join(["100%"] * 21)):
        with pytest.raises(UsageError):
            parse_steps(bad)


def metrics_text(answered_ok: int, answered_5xx: int, fallbacks: int, latencies: list[float]) -> str:
    """A /metrics body as the server writes it, for variant `canary` (and noise from another variant)."""
    bounds = [0.01, 0.1, 1.0, math.inf]
    lines = [
        f'prodai_requests_total{{route="/predict",status="200",model_version="2",variant="canary"}} {answered_ok}',
        f'prodai_requests_total{{route="/predict",status="503",model_version="2",variant="canary"}} {answered_5xx}',
        'prodai_requests_total{route="/predict",status="200",model_version="1",variant="stable"} 999',
        f'prodai_ab_fallbacks_total{{variant="canary",fallback="stable",reason="model_error"}} {fallbacks}',
    ]
    for bound in bounds:
        le = "+Inf" if math.isinf(bound) else repr(bound)
        count = sum(1 for x in latencies if x <= bound)
        lines.append(f'prodai_variant_latency_seconds_bucket{{variant="canary",le="{le}"}} {count}')
    lines.append(f'prodai_variant_latency_seconds_count{{variant="canary"}} {len(latencies)}')
    lines.append(f'prodai_variant_latency_seconds_sum{{variant="canary"}} {sum(latencies)}')
    return "\n".join(lines) + "\n"


def test_a_window_is_the_difference_of_two_reads_of_one_variant() -> None:
    before = snapshot(metrics_text(100, 0, 0, [0.005] * 100), "canary")
    # Since then: 90 fast answers, 10 slow ones (0.5 s), 2 answered 5xx, 3 failed over to the stable version.
    after = snapshot(metrics_text(198, 2, 3, [0.005] * 190 + [0.5] * 10), "canary")
    w = window(before, after, seconds=10.0)
    assert w.requests == 98 + 2 + 3
    assert w.error_rate == pytest.approx(5 / 103)
    # 100 latencies in the window: 90 in (0, 10ms], 10 in (100ms, 1s]. p50 interpolates in the first bucket,
    # p95 half way into the (0.1, 1] bucket (rank 95 of 100: 5 of its 10), as Prometheus' histogram_quantile.
    assert w.percentile_ms(50) == pytest.approx(10 * 50 / 90)
    assert w.percentile_ms(95) == pytest.approx(100 + 900 * 0.5)
    assert w.figure("avg_ms") == pytest.approx((90 * 5 + 10 * 500) / 100)
    assert w.figure("rps") == pytest.approx(10.3)


def test_a_counter_that_went_down_means_a_restarted_server_and_the_new_counts_are_the_window() -> None:
    before = snapshot(metrics_text(500, 0, 0, [0.005] * 500), "canary")
    after = snapshot(metrics_text(7, 1, 0, [0.005] * 8), "canary")
    w = window(before, after, seconds=2.0)
    assert w.requests == 8 and w.error_rate == pytest.approx(1 / 8)


def test_a_variant_without_traffic_has_no_figures_to_pass_on() -> None:
    empty = snapshot("", "canary")
    w = window(empty, empty, seconds=5.0)
    assert w.requests == 0 and w.error_rate is None and w.percentile_ms(95) is None


@pytest.fixture
def stable_project(registered_copy: Path) -> Path:
    (registered_copy / "prodai.yaml").write_text(STABLE_SPLIT, encoding="utf-8")
    return registered_copy


def test_dry_run_prints_the_plan_and_changes_nothing(stable_project: Path) -> None:
    before = (stable_project / "prodai.yaml").read_text()
    result = run_cli(
        "--json", "rollout", "clf@staging", "--steps", "10%,50%,100%", "--interval", "90s",
        "--slo", "p95 < 300ms", "--dry-run", cwd=stable_project,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert plan["stable"] == {"name": "production", "version": 1, "alias": "production"}
    assert plan["candidate"] == {"name": "staging", "version": 2, "alias": "staging"}
    assert plan["steps"] == [0.1, 0.5, 1.0] and plan["interval_s"] == 90.0
    assert plan["promote_alias"] == "production" and plan["slos"] == ["p95 < 300ms"]
    assert (stable_project / "prodai.yaml").read_text() == before
    assert not (stable_project / ".prodai" / "rollout.json").exists()


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        (
            STABLE_SPLIT.replace(
                "    production: {version: 1, weight: 1.0, alias: production}",
                "    v1: {version: 1, weight: 0.5}\n    v2: {version: 2, weight: 0.5}",
            ),
            ("clf/2",),
            "one stable version taking all traffic",
        ),
        (STABLE_SPLIT, ("clf/1",), "already serves all traffic"),
        (STABLE_SPLIT, ("clf/2", "--slo", "max < 1s"), "cannot be judged from live metrics"),
        (STABLE_SPLIT, ("clf/2", "--steps", "50%,20%"), "--steps must increase"),
        (STABLE_SPLIT, ("emb/1",), "not 'emb'"),
    ],
    ids=["split", "same-version", "max-slo", "steps", "other-model"],
)
def test_a_rollout_that_cannot_be_judged_or_started_is_refused_before_anything_is_written(
    stable_project: Path, config: str, args: tuple[str, ...], message: str
) -> None:
    (stable_project / "prodai.yaml").write_text(config, encoding="utf-8")
    result = run_cli("rollout", *args, "--url", "http://127.0.0.1:9", cwd=stable_project)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert (stable_project / "prodai.yaml").read_text() == config
    assert not (stable_project / ".prodai" / "rollout.json").exists()


def test_a_missing_candidate_is_an_error_naming_it(stable_project: Path) -> None:
    result = run_cli("rollout", "clf/9", "--url", "http://127.0.0.1:9", cwd=stable_project)
    assert result.exit_code == 1
    assert "9" in result.stderr and "clf" in result.stderr


def test_status_without_a_rollout_says_so(stable_project: Path) -> None:
    result = run_cli("--json", "rollout", "status", cwd=stable_project)
    assert result.exit_code == 0 and json.loads(result.stdout) == {"status": None}
    assert run_cli("rollout", "--resume", cwd=stable_project).exit_code == 2
    assert run_cli("rollout", "--abort", cwd=stable_project).exit_code == 2


def test_agreement_is_read_from_the_shadow_series_of_the_candidate_over_the_window() -> None:
    def text(compared: int, agreed: float) -> str:
        return (
            f'prodai_shadow_compared_total{{variant="canary",shadow="v1"}} {compared}\n'
            f'prodai_shadow_agreement_total{{variant="canary",shadow="v1"}} {agreed}\n'
            'prodai_shadow_compared_total{variant="stable",shadow="v9"} 500\n'
        )

    w = window(snapshot(text(40, 39), "canary"), snapshot(text(140, 99), "canary"), seconds=5.0)
    assert w.compared == 100 and w.agreement == pytest.approx(0.6) and w.figure("agreement") == pytest.approx(0.6)
    assert window(snapshot("", "canary"), snapshot("", "canary"), 1.0).agreement is None


def test_agreement_is_an_slo_of_live_traffic_only() -> None:
    from prodai_cli.slo import parse_slo

    slo = parse_slo("agreement >= 90%", live=True)
    assert (slo.key, slo.threshold, slo.holds(0.95), slo.holds(0.85)) == ("agreement", 0.9, True, False)
    with pytest.raises(UsageError, match="unknown metric 'agreement'") as refused:
        parse_slo("agreement > 0.9")  # a load test cannot measure it
    assert "prodai rollout only" in (refused.value.hint or "")
    with pytest.raises(UsageError):
        parse_slo("agreement > 120%", live=True)


def test_an_agreement_slo_plans_a_shadow_of_the_stable_version(stable_project: Path) -> None:
    result = run_cli(
        "--json", "rollout", "clf@staging", "--slo", "agreement > 0.95", "--dry-run", cwd=stable_project
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert plan["shadow_sample"] == 1.0 and plan["slos"] == ["agreement > 95%"]
    assert plan["original_ab"]["shadow"] is None
