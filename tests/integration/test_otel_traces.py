"""W3C trace context and OpenTelemetry spans, end to end: a real ``prodai serve`` exports over OTLP/HTTP to a
collector in this test (a plain HTTP server decoding the protobuf requests with ``opentelemetry-proto``).

A request with a ``traceparent`` must come back with that trace id, leave log lines carrying it, and produce a
span tree whose root is the server span the response names, parented to the caller's span.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import free_port

from prodai_cli.config import load_settings, parse_config_text
from prodai_cli.keys import create_key
from prodai_cli.serving.ab.router import ABRouter

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra is in the dev extra")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
AB = """\
ab:
  enabled: true
  model: clf
  variants:
    v1: {version: 1, weight: 0.5}
    v2: {version: 2, weight: 0.5}
"""


def user_for(variant: str) -> str:
    router = ABRouter.from_config(parse_config_text(AB).ab)
    return next(f"user-{i}" for i in range(1000) if router.choose(f"user-{i}").name == variant)


class Collector:
    """An OTLP/HTTP trace receiver on loopback: ``spans`` holds every span received, as dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            collector.spans.append(
                                {
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "kind": span.kind,
                                    "status": span.status.code,
                                    "service": service,
                                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                                }
                            )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [span for span in list(self.spans) if span["trace_id"] == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def traced(registered_project: Path, tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Iterator[Any]:
    """A guarded A/B server (clf v1/v2, fault injection ready), gRPC on, exporting to this module's collector."""
    collector = Collector()
    grpc_port = free_port()
    config = (
        kit.BASE_CONFIG.replace(
            "monitoring:\n  log_level: info", f"monitoring:\n  log_level: info\n  otlp_endpoint: {collector.url}"
        )
        + f"  grpc_port: {grpc_port}\nauth: {{enabled: true}}\n"
        + AB
    )
    root = kit.make_project(registered_project, tmp_path_factory.mktemp("otel") / "proj", config)
    key = create_key(load_settings(root / "prodai.yaml"), "tracer").key
    faults = root / "faults"
    faults.write_text("", encoding="utf-8")
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50", "PRODAI_FAULTS_FILE": str(faults)}
    server = kit.Server(root, env=env)
    kit.start_all(server)
    server.key, server.collector, server.grpc_url = key, collector, f"127.0.0.1:{grpc_port}"
    server.faults = faults
    yield server
    server.stop()
    collector.close()


def tree_of(kit: Any, collector: Collector, trace_id: str, root_span: str, *, need: set[str]) -> dict[str, Any]:
    """The spans of one request (by name), once the root and every name in ``need`` arrived."""

    def spans() -> dict[str, Any] | None:
        found = collector.of_trace(trace_id)
        root = next((s for s in found if s["span_id"] == root_span), None)
        if root is None:
            return None
        ids = {root["span_id"]}
        for _ in range(5):  # descendants of the root (this trace may hold other requests' spans too)
            ids |= {s["span_id"] for s in found if s["parent"] in ids}
        mine = [s for s in found if s["span_id"] in ids]
        names = {s["name"] for s in mine}
        return {"root": root, "spans": mine} if need <= names else None

    result: dict[str, Any] = kit.wait_until(spans, timeout=30, what=f"spans {sorted(need)} of {trace_id}")
    return result


def test_a_request_continues_the_callers_trace_in_logs_and_spans(traced: Any, kit: Any) -> None:
    unsampled = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    quiet = httpx.post(
        f"{traced.url}/predict",
        json={"text": "not sampled"},
        headers={
            "X-API-Key": traced.key,
            "X-User-ID": user_for("v1"),
            "traceparent": f"00-{unsampled}-{CALLER_SPAN}-00",
        },
        timeout=30,
    )
    assert quiet.status_code == 200 and quiet.headers["traceparent"].startswith(f"00-{unsampled}-")
    answer = httpx.post(
        f"{traced.url}/predict",
        json={"text": "follow me"},
        headers={
            "X-API-Key": traced.key,
            "X-User-ID": user_for("v1"),
            "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01",
            "tracestate": "gw=1",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    version, trace_id, server_span, flags = answer.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and server_span != CALLER_SPAN
    assert answer.headers["tracestate"] == "gw=1"

    tree = tree_of(
        kit,
        traced.collector,
        TRACE_ID,
        server_span,
        need={"prodai.guard", "prodai.cache", "prodai.resilience", "prodai.model", "prodai.queue", "prodai.forward"},
    )
    root = tree["root"]
    assert root["parent"] == CALLER_SPAN and root["name"] == "POST /predict" and root["service"] == "prodai"
    assert root["kind"] == 2  # SPAN_KIND_SERVER
    assert root["attributes"]["http.response.status_code"] == 200
    assert root["attributes"]["prodai.model_version"] == "1"
    by_name = {s["name"]: s for s in tree["spans"]}
    assert by_name["prodai.guard"]["parent"] == server_span
    assert by_name["prodai.guard"]["attributes"]["prodai.principal"] == "tracer"
    assert by_name["prodai.cache"]["parent"] == server_span
    assert by_name["prodai.cache"]["attributes"]["prodai.cache"] == "MISS"
    assert by_name["prodai.resilience"]["parent"] == by_name["prodai.cache"]["span_id"]
    assert by_name["prodai.model"]["parent"] == by_name["prodai.resilience"]["span_id"]
    assert by_name["prodai.model"]["attributes"]["prodai.model_version"] == "1"
    for step in ("prodai.queue", "prodai.forward"):
        assert by_name[step]["parent"] == by_name["prodai.model"]["span_id"]
    assert by_name["prodai.forward"]["attributes"]["prodai.batch_size"] >= 1
    # Exported in order: the unsampled request before it left nothing.
    assert traced.collector.of_trace(unsampled) == []

    # Every log line of the request carries the trace id (the access log line at least).
    lines = [json.loads(line) for line in traced.log().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("trace_id") == TRACE_ID]
    assert any(line.get("msg") == "request" and line.get("route") == "/predict" for line in mine), mine


def test_a_cache_hit_and_a_grpc_call_are_traced_too(traced: Any, kit: Any) -> None:
    import tritonclient.grpc as grpcclient

    hit_trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    for _ in range(2):
        answer = httpx.post(
            f"{traced.url}/predict",
            json={"text": "cached text"},
            headers={
                "X-API-Key": traced.key,
                "X-User-ID": user_for("v1"),
                "traceparent": f"00-{hit_trace}-{CALLER_SPAN}-01",
            },
            timeout=30,
        )
        assert answer.status_code == 200
    hit_span = answer.headers["traceparent"].split("-")[2]
    tree = tree_of(kit, traced.collector, hit_trace, hit_span, need={"prodai.cache"})
    names = [s["name"] for s in tree["spans"]]
    assert "prodai.model" not in names  # answered from the cache
    assert next(s for s in tree["spans"] if s["name"] == "prodai.cache")["attributes"]["prodai.cache"] == "HIT"

    grpc_trace = "6bf92f3577b34da6a3ce929d0e0e4736"
    client = grpcclient.InferenceServerClient(url=traced.grpc_url)
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array(["over grpc"], dtype=object))
    metadata = {
        "x-api-key": traced.key,
        "x-user-id": user_for("v1"),
        "traceparent": f"00-{grpc_trace}-{CALLER_SPAN}-01",
    }
    client.infer("clf", [text], headers=metadata)

    def grpc_root() -> dict[str, Any] | None:
        return next((s for s in traced.collector.of_trace(grpc_trace) if s["name"].endswith("/ModelInfer")), None)

    root = kit.wait_until(grpc_root, timeout=30, what="the gRPC server span")
    assert root["parent"] == CALLER_SPAN and root["name"] == "GRPC /inference.GRPCInferenceService/ModelInfer"
    tree = tree_of(kit, traced.collector, grpc_trace, root["span_id"], need={"prodai.guard", "prodai.forward"})
    assert {s["name"] for s in tree["spans"]} >= {"prodai.cache", "prodai.model", "prodai.queue"}


def test_the_fallback_path_is_traced_fault_injection(traced: Any, kit: Any) -> None:
    """Version 2 fails its forward pass (injected): its request is answered by v1 under one resilience span."""
    import time

    fallback_trace = "7bf92f3577b34da6a3ce929d0e0e4736"
    traced.faults.write_text("2\n", encoding="utf-8")
    time.sleep(1.0)  # the server re-reads the faults file at most every 0.2 s
    try:
        answer = httpx.post(
            f"{traced.url}/predict",
            json={"text": "fall back"},
            headers={
                "X-API-Key": traced.key,
                "X-User-ID": user_for("v2"),
                "traceparent": f"00-{fallback_trace}-{CALLER_SPAN}-01",
            },
            timeout=30,
        )
    finally:
        traced.faults.write_text("", encoding="utf-8")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-fallback"].startswith("v2->v1") and answer.json()["model_version"] == "1"
    root_span = answer.headers["traceparent"].split("-")[2]
    tree = tree_of(kit, traced.collector, fallback_trace, root_span, need={"prodai.resilience", "prodai.forward"})
    resilience = next(s for s in tree["spans"] if s["name"] == "prodai.resilience")
    assert resilience["attributes"]["prodai.fallback"].startswith("v2->v1")
    models = {s["attributes"]["prodai.model_version"]: s for s in tree["spans"] if s["name"] == "prodai.model"}
    assert set(models) == {"1", "2"}
    assert all(m["parent"] == resilience["span_id"] for m in models.values())
    assert models["2"]["status"] == 2 and models["1"]["status"] != 2  # STATUS_CODE_ERROR on the failed one


def test_nothing_of_opentelemetry_sdk_is_imported_when_off(tmp_path: Path, tiny_classifier_dir: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from prodai_cli.config import ProdaiConfig, Settings\n"
        "from prodai_cli.serving.app import create_app\n"
        "config = ProdaiConfig.model_validate({'auth': {'enabled': False}})\n"
        f"settings = Settings(config=config, path=None, root=Path({str(tmp_path)!r}))\n"
        f"create_app(settings, model={str(tiny_classifier_dir)!r})\n"
        "ours = ('opentelemetry.sdk', 'opentelemetry.exporter', 'grpc', 'tritonclient')\n"
        "print(sorted(m for m in sys.modules if m.startswith(ours)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
