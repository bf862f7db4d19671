"""OpenAI-compatible embeddings spoken by the ``openai`` package's own client, and ``top_k`` on ``/predict``,
against real uvicorn servers on loopback with API keys, per-key rate limits and the response cache on.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import run_cli

from prodai_cli.config import load_settings, parse_config_text
from prodai_cli.keys import create_key
from prodai_cli.serving.ab.router import ABRouter
from prodai_cli.serving.metrics import sample_sum

openai = pytest.importorskip("openai", reason="openai is in the dev extra")

pytestmark = pytest.mark.slow

CONFIG = """\
monitoring: {log_level: warning}
serving: {drain_delay_s: 0, grace_period_s: 5, max_batch_items: 8, max_text_chars: 200}
auth: {enabled: true}
rate_limit:
  per_key: {rate: 25, period_s: 3600, burst: 0}
cache: {enabled: true}
"""
KEY_NAMES = ("models", "float", "base64", "cache", "limit", "errors", "topk")


def guarded_server(root: Path, server_class: Any, model: str) -> Any:
    (root / "prodai.yaml").write_text(CONFIG, encoding="utf-8")
    settings = load_settings(root / "prodai.yaml")
    keys = {name: create_key(settings, name).key for name in KEY_NAMES}
    server = server_class(load_settings(root / "prodai.yaml"), model).start()
    server.keys = keys
    return server


@pytest.fixture(scope="module")
def emb_server(registered_project: Path, tmp_path_factory: pytest.TempPathFactory, server_class: Any) -> Iterator[Any]:
    """`emb` v1 behind keys, limits and the cache."""
    root = tmp_path_factory.mktemp("openai") / "proj"
    shutil.copytree(registered_project, root, symlinks=True)
    server = guarded_server(root, server_class, "emb/1")
    yield server
    server.stop()


def client_of(server: Any, key: str | None) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", max_retries=0, timeout=30)


def predicted(server: Any, texts: list[str], key: str) -> list[list[float]]:
    answer = httpx.post(f"{server.url}/predict/batch", json={"texts": texts}, headers={"X-API-Key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    return [p["embedding"] for p in answer.json()["predictions"]]


def test_models_lists_the_embedding_model_and_needs_a_key(emb_server: Any) -> None:
    models = client_of(emb_server, emb_server.keys["models"]).models.list()
    assert [m.id for m in models.data] == ["emb"]
    with pytest.raises(openai.AuthenticationError):
        client_of(emb_server, None).models.list()


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_equal_predict_with_usage_from_the_tokenizer(emb_server: Any, encoding: str) -> None:
    key = emb_server.keys[encoding]
    texts = [f"{encoding} embed {i} ü" for i in range(3)]
    client = client_of(emb_server, key)
    raw = client.embeddings.with_raw_response.create(model="emb", input=texts, encoding_format=encoding)
    assert raw.headers["x-model-version"] == "1"
    response = raw.parse()
    expected = predicted(emb_server, texts, key)
    vectors = [item.embedding for item in response.data]
    if encoding == "base64":
        # The openai package hands a base64 answer back as the string it got when the caller asked for it.
        vectors = [np.frombuffer(base64.b64decode(v), dtype="<f4").tolist() for v in vectors]
    assert [item.index for item in response.data] == [0, 1, 2]
    np.testing.assert_allclose(np.array(vectors), np.array(expected), rtol=1e-5, atol=1e-6)
    runtime = emb_server.state.pool.entries()[0].runtime
    assert response.usage.prompt_tokens == sum(runtime.token_lengths(texts)) > 0
    assert response.model == "emb"
    # A single string, and the client's own default (it asks for base64 and decodes it itself).
    single = client.embeddings.create(model="emb", input=texts[0])
    np.testing.assert_allclose(single.data[0].embedding, expected[0], rtol=1e-5, atol=1e-6)


AB_CONFIG = """\
monitoring: {log_level: warning}
serving: {drain_delay_s: 0, grace_period_s: 5, max_batch_items: 8, max_text_chars: 200}
ab:
  enabled: true
  model: emb
  variants:
    v1: {version: 1, weight: 0.5}
    v2: {version: 2, weight: 0.5}
auth: {enabled: true}
"""


def test_ab_split_is_sticky_per_user_through_the_header_and_the_user_field(
    registered_project: Path, tmp_path: Path, server_class: Any, tiny_classifier_dir_b: Path
) -> None:
    """emb v2 (another tiny BERT's encoder) beside v1: each user stays on one variant, named either way."""
    root = tmp_path / "proj"
    shutil.copytree(registered_project, root, symlinks=True)
    registered = run_cli("register", str(tiny_classifier_dir_b), "--name", "emb", "--task", "embedding", cwd=root)
    assert registered.exit_code == 0, registered.stderr
    (root / "prodai.yaml").write_text(AB_CONFIG, encoding="utf-8")
    key = create_key(load_settings(root / "prodai.yaml"), "ab").key
    router = ABRouter.from_config(parse_config_text(AB_CONFIG).ab)
    users = {v: next(f"user-{i}" for i in range(1000) if router.choose(f"user-{i}").name == v) for v in ("v1", "v2")}
    server = server_class(load_settings(root / "prodai.yaml"), None).start()
    try:
        client = client_of(server, key)
        texts = ["sticky one", "sticky two"]
        seen = {}
        for variant, version in (("v1", "1"), ("v2", "2")):
            user = users[variant]
            for i in range(3):
                # The OpenAI body's own `user` field and the configured header name the same user.
                if i % 2:
                    raw = client.embeddings.with_raw_response.create(
                        model="emb", input=texts, encoding_format="float", extra_headers={"X-User-ID": user}
                    )
                else:
                    raw = client.embeddings.with_raw_response.create(
                        model="emb", input=texts, encoding_format="float", user=user
                    )
                assert raw.headers["x-model-version"] == version, (variant, i)
            vectors = [item.embedding for item in raw.parse().data]
            answer = httpx.post(
                f"{server.url}/predict/batch",
                json={"texts": texts},
                headers={"X-API-Key": key, "X-User-ID": user},
                timeout=30,
            )
            assert answer.status_code == 200 and answer.headers["x-model-version"] == version, answer.text
            expected = [p["embedding"] for p in answer.json()["predictions"]]
            np.testing.assert_allclose(np.array(vectors), np.array(expected), rtol=1e-5, atol=1e-6)
            seen[version] = np.array(vectors)
        assert not np.allclose(seen["1"], seen["2"])  # two different models answered
    finally:
        server.stop()


def test_cache_hits_through_the_openai_route(emb_server: Any, scrape: Any) -> None:
    client = client_of(emb_server, emb_server.keys["cache"])
    before = sample_sum(scrape(emb_server.url), "prodai_cache_hits_total")
    client.embeddings.create(model="emb", input=["cached text"], encoding_format="float")
    again = client.embeddings.with_raw_response.create(model="emb", input=["cached text"], encoding_format="float")
    assert again.headers["x-cache"] == "HIT"
    samples = scrape(emb_server.url)
    assert sample_sum(samples, "prodai_cache_hits_total") >= before + 1
    assert sample_sum(samples, "prodai_requests_total", route="/v1/embeddings", status="200") >= 2


def test_401_without_a_key_and_429_past_the_limit(emb_server: Any) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client_of(emb_server, None).embeddings.create(model="emb", input=["no key"])
    assert refused.value.status_code == 401
    assert refused.value.body["type"] == "authentication_error"  # type: ignore[index]
    client = client_of(emb_server, emb_server.keys["limit"])
    statuses = []
    for i in range(27):
        try:
            client.embeddings.create(model="emb", input=[f"limit {i}"], encoding_format="float")
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
    assert statuses.count(200) == 25 and statuses[25:] == [429, 429]


def test_bad_requests_get_openai_error_objects(emb_server: Any) -> None:
    client = client_of(emb_server, emb_server.keys["errors"])
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="nope", input=["x"])
    assert unknown.value.body["code"] == "model_not_found"  # type: ignore[index]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": ["x"] * 9}, "input"),
        ({"input": ["x" * 201]}, "input"),
        ({"input": [" "]}, "input"),
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": []}, "input"),
        ({"input": ["x"], "encoding_format": "int8"}, "encoding_format"),
        ({"input": ["x"], "dimensions": 3}, "dimensions"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model="emb", **extra)
        assert bad.value.status_code == 400
        assert bad.value.body["param"] == param, extra  # type: ignore[index]
        assert bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]


# --------------------------------------------------------------------------------------------- top_k


@pytest.fixture(scope="module")
def clf_guarded(registered_project: Path, tmp_path_factory: pytest.TempPathFactory, server_class: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("topk") / "proj"
    shutil.copytree(registered_project, root, symlinks=True)
    server = guarded_server(root, server_class, "clf/1")
    yield server
    server.stop()


def test_top_k_returns_ranked_label_scores_cached_under_their_own_key(clf_guarded: Any) -> None:
    headers = {"X-API-Key": clf_guarded.keys["topk"]}
    url = clf_guarded.url
    with httpx.Client(timeout=30, headers=headers) as http:
        plain = http.post(f"{url}/predict", json={"text": "rank me"})
        assert plain.status_code == 200 and "scores" not in plain.json()
        ranked = http.post(f"{url}/predict", json={"text": "rank me", "top_k": 2})
        # The plain answer is cached; the scored one is not the same entry.
        assert ranked.headers["x-cache"] == "MISS"
        body = ranked.json()
        scores = body["scores"]
        assert len(scores) == 2 and scores[0]["score"] >= scores[1]["score"]
        assert scores[0]["label"] == body["label"] and scores[0]["score"] == pytest.approx(body["confidence"])
        assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
        top1 = http.post(f"{url}/predict", json={"text": "rank me", "top_k": 1})
        assert top1.headers["x-cache"] == "HIT" and top1.json()["scores"] == scores[:1]
        again = http.post(f"{url}/predict", json={"text": "rank me"})
        assert again.headers["x-cache"] == "HIT" and "scores" not in again.json()
        batch = http.post(f"{url}/predict/batch", json={"texts": ["rank me", "another"], "top_k": 5})
        assert [len(p["scores"]) for p in batch.json()["predictions"]] == [2, 2]
        assert batch.json()["predictions"][0]["scores"] == scores
        for bad in (0, -1, "2", 1.5):
            refused = http.post(f"{url}/predict", json={"text": "x", "top_k": bad})
            assert refused.status_code == 422, (bad, refused.text)
