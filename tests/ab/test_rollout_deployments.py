"""Issue 21 (canary on deployments), without Docker: the window summed over replicas keyed by container id, the
Argo Rollouts hand-off rendered for k8s, and the refusals of `--deployment` (a real MLflow SQLite registry;
tests/deploy/test_rollout_replicas.py runs a rollout against a real docker deployment of 2 replicas)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_cli

from prodai_cli.rollout.replicas import Member, Replicas

STABLE_SPLIT = """\
deploy:
  namespace: shop
  replicas: 3
ab:
  enabled: true
  model: clf
  variants:
    production: {version: 1, weight: 1.0, alias: production}
"""
BOUNDS = [0.01, 0.1, 1.0, math.inf]


def exposition(answered: int, fallbacks: int, latencies: list[float], loaded: float = 100.0) -> str:
    """A replica's /metrics for variant `staging` (as serving/metrics.py writes it)."""
    lines = [
        f'prodai_requests_total{{route="/predict",status="200",model_version="2",variant="staging"}} {answered}',
        f'prodai_ab_fallbacks_total{{variant="staging",fallback="production",reason="model_error"}} {fallbacks}',
        f"prodai_config_reload_timestamp_seconds {loaded}",
        "prodai_config_reload_success 1",
    ]
    for bound in BOUNDS:
        le = "+Inf" if math.isinf(bound) else repr(bound)
        lines.append(
            f'prodai_variant_latency_seconds_bucket{{variant="staging",le="{le}"}} {sum(x <= bound for x in latencies)}'
        )
    lines.append(f'prodai_variant_latency_seconds_sum{{variant="staging"}} {sum(latencies)}')
    return "\n".join(lines) + "\n"


class Body:
    """One replica's answer to /metrics (the engine's Server reads it over HTTP; here it is given)."""

    def __init__(self, bodies: dict[str, str], url: str) -> None:
        self.bodies, self.url = bodies, url

    def metrics(self) -> str:
        return self.bodies[self.url]

    def reload_state(self) -> tuple[float, float]:
        from prodai_cli.serving.metrics import parse_exposition, sample_sum

        samples = parse_exposition(self.bodies[self.url])
        return (
            sample_sum(samples, "prodai_config_reload_timestamp_seconds"),
            sample_sum(samples, "prodai_config_reload_success"),
        )


class ListedReplicas(Replicas):
    """`Replicas` whose container listing (the Docker engine, an edge here) is given by the test."""

    listed: list[Member]

    def members(self) -> list[Member]:
        return self.listed


def replicas(bodies: dict[str, str], ids: list[str]) -> ListedReplicas:
    found = ListedReplicas("http://lb", {}, "shop", "docker", lambda url, _headers: Body(bodies, url))
    found.listed = [Member(cid, f"http://{cid}") for cid in ids]
    return found


def test_the_window_is_the_sum_of_every_replica_keyed_by_container_and_new_or_restarted_ones_count_from_zero() -> None:
    bodies = {"http://a": exposition(100, 0, [0.005] * 100), "http://b": exposition(50, 1, [0.005] * 50)}
    group = replicas(bodies, ["a", "b"])
    baseline = group.baseline("staging")
    assert set(baseline["replicas"]) == {"a", "b"}
    # Since: a answered 10 more (2 slow); b restarted (its counters start again: 4 answered, 1 fallback);
    # c replaced a retired replica mid-step and answered 6 (all of them inside the window).
    bodies["http://a"] = exposition(110, 0, [0.005] * 108 + [0.5] * 2)
    bodies["http://b"] = exposition(4, 1, [0.005] * 4)
    bodies["http://c"] = exposition(6, 0, [0.05] * 6)
    group.listed.append(Member("c", "http://c"))
    w = group.window(baseline, "staging", 10.0)
    assert (w.answered, w.fallbacks) == (10 + 4 + 6, 1)
    assert w.requests == 21
    assert w.error_rate == pytest.approx(1 / 21)
    assert w.buckets[math.inf] == 20 and w.buckets[0.01] == 8 + 4  # a's 8 fast, b's 4; c's in (10ms, 100ms]
    assert w.seconds == 10.0  # replicas serve side by side: elapsed time is not summed


def test_every_replica_must_have_reloaded_and_the_lagging_one_is_named() -> None:
    bodies = {"http://aaaa": exposition(0, 0, [], loaded=200.0), "http://bbbb": exposition(0, 0, [], loaded=150.0)}
    group = replicas(bodies, ["aaaa", "bbbb"])
    since, ok = group.reload_state()
    assert (since, ok) == (200.0, 1.0)  # the latest load of any replica: each must load again after it
    bodies["http://aaaa"] = exposition(0, 0, [], loaded=260.0)
    from prodai_cli.errors import ProdaiError

    with pytest.raises(ProdaiError, match=r"bbbb .*did not reload"):
        group.wait_reloaded(since, timeout_s=0.0, sleep=lambda _s: None)
    bodies["http://bbbb"] = exposition(0, 0, [], loaded=261.0)
    group.wait_reloaded(since, timeout_s=0.0, sleep=lambda _s: None)


@pytest.fixture
def stable_project(registered_copy: Path) -> Path:
    (registered_copy / "prodai.yaml").write_text(STABLE_SPLIT, encoding="utf-8")
    return registered_copy


def test_render_writes_an_argo_rollout_and_analysis_template_equivalent_to_the_plan(
    stable_project: Path, tmp_path: Path
) -> None:
    before = (stable_project / "prodai.yaml").read_text()
    out = tmp_path / "argo"
    result = run_cli(
        "--json", "rollout", "clf@staging", "--render", str(out), "--steps", "5%,25%,100%", "--interval", "2m",
        "--slo", "p95 < 300ms", "--slo", "error_rate < 1%", "--slo", "agreement > 90%", "--slo", "avg <= 120ms",
        "--prometheus", "http://prom.monitoring:9090", cwd=stable_project,
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    assert sorted(Path(p).name for p in json.loads(result.stdout)["rendered"]) == [
        "analysis-template.yaml",
        "rollout.yaml",
    ]
    rollout = yaml.safe_load((out / "rollout.yaml").read_text())
    assert (rollout["apiVersion"], rollout["kind"]) == ("argoproj.io/v1alpha1", "Rollout")
    assert rollout["metadata"] == {
        "name": "prodai-clf",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/instance": "prodai-clf", "app.kubernetes.io/managed-by": "prodai"},
    }
    spec = rollout["spec"]
    assert spec["replicas"] == 3
    assert spec["workloadRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "prodai-clf",
        "scaleDown": "progressively",
    }
    # The same selector as the Deployment `prodai deploy --target k8s` renders.
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/instance": "prodai-clf"}}
    canary = spec["strategy"]["canary"]
    assert canary["steps"] == [
        {"setWeight": 5},
        {"pause": {"duration": "120s"}},
        {"setWeight": 25},
        {"pause": {"duration": "120s"}},
        {"setWeight": 100},
        {"pause": {"duration": "120s"}},
    ]
    assert canary["analysis"] == {"templates": [{"templateName": "prodai-clf-slos"}]}

    template = yaml.safe_load((out / "analysis-template.yaml").read_text())
    assert (template["kind"], template["metadata"]["name"]) == ("AnalysisTemplate", "prodai-clf-slos")
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    assert list(metrics) == ["p95-latency", "error-rate", "agreement", "avg-latency"]
    for metric in metrics.values():
        assert metric["provider"]["prometheus"]["address"] == "http://prom.monitoring:9090"
        assert (metric["interval"], metric["initialDelay"], metric["failureLimit"]) == ("120s", "120s", 0)
    sel = '{variant="staging"}'
    assert metrics["p95-latency"]["successCondition"] == "result[0] < 0.3"  # 300 ms, the histogram is in s
    assert metrics["p95-latency"]["provider"]["prometheus"]["query"] == (
        f"histogram_quantile(0.95, sum by (le) (rate(prodai_variant_latency_seconds_bucket{sel}[120s])))"
    )
    assert metrics["error-rate"]["successCondition"] == "result[0] < 0.01"
    assert metrics["error-rate"]["provider"]["prometheus"]["query"] == (
        '((sum(increase(prodai_requests_total{variant="staging",status=~"5.."}[120s])) or vector(0)) + '
        f"(sum(increase(prodai_ab_fallbacks_total{sel}[120s])) or vector(0))) / "
        f"(sum(increase(prodai_requests_total{sel}[120s])) + "
        f"(sum(increase(prodai_ab_fallbacks_total{sel}[120s])) or vector(0)))"
    )
    assert metrics["agreement"]["successCondition"] == "result[0] > 0.9"
    assert metrics["agreement"]["provider"]["prometheus"]["query"] == (
        f"sum(increase(prodai_shadow_agreement_total{sel}[120s])) / "
        f"sum(increase(prodai_shadow_compared_total{sel}[120s]))"
    )
    assert metrics["avg-latency"]["successCondition"] == "result[0] <= 0.12"
    assert metrics["avg-latency"]["provider"]["prometheus"]["query"] == (
        f"sum(rate(prodai_variant_latency_seconds_sum{sel}[120s])) / "
        f"sum(rate(prodai_variant_latency_seconds_count{sel}[120s]))"
    )
    for path in out.iterdir():  # StrictUndefined rendered everything; no Argo `{{args}}` left to fill
        assert "{{" not in path.read_text() and "{%" not in path.read_text()
    # A hand-off: nothing here ran, nothing changed.
    assert "needs the Argo Rollouts controller and Prometheus" in (out / "rollout.yaml").read_text()
    assert (stable_project / "prodai.yaml").read_text() == before
    assert not (stable_project / ".prodai" / "rollout.json").exists()


def test_a_deployment_that_is_unknown_or_on_k8s_is_refused_before_anything_is_written(
    stable_project: Path,
) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.deploy import records

    before = (stable_project / "prodai.yaml").read_text()
    unknown = run_cli("rollout", "clf@staging", "--deployment", "nowhere", cwd=stable_project)
    assert unknown.exit_code == 2 and "No deployment named 'nowhere'" in unknown.stderr
    settings = load_settings(str(stable_project / "prodai.yaml"))
    record: Any = records.DeploymentRecord(
        name="cluster", url=str(stable_project / ".prodai" / "k8s" / "cluster"), model="clf", version=1,
        target="k8s", image="img:1", container_id=None, previous_image=None, created=records.now_iso(),
    )  # fmt: skip
    records.save(settings, record)
    on_k8s = run_cli("rollout", "clf@staging", "--deployment", "cluster", cwd=stable_project)
    assert on_k8s.exit_code == 2 and "--render" in on_k8s.stderr, on_k8s.stderr
    assert (stable_project / "prodai.yaml").read_text() == before
    assert not (stable_project / ".prodai" / "rollout.json").exists()


def test_a_url_resolves_to_the_running_docker_deployment_it_belongs_to_and_not_to_a_stopped_one(
    stable_project: Path,
) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.deploy import records
    from prodai_cli.rollout.replicas import resolve_deployment

    settings = load_settings(str(stable_project / "prodai.yaml"))

    def record(name: str, url: str, status: str) -> Any:
        return records.DeploymentRecord(
            name=name, url=url, model="clf", version=1, target="docker", image="img:1", container_id="c",
            previous_image=None, created=records.now_iso(), status=status,
        )  # fmt: skip

    records.save(settings, record("shop", "http://127.0.0.1:8700", "running"))
    records.save(settings, record("old", "http://127.0.0.1:8800", "stopped"))
    found = resolve_deployment(settings, None, "http://127.0.0.1:8700/")
    assert found is not None and (found.name, found.target) == ("shop", "docker")
    # A stopped deployment's URL may be a plain `prodai serve` now; any other URL is one server.
    assert resolve_deployment(settings, None, "http://127.0.0.1:8800") is None
    assert resolve_deployment(settings, None, "http://127.0.0.1:9000") is None
    from prodai_cli.errors import UsageError

    with pytest.raises(UsageError, match="stopped, not running"):
        resolve_deployment(settings, "old", None)
