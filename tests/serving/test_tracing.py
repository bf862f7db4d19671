"""W3C trace context: an incoming traceparent is continued into the JSON log and the response of a real
`prodai serve` process; malformed ones start a new trace; the log filter stamps every line of a request.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prodai_cli.serving.logging import JsonFormatter
from prodai_cli.serving.tracing import TraceFilter, parse_traceparent, trace_from, trace_id_var

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (f"00-{TRACE_ID}-{PARENT}-01", True),
        (f"00-{TRACE_ID}-{PARENT}-00", True),
        (f"01-{TRACE_ID}-{PARENT}-01-future", True),  # a later version may carry more fields
        (f"00-{TRACE_ID}-{PARENT}-01-extra", False),  # version 00 may not
        (f"ff-{TRACE_ID}-{PARENT}-01", False),
        (f"00-{'0' * 32}-{PARENT}-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        (f"00-{TRACE_ID.upper()}-{PARENT}-01", False),
        (f"00-{TRACE_ID[:-1]}-{PARENT}-01", False),
        ("garbage", False),
        ("", False),
    ],
)
def test_traceparent_parsing_follows_the_w3c_rules(header: str, valid: bool) -> None:
    assert (parse_traceparent(header) is not None) is valid
    trace = trace_from(header, "vendor=abc")
    assert len(trace.trace_id) == 32 and len(trace.span_id) == 16
    assert (trace.trace_id == TRACE_ID) is valid
    assert (trace.parent_id == (PARENT if valid else None)) or not valid
    assert trace.tracestate == ("vendor=abc" if valid else None)


def test_the_filter_stamps_every_line_logged_inside_a_request() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceFilter())
    log = logging.getLogger("prodai.test.tracing")
    log.addHandler(handler)
    log.propagate = False
    try:
        token = trace_id_var.set(TRACE_ID)
        log.warning("inside")
        trace_id_var.reset(token)
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["trace_id"] == TRACE_ID
    assert "trace_id" not in outside


@pytest.mark.slow
def test_a_given_traceparent_reaches_the_log_lines_and_the_response(registered_copy: Path, serve_process: Any) -> None:
    server = serve_process(registered_copy, "--model", "clf@production")
    server.wait_ready()
    sent = f"00-{TRACE_ID}-{PARENT}-01"
    answer = httpx.post(
        f"{server.url}/predict",
        json={"text": "traced"},
        headers={"traceparent": sent, "tracestate": "gw=1", "X-Request-ID": "traced-1"},
        timeout=30,
    )
    assert answer.status_code == 200
    version, trace_id, span_id, flags = answer.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != PARENT and len(span_id) == 16  # the server's own span, child of the caller's
    assert answer.headers["tracestate"] == "gw=1"
    fresh = httpx.post(f"{server.url}/predict", json={"text": "untraced"}, headers={"X-Request-ID": "fresh-1"})
    fresh_trace = fresh.headers["traceparent"].split("-")[1]
    assert fresh_trace != TRACE_ID and len(fresh_trace) == 32
    bad = httpx.post(f"{server.url}/predict", json={"text": "x"}, headers={"traceparent": "00-zz-zz-01"})
    assert bad.status_code == 200 and bad.headers["traceparent"].split("-")[1] != "zz"

    def lines_of(request_id: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == request_id]

    deadline = time.monotonic() + 20
    while not (lines_of("traced-1") and lines_of("fresh-1")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the log is written by a thread of its own
    traced = lines_of("traced-1")
    assert traced, server.log()[-2000:]
    assert all(line["trace_id"] == TRACE_ID for line in traced)
    assert all(line["trace_id"] == fresh_trace for line in lines_of("fresh-1"))
