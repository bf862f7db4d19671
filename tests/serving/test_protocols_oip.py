"""Open Inference Protocol v2 over HTTP, spoken by Triton's own client (``tritonclient.http``), against a real
uvicorn server on loopback with API keys, per-key rate limits, the response cache and a sticky A/B split on.

Every answer is checked against ``/predict``'s for the same texts and user, so the protocol cannot drift from
the pipeline it adapts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from prodai_cli.config import load_settings, parse_config_text
from prodai_cli.keys import create_key
from prodai_cli.serving.ab.router import ABRouter
from prodai_cli.serving.metrics import sample_sum

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = """\
monitoring: {log_level: warning}
serving: {drain_delay_s: 0, grace_period_s: 5, max_batch_items: 8, max_text_chars: 200}
ab:
  enabled: true
  model: clf
  variants:
    v1: {version: 1, weight: 0.5}
    v2: {version: 2, weight: 0.5}
auth: {enabled: true}
rate_limit:
  per_key: {rate: 25, period_s: 3600, burst: 0}
cache: {enabled: true}
"""
KEY_NAMES = ("meta", "values", "binary", "sticky", "cache", "limit", "errors", "version")


def user_for(variant: str) -> str:
    router = ABRouter.from_config(parse_config_text(CONFIG).ab)
    return next(f"user-{i}" for i in range(1000) if router.choose(f"user-{i}").name == variant)


@pytest.fixture(scope="module")
def oip_server(registered_project: Path, tmp_path_factory: pytest.TempPathFactory, server_class: Any) -> Iterator[Any]:
    """A guarded A/B server (clf v1/v2) in a thread; ``.keys`` maps a test's name to its own API key."""
    root = tmp_path_factory.mktemp("oip") / "proj"
    shutil.copytree(registered_project, root, symlinks=True)
    (root / "prodai.yaml").write_text(CONFIG, encoding="utf-8")
    settings = load_settings(root / "prodai.yaml")
    keys = {name: create_key(settings, name).key for name in KEY_NAMES}
    server = server_class(load_settings(root / "prodai.yaml"), None).start()  # type: ignore[arg-type]
    server.keys = keys  # type: ignore[attr-defined]
    yield server
    server.stop()


def client_of(server: Any) -> Any:
    return httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", connection_timeout=30, network_timeout=30)


def text_input(texts: list[str], *, binary: bool, two_d: bool = False) -> Any:
    shape = [len(texts), 1] if two_d else [len(texts)]
    tensor = httpclient.InferInput("text", shape, "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape), binary_data=binary)
    return tensor


def predict(server: Any, texts: list[str], headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = httpx.post(f"{server.url}/predict/batch", json={"texts": texts, "top_k": 99}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["predictions"])


def test_server_and_model_metadata_through_tritonclient(oip_server: Any) -> None:
    client = client_of(oip_server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("clf")
    assert client.is_model_ready("clf", "2")
    assert not client.is_model_ready("nope")
    server_meta = client.get_server_metadata()
    assert server_meta["name"] == "prodai" and "binary_tensor_data" in server_meta["extensions"]
    meta = client.get_model_metadata("clf")
    assert meta["name"] == "clf"
    assert sorted(meta["versions"]) == ["1", "2"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES"
    assert outputs["confidence"]["datatype"] == "FP32"
    assert outputs["scores"]["shape"] == [-1, 2]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "404"
    assert "not served" in missing.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_with_a_bytes_input_equals_predict(oip_server: Any, binary: bool) -> None:
    key = oip_server.keys["values" if not binary else "binary"]
    headers = {"X-API-Key": key, "X-User-ID": user_for("v1")}
    texts = [f"oip {'bin' if binary else 'json'} {i} é" for i in range(3)]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "confidence", "scores")]
    result = client_of(oip_server).infer(
        "clf", [text_input(texts, binary=binary)], outputs=outputs, headers=dict(headers)
    )
    expected = predict(oip_server, texts, headers)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    assert labels == [p["label"] for p in expected]
    np.testing.assert_allclose(result.as_numpy("confidence"), [p["confidence"] for p in expected], rtol=1e-6)
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 2) and scores.dtype == np.float32
    by_label = [{s["label"]: s["score"] for s in p["scores"]} for p in expected]
    names = client_of(oip_server).get_model_metadata("clf")["parameters"]["labels"]
    np.testing.assert_allclose(scores, [[row[name] for name in names] for row in by_label], rtol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "clf" and response["model_version"] == "1"
    # Without `outputs`, tritonclient asks for every output in binary form.
    everything = client_of(oip_server).infer(
        "clf", [text_input(texts, binary=binary, two_d=True)], headers=dict(headers)
    )
    assert everything.as_numpy("confidence").shape == (3, 1)
    np.testing.assert_allclose(
        everything.as_numpy("confidence").ravel(), [p["confidence"] for p in expected], rtol=1e-6
    )


def test_ab_stickiness_and_explicit_versions(oip_server: Any) -> None:
    client = client_of(oip_server)
    key = oip_server.keys["sticky"]
    for variant, version in (("v1", "1"), ("v2", "2")):
        headers = {"X-API-Key": key, "X-User-ID": user_for(variant)}
        for i in range(3):
            result = client.infer("clf", [text_input([f"sticky {i}"], binary=True)], headers=dict(headers))
            assert result.get_response()["model_version"] == version
    headers = {"X-API-Key": oip_server.keys["version"], "X-User-ID": user_for("v1")}
    pinned = client.infer("clf", [text_input(["pinned"], binary=False)], model_version="2", headers=dict(headers))
    assert pinned.get_response()["model_version"] == "2"
    v2 = predict(oip_server, ["pinned"], {"X-API-Key": oip_server.keys["version"], "X-User-ID": user_for("v2")})
    np.testing.assert_allclose(pinned.as_numpy("confidence"), [v2[0]["confidence"]], rtol=1e-6)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("clf", [text_input(["x"], binary=False)], model_version="7", headers=dict(headers))
    assert unknown.value.status() == "404"


def test_cache_hits_and_metrics_labelled_by_route(oip_server: Any, scrape: Any) -> None:
    client = client_of(oip_server)
    headers = {"X-API-Key": oip_server.keys["cache"], "X-User-ID": user_for("v1")}
    before = sample_sum(scrape(oip_server.url), "prodai_cache_hits_total")
    first = client.infer("clf", [text_input(["cache me"], binary=True)], headers=dict(headers))
    second = client.infer("clf", [text_input(["cache me"], binary=False)], headers=dict(headers))
    np.testing.assert_array_equal(first.as_numpy("scores"), second.as_numpy("scores"))
    samples = scrape(oip_server.url)
    assert sample_sum(samples, "prodai_cache_hits_total") >= before + 1
    assert sample_sum(samples, "prodai_requests_total", route="/v2/models/{name}/infer", status="200") >= 2


def test_401_without_a_key_and_429_past_the_limit(oip_server: Any) -> None:
    client = client_of(oip_server)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("clf", [text_input(["no key"], binary=True)])
    assert refused.value.status() == "401"
    headers = {"X-API-Key": oip_server.keys["limit"]}
    statuses = []
    for i in range(27):
        try:
            client.infer("clf", [text_input([f"limit {i}"], binary=False)], headers=dict(headers))
            statuses.append("200")
        except InferenceServerException as exc:
            statuses.append(str(exc.status()))
            assert "Rate limit exceeded" in exc.message()
    assert statuses.count("200") == 25 and statuses[25:] == ["429", "429"]


def test_malformed_requests_get_protocol_errors_not_5xx(oip_server: Any) -> None:
    url = f"{oip_server.url}/v2/models/clf/infer"
    headers = {"X-API-Key": oip_server.keys["errors"]}

    def tensor(**fields: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"], **fields}]}

    cases: list[tuple[Any, dict[str, str], int, str]] = [
        (tensor(datatype="FP32"), {}, 400, "datatype BYTES"),
        (tensor(shape=[2]), {}, 400, "shape says 2"),
        (tensor(shape=[1, 2]), {}, 400, "shape [n] or [n, 1]"),
        (tensor(shape=[9], data=["x"] * 9), {}, 400, "1 to 8 texts"),
        (tensor(data=["x" * 201]), {}, 400, "longer than 200"),
        (tensor(data=[" "]), {}, 400, "empty"),
        (tensor(data=[3]), {}, 400, "not a string"),
        ({"inputs": []}, {}, 400, "exactly one input"),
        ({**tensor(), "outputs": [{"name": "embedding"}]}, {}, 400, "Unknown output"),
        ({**tensor(), "extra": 1}, {}, 400, "Unknown request fields"),
        (tensor(), {"Inference-Header-Content-Length": "99999"}, 400, "Inference-Header-Content-Length"),
    ]
    with httpx.Client(timeout=30) as http:
        for body, extra, status, reason in cases:
            answer = http.post(url, json=body, headers={**headers, **extra})
            assert answer.status_code == status, (body, answer.text)
            assert reason in answer.json()["error"], (body, answer.text)
        assert http.post(url, content=b"{not json", headers=dict(headers)).status_code == 400
        big = http.post(url, content=b"x" * (2 << 20), headers=dict(headers))
        assert big.status_code == 413 and "error" in big.json()
        wrong_model = http.post(f"{oip_server.url}/v2/models/other/infer", json=tensor(), headers=dict(headers))
        assert wrong_model.status_code == 404 and "not served" in wrong_model.json()["error"]
        # A binary body that lies about its element lengths.
        header = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}'
        lying = http.post(
            url,
            content=header + b"\xff\x00\x00\x00ab",
            headers={**headers, "Inference-Header-Content-Length": str(len(header))},
        )
        assert lying.status_code == 400 and "longer than its binary data" in lying.json()["error"]
