"""`prodai ship` with `--target local`: real candidate server processes, a real Locust load test, the real
checklist, a real MLflow registry. The slow version is slow by a real server setting: `serving.max_wait_ms:
1000` makes every request wait up to a second for its micro-batch to fill (4 users never fill it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow

# A short load test: ship's gate, sized for a test.
SHIP_ENV = {"PRODAI_CHECK__SHIP_DURATION": "5s", "PRODAI_CHECK__SHIP_WARMUP": "1s", "PRODAI_CHECK__SHIP_USERS": "4"}


def _registry(root: Path) -> Any:
    from prodai_cli.config import ProdaiConfig, Settings
    from prodai_cli.registry import Registry

    # The registry lives in .prodai/ whether or not the project has a prodai.yaml.
    return Registry(Settings(config=ProdaiConfig(), path=None, root=root))


def _down(url: str | None) -> bool:
    assert url
    try:
        httpx.get(f"{url}/health/live", timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_ship_of_a_good_version_moves_the_alias_and_records_the_report(configured_project: Any) -> None:
    root = configured_project()
    config_before = (root / "prodai.yaml").read_text(encoding="utf-8")
    result = run_cli(
        "ship",
        "clf/2",
        "--slo",
        "p95 < 2000ms",
        "--slo",
        "error_rate < 1%",
        "--json",
        cwd=root,
        env=SHIP_ENV,
        timeout=600,
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["previous"] == 1
    assert [s["name"] for s in report["steps"]] == ["key", "deploy", "loadtest", "redeploy", "check", "promote", "stop"]
    assert report["loadtest"]["passed"] is True and report["checks"]["passed"] is True
    registry = _registry(root)
    assert registry.get_version("clf@production").version == 2
    tags = registry.get_version("clf/2").tags
    assert tags["prodai.ship.passed"] == "true" and tags["prodai.ship.previous"] == "1"
    assert tags["prodai.loadtest.passed"] == "true"
    run_id = tags["prodai.ship.run_id"]
    assert run_id == report["run_id"]
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="ship/report.json", tracking_uri=registry.tracking_uri
    )
    recorded = json.loads(Path(local).read_text(encoding="utf-8"))
    assert recorded["passed"] is True and recorded["version"] == 2 and recorded["checks"]["passed"] is True
    assert registry.client.get_run(run_id).data.tags["prodai.ship.promoted"] == "true"
    assert _down(report["url"]), "a local candidate is stopped after the ship"
    assert (root / "prodai.yaml").read_text(encoding="utf-8") == config_before, "the temporary key was removed"


def test_ship_of_a_version_that_fails_its_slo_keeps_the_alias_and_exits_1(configured_project: Any) -> None:
    # Embedded defaults (auth on, no prodai.yaml): the temporary key needs a config file, which ship removes.
    root = configured_project(embedded_defaults=True)
    # An absolute gate: this test is about a slow version failing, not about how busy the machine is.
    env = {**SHIP_ENV, "PRODAI_SERVING__MAX_WAIT_MS": "1000", "PRODAI_CHECK__SHIP_SCALE_LATENCY": "false"}
    result = run_cli("ship", "clf/2", "--slo", "p95 < 500ms", "--json", cwd=root, env=env, timeout=600)
    assert result.exit_code == 1, result.stderr[-3000:]
    assert "Not shipped: the load test failed: p95 < 500ms" in result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    steps = {s["name"]: s["state"] for s in report["steps"]}
    assert steps["loadtest"] == "failed" and "check" not in steps and steps["stop"] == "ok"
    (slo,) = report["loadtest"]["slos"]
    assert slo["passed"] is False and slo["observed"] >= 900  # every request waited ~1 s for its batch
    registry = _registry(root)
    assert registry.get_version("clf@production").version == 1
    tags = registry.get_version("clf/2").tags
    assert tags["prodai.ship.passed"] == "false" and "p95 < 500ms" in tags["prodai.ship.reason"]
    assert tags["prodai.loadtest.passed"] == "false"
    assert _down(report["url"]), "the failed candidate is stopped"
    assert not (root / "prodai.yaml").exists(), "the config made for the temporary key is gone with it"


def test_ship_refuses_bad_input_before_starting_anything(configured_project: Any) -> None:
    root = configured_project()
    bad_slo = run_cli("ship", "clf/2", "--slo", "p95 <", cwd=root)
    assert bad_slo.exit_code == 2 and "Invalid SLO 'p95 <'" in bad_slo.stderr
    unknown = run_cli("ship", "clf/9", cwd=root)
    assert unknown.exit_code == 1 and "has no version 9" in unknown.stderr
    bad_alias = run_cli("ship", "clf/2", "--to", "v2", cwd=root)
    assert bad_alias.exit_code == 2 and "Invalid alias 'v2'" in bad_alias.stderr
    assert not (root / ".prodai" / "ships").exists()
    assert _registry(root).get_version("clf@production").version == 1
