"""Issue 15.4: `prodai loadtest` sends one request first and stops (exit 2, before any load) when it is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def _loadtest(server: Any, report_dir: Path, *extra: str) -> Any:
    return run_cli(
        "loadtest", "--json", "--url", server.url, "-u", "2", "--duration", "3s", "--slo", "error_rate < 1%",
        "--report-dir", str(report_dir), *extra,
        cwd=server.root, timeout=240,
    )  # fmt: skip


def _refusals(server: Any) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prodai_requests_total{") and 'route="/predict"' in line and 'status="401"' in line
    )


def test_a_load_test_without_a_key_stops_after_one_refused_request(guarded: Any, tmp_path: Path) -> None:
    before = _refusals(guarded)
    result = _loadtest(guarded, tmp_path / "r")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    error = json.loads(result.stdout)
    assert "refused the load test's first request (401" in error["error"]["message"], error
    assert "--api-key" in error["error"]["hint"]
    # One request, no load: no Locust report, and the server counted a single refusal.
    assert not (tmp_path / "r").exists()
    assert _refusals(guarded) - before == 1


def test_a_rate_limited_key_stops_before_any_load(guarded: Any, tmp_path: Path) -> None:
    created = run_cli("keys", "create", "--name", "lt-limited", "--json", cwd=guarded.root)
    assert created.exit_code == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    for _ in range(20):  # the server picks the new key up within about a second
        if httpx.post(f"{guarded.url}/predict", json={"text": "x"}, headers={"X-API-Key": key}).status_code == 200:
            break
        time.sleep(0.3)
    result = _loadtest(guarded, tmp_path / "r", "--api-key", key)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    error = json.loads(result.stdout)["error"]
    assert "rate-limited the load test's first request (429" in error["message"], error
    assert "Retry-After" in error["message"] and "per_key" in error["hint"]
    assert not (tmp_path / "r").exists()


def test_preflight_off_lets_the_load_test_measure_the_refusals(guarded: Any, tmp_path: Path) -> None:
    result = run_cli(
        "loadtest", "--json", "--url", guarded.url, "-u", "1", "--duration", "2s", "--slo", "error_rate < 1%",
        "--report-dir", str(tmp_path / "r"),
        cwd=guarded.root, timeout=240, env={"PRODAI_LOADTEST__PREFLIGHT": "false"},
    )  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert json.loads(result.stdout)["stats"]["error_rate"] == 1.0
