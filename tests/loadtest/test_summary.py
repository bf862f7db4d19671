"""The summary a load test writes: verdict, per-variant figures, MLflow fields; and import isolation of Locust."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prodai_cli.loadtest.plan import LoadtestPlan, Target
from prodai_cli.loadtest.summary import build_summary, endpoints, mlflow_fields, variants, write_summary
from prodai_cli.slo import parse_slos


def _row(name: str, requests: int, failures: int, p95: float | None = 10.0) -> dict[str, Any]:
    return {
        "name": name,
        "method": "POST",
        "requests": requests,
        "failures": failures,
        "error_rate": failures / requests if requests else None,
        "p95_ms": p95,
        "p99_ms": p95,
        "avg_ms": p95,
        "rps": float(requests),
    }


def _final(entries: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    requests = sum(r["requests"] for r in entries)
    failures = sum(r["failures"] for r in entries)
    total = {**_row("Aggregated", requests, failures, 20.0 if requests else None), "method": ""}
    return {
        "window": {"total": total, "entries": entries, "errors": []},
        "run": {"total": {**total, "requests": requests + 5}, "entries": entries, "errors": []},
        "window_seconds": 4.0,
        "workers": [],
        "exceptions": [],
        "error": None,
        **extra,
    }


def test_variants_come_from_request_names_and_unlabelled_failures_are_grouped() -> None:
    rows = [_row("/predict [a]", 60, 1), _row("/predict [b]", 38, 0), _row("/predict", 2, 2, None)]
    by_variant = variants(rows)
    assert list(by_variant) == ["(none)", "a", "b"]
    assert by_variant["a"]["requests"] == 60 and by_variant["a"]["failures"] == 1
    assert by_variant["(none)"]["failures"] == 2
    assert endpoints(rows) == [
        {"method": "POST", "name": "/predict", "requests": 100, "failures": 3, "error_rate": 0.03}
    ]


def test_no_variants_when_the_server_names_none() -> None:
    assert variants([_row("/predict", 10, 0)]) == {}


def test_summary_verdict_names_failed_slos(tmp_path: Path) -> None:
    plan = LoadtestPlan(
        target=Target(url="http://h:1", model="clf", version=3),
        slos=parse_slos(["p95 < 50ms", "error_rate < 1%"]),
        report_dir=tmp_path,
    )
    summary, results = build_summary(plan, _final([_row("/predict [a]", 100, 5)]), started_at=0, finished_at=9)
    assert summary["passed"] is False
    assert summary["failed"] == ["error_rate < 1%"]
    assert [r.passed for r in results] == [True, False]
    assert summary["stats"]["requests"] == 100 and summary["run"]["requests"] == 105
    assert summary["target"] == {"url": "http://h:1", "deployment": None, "model": "clf", "version": 3}
    path = write_summary(tmp_path, summary)
    on_disk = json.loads(path.read_text())
    assert on_disk["failed"] == ["error_rate < 1%"]
    assert "summary.json" in on_disk["files"]


def test_summary_fails_without_requests_or_with_locust_errors(tmp_path: Path) -> None:
    plan = LoadtestPlan(target=Target(url="http://h:1"), slos=parse_slos(["rps >= 0"]), report_dir=tmp_path)
    summary, results = build_summary(plan, _final([]), started_at=0, finished_at=1)
    assert results[0].passed  # rps >= 0 holds on an empty run...
    assert summary["passed"] is False  # ...but a run that measured nothing never passes
    assert summary["problems"] == ["no request completed inside the SLO window"]
    final = _final([_row("/predict", 10, 0)], error="every Locust worker went away during the run")
    summary, _ = build_summary(plan, final, started_at=0, finished_at=1)
    assert summary["passed"] is False and "worker went away" in summary["problems"][0]


def test_mlflow_fields_flatten_figures_and_variants(tmp_path: Path) -> None:
    plan = LoadtestPlan(
        target=Target(url="http://h:1", deployment="web"), users=3, slos=parse_slos(["p95 < 50ms"]), report_dir=tmp_path
    )
    summary, _ = build_summary(
        plan, _final([_row("/predict [a]", 10, 0), _row("/predict [b]", 10, 1)]), started_at=0, finished_at=1
    )
    fields = mlflow_fields(summary)
    metrics = fields["metrics"]
    assert metrics["requests"] == 20 and metrics["failures"] == 1 and metrics["p95_ms"] == 20.0
    assert metrics["slo_passed"] == 1.0 and metrics["run_requests"] == 25 and metrics["window_seconds"] == 4.0
    assert metrics["variant.b.failures"] == 1 and metrics["variant.a.p95_ms"] == 10.0
    assert fields["params"]["users"] == "3" and fields["params"]["deployment"] == "web"
    assert fields["params"]["slos"] == "p95 < 50ms"
    assert fields["version_tags"]["prodai.loadtest.slos"] == "p95 < 50ms"
    assert fields["version_tags"]["prodai.loadtest.failed"] == ""
    assert fields["version_tags"]["prodai.loadtest.p95_ms"] == "20"


def test_cli_and_parent_side_never_import_locust() -> None:
    # Importing locust monkey-patches the process with gevent: only the Locust child processes may do it.
    code = (
        "import sys, prodai_cli.cli, prodai_cli.commands.loadtest, prodai_cli.loadtest.runner, "
        "prodai_cli.loadtest.plan, prodai_cli.loadtest.summary, prodai_cli.serving.app\n"
        "from prodai_cli.cli import app\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent', 'geventhttpclient'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_versions_come_from_request_names_and_a_variant_answered_by_two_versions_is_merged() -> None:
    from prodai_cli.loadtest.summary import versions

    rows = [_row("/predict [a v1]", 30, 0), _row("/predict [a v2]", 5, 1), _row("/predict [b v2]", 65, 0)]
    by_version = versions(rows)
    assert list(by_version) == ["1", "2"]
    assert by_version["2"]["requests"] == 70 and by_version["2"]["failures"] == 1
    assert variants(rows)["a"]["requests"] == 35
    times = {
        ("/predict [a v1]", "POST"): [5.0, 7.0],
        ("/predict [a v2]", "POST"): [9.0],
        ("/predict [b v2]", "POST"): [1.0],
    }
    exact = versions(rows, times, [50.0, 100.0])
    assert exact["2"]["p100_ms"] == 9.0 and exact["2"]["p50_ms"] == 1.0 and exact["1"]["p50_ms"] == 5.0


def test_a_mixed_run_is_judged_and_recorded_per_version(tmp_path: Path) -> None:
    rows = [_row("/predict [a v1]", 40, 0, p95=10.0), _row("/predict [b v2]", 60, 6, p95=900.0)]
    plan = LoadtestPlan(
        target=Target(url="http://x", model="clf", version=1), slos=parse_slos(["p95 < 500ms", "error_rate < 5%"])
    )
    final = _final(rows)
    summary, _ = build_summary(plan, final, started_at=0.0, finished_at=1.0)
    assert summary["mixed"] is True
    assert summary["version_verdicts"]["1"]["passed"] is True
    assert summary["version_verdicts"]["2"] == {
        "passed": False,
        "failed": ["p95 < 500ms", "error_rate < 5%"],
        "requests": 60,
    }
    fields = mlflow_fields(summary, version="2")
    assert fields["version_tags"]["prodai.loadtest.requests"] == "60"
    assert fields["version_tags"]["prodai.loadtest.mixed"] == "v1 40, v2 60"
    assert fields["metrics"]["slo_passed"] == 0.0 and fields["metrics"]["version_requests_share"] == 0.6
    assert mlflow_fields(summary, version="1")["metrics"]["slo_passed"] == 1.0
