"""`prodai loadtest` against a real `prodai serve` process on loopback: verdicts, reports, workers, MLflow.

Every run is real Locust (child processes, FastHttpUser) against the real server with a tiny model; runs are a
few seconds long. The server's own Prometheus counters are the independent witness of what was sent.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow

USERS = 4


def _loadtest(served: Any, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    result = run_cli("loadtest", "--json", "-u", str(USERS), "-r", "20", *args, cwd=served.root, timeout=240)
    summary = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, summary, result.stderr


def _stats_row(report_dir: Path, name: str) -> dict[str, str]:
    rows = list(csv.DictReader(io.StringIO((report_dir / "locust_stats.csv").read_text(encoding="utf-8"))))
    for row in rows:
        if row["Name"] == name:
            return row
    raise AssertionError(f"no {name!r} row in {[r['Name'] for r in rows]}")


def test_healthy_run_passes_its_slos_and_writes_reports(served: Any, tmp_path: Path) -> None:
    report_dir = tmp_path / "reports"
    sent_before = served.predict_count("200")
    code, summary, stderr = _loadtest(
        served,
        "--url",
        served.url,
        "--duration",
        "5s",
        "--warmup",
        "1s",
        "--user-ids",
        "20",
        "--slo",
        "p95 < 5s",
        "--slo",
        "error_rate < 1%",
        "--slo",
        "rps > 1",
        "--report-dir",
        str(report_dir),
    )
    assert code == 0, stderr
    assert summary is not None and summary["passed"] is True and summary["failed"] == []
    assert [s["slo"] for s in summary["slos"]] == ["p95 < 5s", "error_rate < 1%", "rps > 1"]
    assert all(s["passed"] for s in summary["slos"])
    stats, run = summary["stats"], summary["run"]
    assert stats["requests"] > 10 and stats["failures"] == 0 and stats["error_rate"] == 0
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"] + 1
    # The warm-up second is in Locust's whole-run figures but not in the SLO window.
    assert run["requests"] > stats["requests"]
    assert 3.0 < summary["window_seconds"] < 5.5
    # The server counted what Locust sent (plus at most the requests cut off in flight when the run stopped),
    # and the one request loadtest sends before any load (the preflight).
    sent = served.predict_count("200") - sent_before
    assert run["requests"] + 1 <= sent <= run["requests"] + USERS + 1
    # The server names its variant ("default" without A/B): the figures are per variant too.
    assert list(summary["variants"]) == ["default"]
    assert summary["variants"]["default"]["requests"] == stats["requests"]
    # Reports: summary.json equals what --json printed; Locust's CSV and HTML show the same run.
    on_disk = json.loads((report_dir / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["stats"] == stats and on_disk["passed"] is True
    for name in ("report.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust.log"):
        assert (report_dir / name).is_file(), name
        assert name in on_disk["files"]
    assert int(_stats_row(report_dir, "Aggregated")["Request Count"]) == run["requests"]
    assert int(_stats_row(report_dir, "/predict [default v1]")["Failure Count"]) == 0
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert "/predict [default v1]" in html and served.url in html


def test_an_slo_it_cannot_meet_fails_with_exit_1_and_is_named(served: Any, tmp_path: Path) -> None:
    code, summary, stderr = _loadtest(
        served,
        "--url",
        served.url,
        "--duration",
        "3s",
        "--slo",
        "p95 < 1ms",
        "--slo",
        "error_rate < 1%",
        "--report-dir",
        str(tmp_path / "r"),
    )
    assert code == 1, stderr
    assert summary is not None and summary["passed"] is False
    assert summary["failed"] == ["p95 < 1ms"]
    assert "Load test failed: p95 < 1ms (observed" in stderr
    assert "error_rate" not in stderr.split("Load test failed:")[1].splitlines()[0]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["failed"] == ["p95 < 1ms"]


def test_server_errors_fail_error_rate(served: Any, tmp_path: Path) -> None:
    # The server refuses texts over serving.max_text_chars (1000) with a real 422: half the payloads are too long.
    data = tmp_path / "mixed.jsonl"
    lines = []
    for i in range(20):
        lines.append({"text": f"good movie {i}"})
        lines.append({"text": "terrible movie " * 80 + str(i)})
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    refused_before = served.predict_count("422")
    code, summary, stderr = _loadtest(
        served,
        "--url",
        served.url,
        "--duration",
        "4s",
        "--data",
        str(data),
        "--slo",
        "error_rate < 1%",
        "--slo",
        "p95 < 5s",
        "--report-dir",
        str(tmp_path / "r"),
    )
    assert code == 1, stderr
    assert summary is not None and summary["failed"] == ["error_rate < 1%"]
    assert "Load test failed: error_rate < 1% (observed" in stderr
    stats = summary["stats"]
    assert 0.25 < stats["error_rate"] < 0.75
    assert summary["errors"] and all("422" in e["error"] for e in summary["errors"])
    assert sum(e["occurrences"] for e in summary["errors"]) == stats["failures"]
    assert summary["settings"]["payloads"] == 40
    # The failures are the server's answers, not the load generator's: the server counted its 422s.
    refused = served.predict_count("422") - refused_before
    assert summary["run"]["failures"] <= refused <= summary["run"]["failures"] + USERS


def test_workers_run_and_their_totals_add_up(served: Any, tmp_path: Path) -> None:
    sent_before = served.predict_count("200")
    code, summary, stderr = _loadtest(
        served,
        "--url",
        served.url,
        "--duration",
        "5s",
        "--warmup",
        "1s",
        "--workers",
        "2",
        "--slo",
        "error_rate < 1%",
        "--report-dir",
        str(tmp_path / "r"),
    )
    assert code == 0, stderr
    assert summary is not None and summary["settings"]["workers"] == 2
    workers = summary["workers"]
    assert len(workers) == 2 and len({w["id"] for w in workers}) == 2
    assert all(w["requests"] > 0 for w in workers), workers
    # Each worker counted its own requests; the master aggregated Locust's reports: they must agree exactly.
    assert sum(w["requests"] for w in workers) == summary["run"]["requests"] == summary["worker_requests"]
    assert sum(w["failures"] for w in workers) == summary["run"]["failures"] == 0
    assert 0 < summary["stats"]["requests"] < summary["run"]["requests"]
    sent = served.predict_count("200") - sent_before
    assert summary["run"]["requests"] + 1 <= sent <= summary["run"]["requests"] + USERS + 1  # + the preflight
    assert (tmp_path / "r" / "locust-worker-1.log").is_file() and (tmp_path / "r" / "locust-worker-2.log").is_file()


def test_summary_reaches_mlflow_on_the_deployed_version(served: Any, tmp_path: Path) -> None:
    records = served.root / ".prodai" / "deployments"
    records.mkdir(parents=True, exist_ok=True)
    (records / "local.json").write_text(
        json.dumps({"name": "local", "url": served.url, "model": "clf", "version": 1}), encoding="utf-8"
    )
    code, summary, stderr = _loadtest(
        served, "--deployment", "local", "--duration", "3s", "--slo", "p95 < 5s", "--report-dir", str(tmp_path / "a")
    )
    assert code == 0, stderr
    assert summary is not None and summary["target"]["deployment"] == "local"
    run_id = summary["mlflow"]["run_id"]
    mlflow = summary["mlflow"]
    assert {k: mlflow[k] for k in ("run_id", "model", "version")} == {"run_id": run_id, "model": "clf", "version": 1}
    # Only v1 answered (the server serves clf@production): one run, on the named version.
    assert mlflow["runs"] == [{"run_id": run_id, "model": "clf", "version": 1, "passed": True}]
    assert mlflow["named_answered"] is True and summary["mixed"] is False

    from mlflow.tracking import MlflowClient

    from prodai_cli.config import load_settings
    from prodai_cli.registry import Registry

    settings = load_settings(served.root / "prodai.yaml")
    tags = Registry(settings).get_version("clf/1").tags
    assert tags["prodai.loadtest.passed"] == "true"
    assert tags["prodai.loadtest.run_id"] == run_id
    assert tags["prodai.loadtest.at"].endswith("+00:00")
    assert tags["prodai.loadtest.slos"] == "p95 < 5s"
    assert tags["prodai.loadtest.requests"] == str(summary["stats"]["requests"])
    # Version 2 was not tested: it carries no evidence.
    assert "prodai.loadtest.run_id" not in Registry(settings).get_version("clf/2").tags

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["prodai.action"] == "loadtest"
    assert (run.data.tags["prodai.model"], run.data.tags["prodai.version"]) == ("clf", "1")
    assert run.data.metrics["requests"] == summary["stats"]["requests"]
    assert run.data.metrics["p95_ms"] == summary["stats"]["p95_ms"]
    assert run.data.metrics["slo_passed"] == 1.0
    assert run.data.params["users"] == str(USERS) and run.data.params["deployment"] == "local"
    artifacts = {Path(a.path).name for a in client.list_artifacts(run_id, "loadtest")}
    assert {"summary.json", "report.html", "locust_stats.csv"} <= artifacts

    # A later failing run of the same version replaces the evidence: check reads the latest.
    code, summary, stderr = _loadtest(
        served, "--deployment", "local", "--duration", "2s", "--slo", "p95 < 1ms", "--report-dir", str(tmp_path / "b")
    )
    assert code == 1, stderr
    tags = Registry(settings).get_version("clf/1").tags
    assert tags["prodai.loadtest.passed"] == "false"
    assert tags["prodai.loadtest.failed"] == "p95 < 1ms"
    assert tags["prodai.loadtest.run_id"] == summary["mlflow"]["run_id"] != run_id
    assert client.get_run(tags["prodai.loadtest.run_id"]).data.metrics["slo_passed"] == 0.0
