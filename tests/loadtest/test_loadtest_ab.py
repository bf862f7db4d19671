"""Per-variant figures of `prodai loadtest` against a real prodai server routing A/B traffic between clf v1 and v2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

pytestmark = pytest.mark.slow

AB_CONFIG = """\
auth:
  enabled: false
rate_limit:
  enabled: false
monitoring:
  log_level: warning
ab:
  enabled: true
  model: clf
  variants:
    a: {version: 1, weight: 0.5}
    b: {version: 2, weight: 0.5}
"""
# Until the A/B router is wired into `prodai serve`, the server either refuses to start without --model or
# answers every request as variant "default": then there is nothing per-variant to measure, and we say so.
NOT_WIRED = "A/B routing is not wired into `prodai serve` yet"


@pytest.fixture(scope="module")
def ab_server(registered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("loadtest-ab") / "proj"
    shutil.copytree(registered_project, root, symlinks=True)
    (root / "prodai.yaml").write_text(AB_CONFIG, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                text = log_path.read_text(encoding="utf-8", errors="replace")
                if "No model to serve" in text:
                    pytest.skip(NOT_WIRED)
                raise AssertionError(f"A/B server exited {proc.returncode}: {text[-3000:]}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            time.sleep(0.1)
        answer = httpx.post(f"{url}/predict", json={"text": "good movie"}, headers={"X-User-ID": "u1"}, timeout=30)
        if answer.json().get("variant") == "default":
            pytest.skip(NOT_WIRED)
        yield {"root": root, "url": url}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _variant_counts(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("prodai_requests_total{") and 'route="/predict"' in line and 'status="200"' in line:
            variant = line.split('variant="', 1)[1].split('"', 1)[0]
            counts[variant] = counts.get(variant, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_user_ids_exercise_every_arm_and_figures_are_per_variant(ab_server: dict[str, Any], tmp_path: Path) -> None:
    before = _variant_counts(ab_server["url"])
    result = run_cli(
        "loadtest",
        "--json",
        "--url",
        ab_server["url"],
        "-u",
        "4",
        "-r",
        "20",
        "--duration",
        "4s",
        "--user-ids",
        "40",
        "--slo",
        "error_rate < 1%",
        "--report-dir",
        str(tmp_path / "r"),
        cwd=ab_server["root"],
        timeout=240,
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    variants = summary["variants"]
    assert set(variants) == {"a", "b"}, variants
    assert all(v["requests"] > 0 and v["failures"] == 0 and v["p95_ms"] > 0 for v in variants.values())
    assert sum(v["requests"] for v in variants.values()) == summary["stats"]["requests"]
    # The server's own per-variant counters saw at least what the SLO window measured for each arm.
    after = _variant_counts(ab_server["url"])
    for name, figures in variants.items():
        assert after.get(name, 0) - before.get(name, 0) >= figures["requests"]
    header = (tmp_path / "r" / "locust_stats.csv").read_text(encoding="utf-8")
    assert "/predict [a]" in header and "/predict [b]" in header
