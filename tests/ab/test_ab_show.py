"""`prodai ab-show`: configured weights, and live shares read from Prometheus text over real HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import free_port, run_cli
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from prodai_cli.abconfig import variant_request_counts
from prodai_cli.errors import ProdaiError

CONFIG = """\
# our split
ab:
  enabled: true
  model: clf
  variants:
    v1: {version: 1, weight: 0.8}
    v2: {version: 2, weight: 0.2}
"""


def _server_registry() -> tuple[CollectorRegistry, Counter]:
    """The series the prodai server exports, with its label names."""
    registry = CollectorRegistry()
    requests = Counter(
        "prodai_requests", "Requests answered", ["route", "status", "model_version", "variant"], registry=registry
    )
    Histogram("prodai_request_latency_seconds", "Latency", ["route"], registry=registry).labels("/predict").observe(0.1)
    return registry, requests


def test_counts_sum_every_label_per_variant() -> None:
    registry, requests = _server_registry()
    requests.labels("/predict", "200", "1", "v1").inc(70)
    requests.labels("/predict/batch", "200", "1", "v1").inc(10)
    requests.labels("/predict", "503", "1", "v1").inc(2)
    requests.labels("/predict", "200", "2", "v2").inc(18)
    requests.labels("/health", "200", "", "").inc(500)  # not a routed request
    text = generate_latest(registry).decode()
    assert "prodai_requests_created" in text  # the companion series must not be counted as requests
    assert variant_request_counts(text) == {"v1": 82.0, "v2": 18.0}


def test_counts_of_text_without_the_series_are_empty() -> None:
    registry = CollectorRegistry()
    Counter("other_total", "x", registry=registry).inc()
    assert variant_request_counts(generate_latest(registry).decode()) == {}


def test_text_that_is_not_prometheus_is_an_error() -> None:
    with pytest.raises(ProdaiError, match="not Prometheus text"):
        variant_request_counts('prodai_requests_total{variant="v1" 3\n')


@dataclass
class FakeServerState:
    registry: CollectorRegistry
    requests: Counter
    scrapes: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, FakeServerState]]:
    """A real HTTP server on loopback whose /metrics is prometheus_client's text; each scrape adds traffic."""
    registry, requests = _server_registry()
    requests.labels("/predict", "200", "1", "v1").inc(900)  # before ab-set: v1 took everything
    state = FakeServerState(registry, requests)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.headers.append(dict(self.headers))
            if self.path != "/metrics":
                self.send_error(404)
                return
            if state.status != 200:
                self.send_error(state.status)
                return
            body = generate_latest(state.registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            state.scrapes += 1
            # Traffic between two scrapes: the new 75/25 split.
            state.requests.labels("/predict", "200", "1", "v1").inc(75)
            state.requests.labels("/predict", "200", "2", "v2").inc(25)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _project(project: Path) -> Path:
    (project / "prodai.yaml").write_text(CONFIG, encoding="utf-8")
    return project


def test_show_configured_weights(project: Path) -> None:
    _project(project)
    result = run_cli("ab-show", "--json", cwd=project)
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert data["enabled"] is True and data["model"] == "clf" and data["url"] is None
    assert data["variants"] == {
        "v1": {
            "version": 1,
            "weight": 0.8,
            "alias": None,
            "stale": False,
            "alias_now": None,
            "requests": None,
            "share": None,
        },
        "v2": {
            "version": 2,
            "weight": 0.2,
            "alias": None,
            "stale": False,
            "alias_now": None,
            "requests": None,
            "share": None,
        },
    }
    human = run_cli("ab-show", cwd=project)
    assert human.exit_code == 0
    assert "A/B on: clf" in human.stdout and "80.0%" in human.stdout and "20.0%" in human.stdout


def test_show_without_variants_says_how_to_add_them(project: Path) -> None:
    result = run_cli("ab-show", cwd=project)
    assert result.exit_code == 0
    assert "No A/B variants configured" in result.stderr


def test_show_live_share_since_start(project: Path, metrics_server: tuple[str, FakeServerState]) -> None:
    url, state = metrics_server
    _project(project)
    result = run_cli("ab-show", "--url", url, "--json", cwd=project)
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert state.scrapes == 1
    assert data["total_requests"] == 900
    assert data["variants"]["v1"]["requests"] == 900 and data["variants"]["v1"]["share"] == 1.0
    assert data["variants"]["v2"]["requests"] == 0 and data["variants"]["v2"]["share"] == 0.0


def test_show_live_share_over_an_interval(project: Path, metrics_server: tuple[str, FakeServerState]) -> None:
    url, state = metrics_server
    _project(project)
    result = run_cli("ab-show", "--url", url + "/", "--interval", "0.2", "--json", cwd=project)
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, dict)
    assert state.scrapes == 2
    # Only the traffic between the two scrapes counts: the new split, not the history.
    assert data["total_requests"] == 100
    assert data["variants"]["v1"]["share"] == pytest.approx(0.75)
    assert data["variants"]["v2"]["share"] == pytest.approx(0.25)
    human = run_cli("ab-show", "--url", url, "--interval", "0.1", cwd=project)
    assert human.exit_code == 0, human.stderr
    assert "75.0%" in human.stdout and "25.0%" in human.stdout


def test_show_reports_traffic_of_variants_not_in_the_config(
    project: Path, metrics_server: tuple[str, FakeServerState]
) -> None:
    url, state = metrics_server
    state.requests.labels("/predict", "200", "3", "old").inc(100)
    _project(project)
    data = run_cli("ab-show", "--url", url, "--json", cwd=project).json()
    assert isinstance(data, dict)
    assert data["other_variants"] == {"old": {"requests": 100.0, "share": 0.1}}


def test_show_sends_the_api_key_in_the_configured_header(
    project: Path, metrics_server: tuple[str, FakeServerState]
) -> None:
    url, state = metrics_server
    (project / "prodai.yaml").write_text(CONFIG + "auth:\n  header: X-Team-Key\n", encoding="utf-8")
    result = run_cli("ab-show", "--url", url, "--json", cwd=project, env={"PRODAI_API_KEY": "k-123"})
    assert result.exit_code == 0, result.stderr
    assert state.headers[-1].get("X-Team-Key") == "k-123"


def test_show_refused_or_unreachable_server(project: Path, metrics_server: tuple[str, FakeServerState]) -> None:
    url, state = metrics_server
    _project(project)
    state.status = 401
    refused = run_cli("ab-show", "--url", url, cwd=project)
    assert refused.exit_code == 1
    assert "answered HTTP 401" in refused.stderr and "--api-key" in refused.stderr
    unreachable = run_cli("ab-show", "--url", f"http://127.0.0.1:{free_port()}", cwd=project)
    assert unreachable.exit_code == 1
    assert "Cannot read" in unreachable.stderr and "Traceback" not in unreachable.stderr
