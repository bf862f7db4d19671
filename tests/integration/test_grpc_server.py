"""Open Inference Protocol v2 over gRPC, spoken by Triton's own client (``tritonclient.grpc``), against a real
``prodai serve`` process on loopback with API keys, per-key rate limits, the response cache and a sticky A/B
split on, and ``serving.grpc_port`` set.

Every answer is checked against ``/predict``'s (HTTP, the same process) for the same texts and user: both
transports run one pipeline.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import free_port

from prodai_cli.config import load_settings, parse_config_text
from prodai_cli.errors import ConfigError
from prodai_cli.keys import create_key
from prodai_cli.serving.ab.router import ABRouter

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the dev extra")
import grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

MAX_MESSAGE = 65_536
AB = """\
ab:
  enabled: true
  model: clf
  variants:
    v1: {version: 1, weight: 0.5}
    v2: {version: 2, weight: 0.5}
"""
GUARDS = """\
auth: {enabled: true}
rate_limit:
  per_key: {rate: 25, period_s: 3600, burst: 0}
cache: {enabled: true}
"""
KEY_NAMES = ("meta", "values", "sticky", "cache", "limit", "errors", "version")
INFER_ROUTE = "/inference.GRPCInferenceService/ModelInfer"


def user_for(variant: str) -> str:
    router = ABRouter.from_config(parse_config_text(AB).ab)
    return next(f"user-{i}" for i in range(1000) if router.choose(f"user-{i}").name == variant)


@pytest.fixture(scope="module")
def grpc_server(registered_project: Path, tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Any:
    """A guarded A/B server (clf v1/v2) with gRPC on; ``.keys`` maps a test's name to its own API key."""
    grpc_port = free_port()
    config = (
        kit.BASE_CONFIG.replace("monitoring:\n  log_level: info", "monitoring:\n  log_level: warning")
        + f"  max_batch_items: 8\n  max_text_chars: 200\n  grpc_port: {grpc_port}\n"
        + f"  grpc_max_message_bytes: {MAX_MESSAGE}\n"
        + AB
        + GUARDS
    )
    root = kit.make_project(registered_project, tmp_path_factory.mktemp("grpc") / "proj", config)
    settings = load_settings(root / "prodai.yaml")
    keys = {name: create_key(settings, name).key for name in KEY_NAMES}
    server = kit.Server(root)
    kit.start_all(server)
    server.keys = keys
    server.grpc_url = f"127.0.0.1:{grpc_port}"
    yield server
    server.stop()


def client_of(server: Any) -> Any:
    return grpcclient.InferenceServerClient(url=server.grpc_url)


def text_input(texts: list[str], two_d: bool = False) -> Any:
    shape = [len(texts), 1] if two_d else [len(texts)]
    tensor = grpcclient.InferInput("text", shape, "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape))
    return tensor


def metadata(server: Any, name: str, user: str | None = None) -> dict[str, str]:
    """gRPC metadata keys are lower case."""
    headers = {"x-api-key": server.keys[name]}
    if user is not None:
        headers["x-user-id"] = user
    return headers


def predict(server: Any, texts: list[str], key: str, user: str) -> list[dict[str, Any]]:
    headers = {"X-API-Key": key, "X-User-ID": user}
    answer = httpx.post(f"{server.url}/predict/batch", json={"texts": texts, "top_k": 99}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["predictions"])


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_health_and_metadata_through_tritonclient_grpc(grpc_server: Any) -> None:
    client = client_of(grpc_server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("clf")
    assert client.is_model_ready("clf", "2")
    assert not client.is_model_ready("clf", "7")
    assert not client.is_model_ready("nope")
    server_meta = client.get_server_metadata(as_json=True)
    assert server_meta["name"] == "prodai"
    meta = client.get_model_metadata("clf", as_json=True)
    assert meta["name"] == "clf" and sorted(meta["versions"]) == ["1", "2"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["confidence"]["datatype"] == "FP32"
    assert outputs["scores"]["shape"] == ["-1", "2"]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("nope")
    assert status_of(missing.value) == "StatusCode.NOT_FOUND" and "not served" in missing.value.message()


def test_infer_with_a_bytes_input_equals_predict(grpc_server: Any) -> None:
    user = user_for("v1")
    texts = [f"grpc {i} é" for i in range(3)]
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("label", "confidence", "scores")]
    client = client_of(grpc_server)
    result = client.infer(
        "clf", [text_input(texts)], outputs=outputs, headers=metadata(grpc_server, "values", user), request_id="r-1"
    )
    expected = predict(grpc_server, texts, grpc_server.keys["values"], user)
    assert [v.decode() for v in result.as_numpy("label").tolist()] == [p["label"] for p in expected]
    np.testing.assert_allclose(result.as_numpy("confidence"), [p["confidence"] for p in expected], rtol=1e-6)
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 2) and scores.dtype == np.float32
    labels = httpx.get(f"{grpc_server.url}/v2/models/clf", timeout=10).json()["parameters"]["labels"]
    by_label = [{s["label"]: s["score"] for s in p["scores"]} for p in expected]
    np.testing.assert_allclose(scores, [[row[name] for name in labels] for row in by_label], rtol=1e-6)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("clf", "1", "r-1")
    # Without outputs: every one; a [n, 1] input gets [n, 1] answers.
    everything = client.infer("clf", [text_input(texts, two_d=True)], headers=metadata(grpc_server, "values", user))
    assert everything.as_numpy("confidence").shape == (3, 1)
    np.testing.assert_allclose(everything.as_numpy("scores"), scores, rtol=1e-6)


def test_ab_stickiness_by_user_and_explicit_versions(grpc_server: Any) -> None:
    client = client_of(grpc_server)
    for variant, version in (("v1", "1"), ("v2", "2")):
        for i in range(3):
            headers = metadata(grpc_server, "sticky", user_for(variant))
            result = client.infer("clf", [text_input([f"sticky {i}"])], headers=headers)
            assert result.get_response().model_version == version
    headers = metadata(grpc_server, "version", user_for("v1"))
    pinned = client.infer("clf", [text_input(["pinned"])], model_version="2", headers=headers)
    assert pinned.get_response().model_version == "2"
    v2 = predict(grpc_server, ["pinned"], grpc_server.keys["version"], user_for("v2"))
    np.testing.assert_allclose(pinned.as_numpy("confidence"), [v2[0]["confidence"]], rtol=1e-6)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("clf", [text_input(["x"])], model_version="7", headers=headers)
    assert status_of(unknown.value) == "StatusCode.NOT_FOUND"


def test_cache_hits_trailers_trace_and_metrics_by_route(grpc_server: Any) -> None:
    client = client_of(grpc_server)
    headers = metadata(grpc_server, "cache", user_for("v1"))
    before = grpc_server.metric("prodai_cache_hits_total")
    first = client.infer("clf", [text_input(["cache me"])], headers=headers)
    second = client.infer("clf", [text_input(["cache me"])], headers=headers)
    np.testing.assert_array_equal(first.as_numpy("scores"), second.as_numpy("scores"))
    assert grpc_server.metric("prodai_cache_hits_total") >= before + 1
    # The raw stub shows what HTTP puts in headers: trailing metadata.
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    request = service_pb2.ModelInferRequest(model_name="clf")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"cache me")
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call_metadata = (
            *headers.items(),
            ("x-request-id", "grpc-trace-1"),
            ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),
        )
        _, call = stub.ModelInfer.with_call(request, metadata=call_metadata, timeout=30)
    trailers = dict(call.trailing_metadata())
    assert trailers["x-cache"] == "HIT" and trailers["x-model-version"] == "1"
    assert trailers["x-request-id"] == "grpc-trace-1"
    assert trailers["traceparent"].startswith(f"00-{trace_id}-") and trailers["ratelimit-limit"] == "25"
    samples = grpc_server.metrics()
    from prodai_cli.serving.metrics import sample_sum

    assert sample_sum(samples, "prodai_requests_total", route=INFER_ROUTE, status="200", model_version="1") >= 3


def test_unauthenticated_without_a_key_and_resource_exhausted_past_the_limit(grpc_server: Any) -> None:
    client = client_of(grpc_server)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("clf", [text_input(["no key"])])
    assert status_of(refused.value) == "StatusCode.UNAUTHENTICATED" and "key" in refused.value.message().lower()
    with pytest.raises(InferenceServerException) as bad:
        client.infer("clf", [text_input(["bad key"])], headers={"x-api-key": "pk_not_a_key"})
    assert status_of(bad.value) == "StatusCode.UNAUTHENTICATED"
    statuses = []
    for i in range(27):
        try:
            client.infer("clf", [text_input([f"limit {i}"])], headers=metadata(grpc_server, "limit"))
            statuses.append("OK")
        except InferenceServerException as exc:
            statuses.append(status_of(exc))
            assert "Rate limit exceeded" in exc.message()
    assert statuses.count("OK") == 25 and statuses[25:] == ["StatusCode.RESOURCE_EXHAUSTED"] * 2
    # The limit is the key's, whatever the transport: HTTP is refused too.
    over = httpx.post(
        f"{grpc_server.url}/predict", json={"text": "x"}, headers={"X-API-Key": grpc_server.keys["limit"]}, timeout=30
    )
    assert over.status_code == 429


def test_hostile_messages_are_refused_with_reasons(grpc_server: Any) -> None:
    client = client_of(grpc_server)
    headers = metadata(grpc_server, "errors")

    def infer(message: Any) -> grpc.RpcError:
        with grpc.insecure_channel(grpc_server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(message, metadata=tuple(headers.items()), timeout=30)
        return refused.value

    def message(datatype: str = "BYTES", shape: tuple[int, ...] = (1,), elements: tuple[bytes, ...] = (b"ok",)) -> Any:
        request = service_pb2.ModelInferRequest(model_name="clf")
        tensor = request.inputs.add(name="text", datatype=datatype, shape=list(shape))
        tensor.contents.bytes_contents.extend(elements)
        return request

    oversized = message(elements=(b"x" * (MAX_MESSAGE + 1),))
    error = infer(oversized)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in str(error.details())
    lying = service_pb2.ModelInferRequest(model_name="clf")
    lying.inputs.add(name="text", datatype="BYTES", shape=[1])
    lying.raw_input_contents.append(b"\xff\x00\x00\x00ab")
    two_inputs = message()
    two_inputs.inputs.add(name="more", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    cases: list[tuple[Any, grpc.StatusCode, str]] = [
        (message(datatype="FP32"), grpc.StatusCode.INVALID_ARGUMENT, "datatype BYTES"),
        (message(shape=(2,)), grpc.StatusCode.INVALID_ARGUMENT, "shape says 2"),
        (message(shape=(1, 2)), grpc.StatusCode.INVALID_ARGUMENT, "shape [n] or [n, 1]"),
        (message(shape=(9,), elements=(b"x",) * 9), grpc.StatusCode.INVALID_ARGUMENT, "1 to 8 texts"),
        (message(shape=(-1,)), grpc.StatusCode.INVALID_ARGUMENT, "1 to 8 texts"),
        (message(elements=(b"x" * 201,)), grpc.StatusCode.INVALID_ARGUMENT, "longer than 200"),
        (message(elements=(b" ",)), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (message(elements=(b"\xff\xfe",)), grpc.StatusCode.INVALID_ARGUMENT, "not UTF-8"),
        (two_inputs, grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
        (lying, grpc.StatusCode.INVALID_ARGUMENT, "longer than its binary data"),
        (service_pb2.ModelInferRequest(model_name="other"), grpc.StatusCode.NOT_FOUND, "not served"),
    ]
    for request, code, reason in cases:
        error = infer(request)
        assert error.code() == code, (request, error)
        assert reason in str(error.details()), (request, error.details())
    with_outputs = message()
    with_outputs.outputs.add(name="embedding")
    assert "Unknown output" in str(infer(with_outputs).details())
    # Metadata past serving.max_header_bytes (32 KiB by default) is refused by grpc before any handler runs.
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as too_much:
            stub.ModelInfer(message(), metadata=(*headers.items(), ("x-padding", "p" * 40_000)), timeout=30)
        assert too_much.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
        assert "metadata" in str(too_much.value.details()).lower(), too_much.value.details()
        # Under it is served: the key sets the bound (grpc's own default, 8 KiB soft and 16 KiB hard, would refuse).
        answer = stub.ModelInfer(message(), metadata=(*headers.items(), ("x-padding", "p" * 20_000)), timeout=30)
        assert answer.model_name == "clf"
    # Methods this server does not implement, and the server still answers afterwards.
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unimplemented:
            stub.ModelConfig(service_pb2.ModelConfigRequest(name="clf"), timeout=30)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert client.infer("clf", [text_input(["still fine"])], headers=headers).get_response().model_name == "clf"


def test_grpc_keys_are_validated_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as same:
        parse_config_text("serving:\n  port: 8000\n  grpc_port: 8000\n", "prodai.yaml")
    assert "grpc_port" in str(same.value) and "must differ" in str(same.value)
    with pytest.raises(ConfigError) as small:
        parse_config_text("serving:\n  grpc_max_message_bytes: 10\n", "prodai.yaml")
    assert "serving.grpc_max_message_bytes" in str(small.value) and "line 2" in str(small.value)
    assert parse_config_text("serving: {}\n").serving.grpc_port is None  # off by default


def test_a_busy_grpc_port_stops_serve_with_a_clear_error(registered_project: Path, tmp_path: Path, kit: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        root = kit.make_project(registered_project, tmp_path / "proj", kit.BASE_CONFIG + f"  grpc_port: {busy}\n")
        done = subprocess.run(
            [sys.executable, "-m", "prodai_cli", "serve", "--port", str(free_port()), "--model", "clf/1"],
            cwd=root,
            env=kit.clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"Cannot listen for gRPC on 127.0.0.1:{busy}" in done.stderr


def test_grpc_drains_with_http_then_stops(registered_project: Path, tmp_path: Path, kit: Any) -> None:
    """SIGTERM: ServerReady turns false at once while ModelInfer is still served (drain delay); then the port closes."""
    import signal

    grpc_port = free_port()
    config = kit.BASE_CONFIG.replace("drain_delay_s: 0", "drain_delay_s: 4") + f"  grpc_port: {grpc_port}\n"
    root = kit.make_project(registered_project, tmp_path / "proj", config)
    server = kit.Server(root, "--model", "clf/1", env={"PRODAI_AUTH__ENABLED": "false"})
    kit.start_all(server)
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
    try:
        assert client.is_server_ready()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        kit.wait_until(lambda: not client.is_server_ready(), timeout=3, interval=0.05, what="ServerReady false")
        result = client.infer("clf", [text_input(["during the drain"])])
        assert result.get_response().model_version == "1"
        # uvicorn re-raises the signal it caught once it has shut down gracefully.
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(InferenceServerException) as gone:
            client.is_server_live(client_timeout=5)
        assert status_of(gone.value) in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
    finally:
        client.close()
        server.stop()


def test_worker_processes_share_the_grpc_port(registered_project: Path, tmp_path: Path, kit: Any) -> None:
    """--workers 2: every worker serves gRPC on the one port (SO_REUSEPORT), none fails to start."""
    grpc_port = free_port()
    root = kit.make_project(registered_project, tmp_path / "proj", kit.BASE_CONFIG + f"  grpc_port: {grpc_port}\n")
    server = kit.Server(root, "--model", "clf/1", "--workers", "2", env={"PRODAI_AUTH__ENABLED": "false"})
    try:
        kit.start_all(server)
        kit.wait_until(lambda: server.log().count('"serving grpc"') == 2, timeout=60, what="both workers on gRPC")
        # start_all saw one worker ready; the kernel may hand a connection to the other one.
        kit.wait_until(lambda: server.log().count('"model ready"') == 2, timeout=120, what="both workers ready")
        for i in range(6):  # a fresh channel each time: a new connection, whichever worker the kernel picks
            client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
            try:
                assert client.infer("clf", [text_input([f"worker {i}"])]).get_response().model_version == "1"
            finally:
                client.close()
        assert "failed to start" not in server.log()
    finally:
        server.stop()
