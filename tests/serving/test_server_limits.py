"""Backpressure, timeouts, readiness while loading, embeddings and max_wait_ms, each on its own real server."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import httpx

from prodai_cli.serving.metrics import sample_sum


async def _fire(url: str, payloads: list[tuple[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(path, json=body) for path, body in payloads)))


def test_full_queue_answers_503_with_retry_after(
    tmp_path: Path, tiny_classifier_dir: Path, thread_server: Any, settings_for: Any
) -> None:
    settings = settings_for(tmp_path, max_queue=2, max_batch_items=2, max_batch_size=1)
    server = thread_server(settings, str(tiny_classifier_dir))
    payloads = [("/predict/batch", {"texts": ["the movie was very good " * 20] * 2}) for _ in range(150)]
    responses = asyncio.run(_fire(server.url, payloads))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "150 concurrent requests never filled a queue of 2 texts"
    assert 200 in statuses
    for response in refused:
        assert response.json()["code"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1


def test_slow_predictions_time_out_with_504(
    tmp_path: Path, tiny_classifier_dir: Path, thread_server: Any, settings_for: Any, scrape: Any
) -> None:
    settings = settings_for(tmp_path, request_timeout_s=0.001)
    server = thread_server(settings, str(tiny_classifier_dir))
    response = httpx.post(f"{server.url}/predict/batch", json={"texts": ["good movie " * 60] * 64}, timeout=30)
    assert response.status_code == 504
    assert response.json()["code"] == "timeout"
    assert response.headers["x-model-version"] == "local"
    assert sample_sum(scrape(server.url), "prodai_model_errors_total", error_type="timeout") >= 1
    # The abandoned work does not wedge the batcher: later requests (with time to finish) still flow.
    server.state.pipeline.request_timeout_s = 30
    assert httpx.post(f"{server.url}/predict", json={"text": "x"}, timeout=30).status_code == 200


def test_a_model_that_cannot_load_keeps_readiness_503(
    registered_project: Path, thread_server: Any, settings_for: Any
) -> None:
    server = thread_server(settings_for(registered_project), "nosuch@production", wait_ready=False)
    for _ in range(600):
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        if health["status"] != "loading":
            break
        time.sleep(0.1)
    assert health["status"] == "failed", health
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 503
    assert "model failed to load" in ready.json()["reason"] and "nosuch" in ready.json()["reason"]
    predict = httpx.post(f"{server.url}/predict", json={"text": "x"}, timeout=10)
    assert predict.status_code == 503 and predict.json()["code"] == "not_ready"
    assert "retry-after" in predict.headers
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200


def test_embedding_model_returns_unit_vectors(
    tmp_path: Path, tiny_embedder_dir: Path, thread_server: Any, settings_for: Any
) -> None:
    server = thread_server(settings_for(tmp_path), str(tiny_embedder_dir))
    single = httpx.post(f"{server.url}/predict", json={"text": "hello world"}, timeout=30)
    assert single.status_code == 200
    body = single.json()
    assert set(body) == {"embedding", "model_version", "variant"}
    assert len(body["embedding"]) == 32
    assert math.isclose(math.sqrt(sum(v * v for v in body["embedding"])), 1.0, rel_tol=1e-4)
    batch = httpx.post(f"{server.url}/predict/batch", json={"texts": ["hello world", "bad"]}, timeout=30).json()
    assert [len(p["embedding"]) for p in batch["predictions"]] == [32, 32]
    assert batch["predictions"][0]["embedding"] == body["embedding"]
    assert httpx.get(f"{server.url}/health", timeout=10).json()["models"][str(tiny_embedder_dir)]["task"] == "embedding"


def test_max_wait_gathers_requests_into_one_batch(
    tmp_path: Path, tiny_classifier_dir: Path, thread_server: Any, settings_for: Any, scrape: Any
) -> None:
    server = thread_server(settings_for(tmp_path, max_wait_ms=500, max_batch_size=8), str(tiny_classifier_dir))
    before = scrape(server.url)
    responses = asyncio.run(_fire(server.url, [("/predict", {"text": f"text {i}"}) for i in range(8)]))
    assert [r.status_code for r in responses] == [200] * 8
    after = scrape(server.url)
    batches = sample_sum(after, "prodai_batch_size_count") - sample_sum(before, "prodai_batch_size_count")
    assert sample_sum(after, "prodai_batch_size_sum") - sample_sum(before, "prodai_batch_size_sum") == 8
    assert batches <= 2, f"8 requests within max_wait_ms took {batches} forward passes"
