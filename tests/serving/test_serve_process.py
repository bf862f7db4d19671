"""`prodai serve` as a real process: readiness during start-up and shutdown, SIGTERM under load, JSON logs,
several workers, and the command's errors."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

from prodai_cli.serving.metrics import sample_sum

pytestmark = pytest.mark.slow


def test_readiness_is_503_until_the_model_is_loaded(registered_copy: Path, serve_process: Any) -> None:
    server = serve_process(registered_copy, "--model", "clf@production")
    server.wait_listening()
    first_ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    live = httpx.get(f"{server.url}/health/live", timeout=10)
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    # The socket opens before the model loads: the probe can tell "alive" from "ready".
    assert first_ready.status_code == 503, first_ready.text
    assert first_ready.json()["reason"] == "loading model clf/1"
    assert "retry-after" in first_ready.headers
    assert live.status_code == 200
    assert health["status"] == "loading" and health["model_loaded"] is False
    server.wait_ready()
    answer = httpx.post(f"{server.url}/predict", json={"text": "hello"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"


def test_sigterm_under_load_finishes_in_flight_requests(
    tiny_classifier_dir: Path, tmp_path: Path, serve_process: Any
) -> None:
    server = serve_process(
        tmp_path,
        "--model",
        str(tiny_classifier_dir),
        env={"PRODAI_SERVING__DRAIN_DELAY_S": "0", "PRODAI_SERVING__GRACE_PERIOD_S": "20"},
    )
    server.wait_ready()
    texts = ["the movie was very good and the world is great " * 8] * 64
    records: list[tuple[float, float, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                # A fresh connection per request: refusals after the socket closes are clean connect errors.
                outcome: Any = httpx.post(
                    f"{server.url}/predict/batch", json={"texts": texts}, timeout=60, headers={"Connection": "close"}
                ).status_code
            except httpx.TransportError as exc:
                outcome = exc
            with lock:
                records.append((sent, time.monotonic(), outcome))
            if isinstance(outcome, httpx.TransportError):
                return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    exited_at = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    answered = [(sent, done, status) for sent, done, status in records if isinstance(status, int)]
    failed = [outcome for _, _, outcome in records if not isinstance(outcome, int)]
    assert answered and all(status == 200 for _, _, status in answered), answered
    # Requests already in the server when SIGTERM arrived were answered, after it, with 200.
    drained = [1 for sent, done, _ in answered if sent < sigterm_at < done]
    assert drained, "no request was in flight at SIGTERM"
    # What failed never reached the server: no HTTP error, no half answer.
    assert all(isinstance(e, (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)) for e in failed), failed
    assert exited_at - sigterm_at < 25
    log = server.log()
    assert '"msg": "draining"' in log


def test_sigterm_turns_readiness_503_while_requests_are_still_served(
    tiny_classifier_dir: Path, tmp_path: Path, serve_process: Any
) -> None:
    server = serve_process(tmp_path, "--model", str(tiny_classifier_dir), env={"PRODAI_SERVING__DRAIN_DELAY_S": "3"})
    server.wait_ready()
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    ready = httpx.get(f"{server.url}/health/ready", timeout=5)
    while ready.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
        ready = httpx.get(f"{server.url}/health/ready", timeout=5)
    assert ready.status_code == 503 and ready.json()["reason"].startswith("draining")
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
    assert httpx.post(f"{server.url}/predict", json={"text": "still served"}, timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "draining"
    server.proc.wait(timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health/live", timeout=5)


def test_logs_are_json_lines_with_request_ids_and_no_bodies_or_keys(
    tiny_classifier_dir: Path, tmp_path: Path, serve_process: Any
) -> None:
    server = serve_process(tmp_path, "--model", str(tiny_classifier_dir), env={"PRODAI_SERVING__DRAIN_DELAY_S": "0"})
    server.wait_ready()
    secret_text = "my card is 4111 1111 1111 1111 PRIVATE-MARKER"
    secret_key = "sk-live-DO-NOT-LOG-123456"
    headers = {"X-Request-ID": "trace-log-1", "X-API-Key": secret_key, "Authorization": f"Bearer {secret_key}"}
    good = httpx.post(f"{server.url}/predict", json={"text": secret_text}, headers=headers, timeout=30)
    assert good.status_code == 200
    bad = httpx.post(f"{server.url}/predict?token={secret_key}", json={"text": secret_text, "x": 1}, timeout=30)
    assert bad.status_code == 422
    assert httpx.post(f"{server.url}/predict/batch", json={"texts": [secret_text]}, timeout=30).status_code == 200
    server.terminate()
    lines = [line for line in server.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "prodai.serving.access"]
    assert len(access) >= 3 + 2  # the three requests plus the readiness polls
    assert all(re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", r["request_id"]) for r in access)
    traced = [r for r in access if r["request_id"] == "trace-log-1"]
    assert len(traced) == 1
    assert traced[0]["status"] == 200 and traced[0]["route"] == "/predict" and traced[0]["model_version"] == "local"
    rejected = next(r for r in access if r["status"] == 422)
    assert rejected["path"] == "/predict"  # the query string (and its token) is not logged
    text = server.log()
    # Look for the whole card number: request ids are random hex and may contain "4111" by chance.
    assert "PRIVATE-MARKER" not in text
    assert "4111 1111" not in text
    assert secret_key not in text


def test_workers_share_one_metrics_view(tiny_classifier_dir: Path, tmp_path: Path, serve_process: Any) -> None:
    server = serve_process(
        tmp_path, "--model", str(tiny_classifier_dir), "--workers", "2", env={"PRODAI_SERVING__DRAIN_DELAY_S": "0"}
    )
    server.wait_listening()
    pids: set[int] = set()
    deadline = time.monotonic() + 180
    streak = 0
    while streak < 20 or len(pids) < 2:
        assert time.monotonic() < deadline, f"both workers never became ready: {pids} {server.log()[-2000:]}"
        health = httpx.get(f"{server.url}/health", timeout=10, headers={"Connection": "close"}).json()
        streak = streak + 1 if health["status"] == "ok" else 0
        if health["status"] == "ok":
            pids.add(health["pid"])
        time.sleep(0.02)
    for i in range(40):
        response = httpx.post(
            f"{server.url}/predict", json={"text": f"t{i}"}, timeout=30, headers={"Connection": "close"}
        )
        assert response.status_code == 200
    from prodai_cli.serving.metrics import parse_exposition

    totals = set()
    for _ in range(6):
        samples = parse_exposition(httpx.get(f"{server.url}/metrics", timeout=10, headers={"Connection": "close"}).text)
        totals.add(sample_sum(samples, "prodai_requests_total", route="/predict", status="200"))
        assert sample_sum(samples, "prodai_model_loaded", model_version="local") >= 1
    # Any worker's /metrics counts every worker's requests.
    assert totals == {40.0}, totals


def test_serve_refuses_unknown_models_busy_ports_and_no_model(registered_copy: Path) -> None:
    unknown = run_cli("serve", "--model", "nosuch@production", cwd=registered_copy, timeout=120)
    assert unknown.exit_code == 1
    assert "nosuch" in unknown.stderr
    # A pinned version is not looked up before start-up; the failed load stops the server with status 1.
    missing_version = run_cli(
        "serve", "--model", "clf/99", "--port", str(free_port()), cwd=registered_copy, timeout=300
    )
    assert missing_version.exit_code == 1
    assert "The model did not load" in missing_version.stderr and "99" in missing_version.stderr
    nothing = run_cli("serve", cwd=registered_copy, timeout=120)
    assert nothing.exit_code == 2
    assert "No model to serve" in nothing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_cli("serve", "--model", "clf/1", "--port", str(port), cwd=registered_copy, timeout=120)
    assert taken.exit_code == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in taken.stderr
