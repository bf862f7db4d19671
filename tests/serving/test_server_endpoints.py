"""Every endpoint and every refusal of the server, against a real uvicorn server on loopback.

The server runs `clf@production` (version 1) from a real MLflow SQLite registry with a tiny random BERT.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prodai_cli.serving.metrics import sample_sum

JSON = {"content-type": "application/json"}


def post(url: str, path: str, payload: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=payload, timeout=30, **kwargs)


# ------------------------------------------------------------------------------------------ predictions


def test_predict_returns_label_confidence_version_and_variant(clf_server: Any) -> None:
    response = post(clf_server.url, "/predict", {"text": "a great movie"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"label", "confidence", "model_version", "variant"}
    assert body["label"] in {"NEGATIVE", "POSITIVE"}
    assert 0.5 <= body["confidence"] <= 1.0  # the top class of two
    assert body["model_version"] == "1"
    assert body["variant"] == "default"
    assert response.headers["x-model-version"] == "1"


def test_predict_matches_the_runtime_used_by_batch(clf_server: Any, registered_project: Path) -> None:
    from prodai_cli.runtime import load_runtime

    texts = ["hello world", "a terrible movie", "the movie was not very good"]
    expected = load_runtime("clf@production", clf_server.settings).predict(texts)
    for text, want in zip(texts, expected, strict=True):
        got = post(clf_server.url, "/predict", {"text": text}).json()
        assert got["label"] == want["label"]
        assert math.isclose(got["confidence"], want["confidence"], rel_tol=1e-5)


def test_batch_answers_in_input_order_with_the_single_answers(clf_server: Any) -> None:
    texts = ["hello", "bad bad bad movie " * 10, "great", "a", "the world is very good"]
    singles = [post(clf_server.url, "/predict", {"text": t}).json() for t in texts]
    response = post(clf_server.url, "/predict/batch", {"texts": texts})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(texts)
    for single, batched in zip(singles, predictions, strict=True):
        assert batched["label"] == single["label"]
        assert math.isclose(batched["confidence"], single["confidence"], rel_tol=1e-5)
        assert batched["model_version"] == "1" and batched["variant"] == "default"


def test_request_id_is_echoed_when_well_formed_and_generated_otherwise(clf_server: Any) -> None:
    given = post(clf_server.url, "/predict", {"text": "x"}, headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"
    generated = post(clf_server.url, "/predict", {"text": "x"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    # A header that could forge log lines is replaced, not echoed.
    forged = post(clf_server.url, "/predict", {"text": "x"}, headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
    refused = httpx.post(f"{clf_server.url}/predict", content=b"{", headers={**JSON, "X-Request-ID": "req-7"})
    assert refused.status_code == 422
    assert refused.headers["x-request-id"] == "req-7" and refused.json()["request_id"] == "req-7"


# ------------------------------------------------------------------------------------------ health, docs, metrics


def test_health_probes(clf_server: Any) -> None:
    health = httpx.get(f"{clf_server.url}/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    (model,) = body["models"].values()
    assert model["status"] == "ready"
    assert model["name"] == "clf" and model["version"] == "1" and model["task"] == "text-classification"
    assert httpx.get(f"{clf_server.url}/health/live", timeout=10).json() == {"status": "alive"}
    ready = httpx.get(f"{clf_server.url}/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_docs_and_openapi_show_the_enforced_limits(clf_server: Any) -> None:
    spec = httpx.get(f"{clf_server.url}/openapi.json", timeout=10).json()
    assert {"/predict", "/predict/batch", "/health", "/health/live", "/health/ready", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    assert body["properties"]["text"]["maxLength"] == 10_000
    batch = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["texts"]["maxItems"] == 64
    docs = httpx.get(f"{clf_server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_metrics_carry_the_documented_series(clf_server: Any, scrape: Any) -> None:
    before = scrape(clf_server.url)
    for _ in range(3):
        assert post(clf_server.url, "/predict", {"text": "count me"}).status_code == 200
    assert httpx.post(f"{clf_server.url}/predict", content=b"nope", headers=JSON).status_code == 422
    response = httpx.get(f"{clf_server.url}/metrics", timeout=10)
    assert response.headers["content-type"].startswith("text/plain")
    after = scrape(clf_server.url)
    for name in (
        "prodai_requests_total",
        "prodai_request_latency_seconds_bucket",
        "prodai_batch_size_count",
        "prodai_queue_depth",
        "prodai_inflight_requests",
        "prodai_model_loaded",
    ):
        assert name in after, name
    ok = {"route": "/predict", "status": "200", "model_version": "1", "variant": "default"}
    assert sample_sum(after, "prodai_requests_total", **ok) - sample_sum(before, "prodai_requests_total", **ok) == 3
    bad = {"route": "/predict", "status": "422"}
    assert sample_sum(after, "prodai_requests_total", **bad) - sample_sum(before, "prodai_requests_total", **bad) == 1
    assert sample_sum(after, "prodai_request_latency_seconds_count", route="/predict") >= 4
    assert sample_sum(after, "prodai_batch_size_sum") - sample_sum(before, "prodai_batch_size_sum") >= 3
    assert sample_sum(after, "prodai_queue_depth") == 0
    # The scrape itself is in flight while it renders.
    assert sample_sum(after, "prodai_inflight_requests") == 1
    assert sample_sum(after, "prodai_model_loaded", model_version="1") == 1


def test_unknown_paths_get_json_404_and_one_metric_label(clf_server: Any, scrape: Any) -> None:
    for path in ("/nope", "/predict/../../etc/passwd", "/x" * 50):
        response = httpx.get(f"{clf_server.url}{path}", timeout=10)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    wrong_method = httpx.get(f"{clf_server.url}/predict", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"
    routes = {labels["route"] for labels, _ in scrape(clf_server.url)["prodai_requests_total"]}
    assert "other" in routes
    assert not any(route.startswith("/x") or "passwd" in route for route in routes)


# ------------------------------------------------------------------------------------------ refusals


def test_413_when_content_length_is_over_the_limit(clf_server: Any) -> None:
    body = json.dumps({"text": "a" * 2_000_000}).encode()
    response = httpx.post(f"{clf_server.url}/predict", content=body, headers=JSON, timeout=30)
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert "1048576" in response.json()["detail"]


def test_413_counts_streamed_bytes_without_content_length(clf_server: Any) -> None:
    def chunks() -> Any:
        yield b'{"texts": ["'
        for _ in range(40):
            yield b"a" * 32_768
        yield b'"]}'

    response = httpx.post(f"{clf_server.url}/predict/batch", content=chunks(), headers=JSON, timeout=30)
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    # The server is fine afterwards.
    assert post(clf_server.url, "/predict", {"text": "still here"}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "Missing Content-Type"),
        ({"content-type": "text/plain"}, "'text/plain' is not supported"),
        ({"content-type": "application/x-www-form-urlencoded"}, "not supported"),
        ({"content-type": "application/json; charset=latin-1"}, "Only UTF-8"),
    ],
)
def test_415_for_bodies_that_are_not_json(clf_server: Any, headers: dict[str, str], reason: str) -> None:
    response = httpx.post(f"{clf_server.url}/predict", content=b'{"text": "x"}', headers=headers, timeout=10)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert reason in response.json()["detail"]


def test_json_media_type_variants_are_accepted(clf_server: Any) -> None:
    for content_type in ("application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.api+json"):
        response = httpx.post(
            f"{clf_server.url}/predict", content=b'{"text": "x"}', headers={"content-type": content_type}, timeout=10
        )
        assert response.status_code == 200, (content_type, response.text)


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/predict", b"{", "not valid JSON"),
        ("/predict", b"", "not valid JSON"),
        ("/predict", b'{"text": "x", "user": 1}', "user: Extra inputs are not permitted"),
        ("/predict", b'{"txt": "x"}', "text: Field required"),
        ("/predict", b'{"text": 5}', "text: Input should be a valid string"),
        ("/predict", b'{"text": null}', "text: Input should be a valid string"),
        ("/predict", b'["x"]', "Input should be a valid dictionary"),
        ("/predict", json.dumps({"text": "a" * 10_001}).encode(), "at most 10000 characters"),
        ("/predict", b'{"text": "\\ud800"}', "lone UTF-16 surrogate"),
        ("/predict/batch", b'{"texts": ["ok", "\\udfff"]}', "lone UTF-16 surrogate"),
        ("/predict", b'{"text": "x", "n": ' + b"9" * 4301 + b"}", "more than 100 digits"),
        ("/predict/batch", b'{"texts": ["x"], "n": ' + b"9" * 4301 + b"}", "more than 100 digits"),
        ("/predict", b'{"text": "x", "n": ' + b"[" * 1500 + b"]" * 1500 + b"}", "nested too deeply"),
        ("/predict/batch", b'{"texts": ["x"], "n": ' + b"[" * 1500 + b"]" * 1500 + b"}", "nested too deeply"),
        ("/predict", b'{"text": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}", "more than 32 levels"),
        ("/predict", b'{"text": ""}', "text is empty or only whitespace"),
        ("/predict", b'{"text": " \\t\\n "}', "text is empty or only whitespace"),
        ("/predict", b'{"text": "\\u0000\\u0000"}', "text is empty or only whitespace"),
        ("/predict/batch", b'{"texts": ["ok", "   "]}', "texts.1: Value error, text is empty"),
        ("/predict", b'{"text": "\xff\xfe"}', "not valid UTF-8"),
        ("/predict", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        ("/predict/batch", b'{"texts": []}', "at least 1 item"),
        ("/predict/batch", json.dumps({"texts": ["x"] * 65}).encode(), "at most 64 items"),
        ("/predict/batch", b'{"texts": ["ok", 3]}', "texts.1: Input should be a valid string"),
        ("/predict/batch", b'{"texts": "not a list"}', "texts: Input should be a valid list"),
        ("/predict/batch", b'{"text": "x"}', "Field required"),
    ],
)
def test_422_with_a_reason(clf_server: Any, path: str, body: bytes, reason: str) -> None:
    response = httpx.post(f"{clf_server.url}{path}", content=body, headers=JSON, timeout=30)
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["code"] == "invalid_request"
    assert reason in data["detail"], data["detail"]
    assert len(response.content) < 5_000  # reasons never echo the input back


# ------------------------------------------------------------------------------------------ concurrency


async def _fire(url: str, payloads: list[tuple[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(path, json=body) for path, body in payloads)))


def test_concurrent_requests_share_forward_passes(clf_server: Any, scrape: Any) -> None:
    before = scrape(clf_server.url)
    payloads = [("/predict", {"text": f"request number {i} " * (1 + i % 5)}) for i in range(64)]
    responses = asyncio.run(_fire(clf_server.url, payloads))
    assert [r.status_code for r in responses] == [200] * 64
    after = scrape(clf_server.url)
    batches = sample_sum(after, "prodai_batch_size_count") - sample_sum(before, "prodai_batch_size_count")
    texts = sample_sum(after, "prodai_batch_size_sum") - sample_sum(before, "prodai_batch_size_sum")
    assert texts == 64
    assert batches < 64, "no two requests shared a forward pass"
    # Some bucket above 1 received batches.
    over_one = sample_sum(after, "prodai_batch_size_count") - sample_sum(after, "prodai_batch_size_bucket", le="1.0")
    assert over_one >= 1


def test_probes_answer_while_the_model_is_busy(clf_server: Any) -> None:
    long_texts = ["the movie was very very good " * 20] * 64

    async def scenario() -> tuple[float, float, int]:
        async with httpx.AsyncClient(base_url=clf_server.url, timeout=120) as client:
            start = time.perf_counter()
            heavy = [asyncio.create_task(client.post("/predict/batch", json={"texts": long_texts})) for _ in range(12)]
            await asyncio.sleep(0.05)
            probe = await client.get("/health/live")
            probe_done = time.perf_counter() - start
            results = await asyncio.gather(*heavy)
            heavy_done = time.perf_counter() - start
            assert all(r.status_code == 200 for r in results)
            return probe_done, heavy_done, probe.status_code

    probe_done, heavy_done, status = asyncio.run(scenario())
    assert status == 200
    assert probe_done < heavy_done / 2, (probe_done, heavy_done)
