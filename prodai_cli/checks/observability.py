"""Checklist items about what operators see: the Prometheus series and the JSON request logs."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

from prodai_cli.checks.result import CheckResult, failed, passed, warned
from prodai_cli.errors import ProdaiError

if TYPE_CHECKING:
    from prodai_cli.checks.context import CheckContext


EXPECTED_SERIES = (
    "prodai_requests_total",
    "prodai_request_latency_seconds",
    "prodai_batch_size",
    "prodai_queue_depth",
    "prodai_inflight_requests",
    "prodai_model_errors_total",
)
# A refused key-less request during the auth-failure lockout: wait this long at most, once, and ask again.
LOG_WAIT_S = 3.0


def _metric_names(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            # The parser strips _total from counter families; the exposed samples carry it.
            names.add(f"{family.name}_total")
    return names


def check_metrics(ctx: CheckContext) -> CheckResult:
    """``/metrics`` answers in Prometheus format with every documented series."""
    response = ctx.client.get("/metrics")
    if response.status_code in (401, 403) and ctx.request_key():
        response = ctx.client.get("/metrics", headers=ctx.headers(ctx.request_key()))
    if response.status_code != 200:
        hint = "Set monitoring.metrics: true in prodai.yaml and restart the server (Prometheus scrapes /metrics)"
        if response.status_code in (401, 403):
            hint = "Let Prometheus scrape /metrics without a client key (or pass --api-key)"
        return failed("metrics", f"GET /metrics answered {response.status_code}", hint)
    try:
        names = _metric_names(response.text)
    except ValueError as exc:
        return failed("metrics", f"/metrics is not Prometheus text: {exc}", "Serve /metrics with prometheus_client")
    missing = [series for series in EXPECTED_SERIES if series not in names]
    if missing:
        return failed(
            "metrics",
            f"/metrics lacks {', '.join(missing)} ({len(names)} series exposed)",
            "Run a prodai server of this release: dashboards and alerts read these series",
        )
    return passed("metrics", f"/metrics 200 with all {len(EXPECTED_SERIES)} expected series ({len(names)} in all)")


def _log_evidence(ctx: CheckContext, request_id: str) -> CheckResult | None:
    """Judge the server's own log lines, when they can be read from here (None otherwise)."""
    source = ctx.target.log_source
    if source is None:
        return None
    deadline = time.monotonic() + LOG_WAIT_S
    lines: list[str] = []
    mine: list[str] = []
    while True:
        try:
            lines = [line for line in source().splitlines() if line.strip()]
        except ProdaiError as exc:
            return failed("logging", f"cannot read the server's log: {exc.message}", exc.hint or "")
        mine = [line for line in lines if request_id in line]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not mine:
        return failed(
            "logging",
            f"no log line carries the request id {request_id} ({len(lines)} lines read)",
            "Set monitoring.access_log: true (one JSON line per request, with its id)",
        )
    try:
        record = json.loads(mine[-1])
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("request_id") != request_id:
        return failed(
            "logging",
            f"the request's log line is not a JSON object with its request_id: {mine[-1][:120]!r}",
            "Set monitoring.log_format: json",
        )
    plain = []
    for line in lines:
        try:
            if not isinstance(json.loads(line), dict):
                plain.append(line)
        except ValueError:
            plain.append(line)
    fields = ", ".join(sorted(record)[:8])
    evidence = f"X-Request-ID echoed; its log line is JSON ({fields})"
    if plain:
        return warned(
            "logging",
            f"{evidence}; but {len(plain)} of {len(lines)} log lines are not JSON, e.g. {plain[0][:100]!r}",
            "Route every library's output through the server's logging (warnings printed to stderr bypass it)",
        )
    return passed("logging", f"{evidence}; all {len(lines)} log lines read parse as JSON")


def check_logging(ctx: CheckContext) -> CheckResult:
    """Logs are JSON lines with a request id, and the server echoes ``X-Request-ID``."""
    request_id = f"prodai-check-{uuid.uuid4().hex[:12]}"
    response = ctx.client.get("/health/live", headers={"X-Request-ID": request_id})
    echoed = response.headers.get("x-request-id")
    if echoed != request_id:
        return failed(
            "logging",
            f"X-Request-ID {request_id} was not echoed (got {echoed!r})",
            "Serve through prodai's server (it echoes X-Request-ID); a proxy in front must pass the header on",
        )
    monitoring = ctx.settings.config.monitoring
    where = ctx.settings.path.name if ctx.settings.path else "embedded defaults"
    if monitoring.log_format != "json":
        return failed(
            "logging",
            f"X-Request-ID echoed, but monitoring.log_format is {monitoring.log_format!r} ({where})",
            "Set monitoring.log_format: json (log shippers parse one JSON object per line)",
        )
    if not monitoring.access_log:
        return failed(
            "logging",
            f"X-Request-ID echoed, but monitoring.access_log is false ({where}): requests leave no log line",
            "Set monitoring.access_log: true",
        )
    judged = _log_evidence(ctx, request_id)
    if judged is not None:
        return judged
    return passed(
        "logging",
        f"X-Request-ID echoed; monitoring.log_format json and access_log on ({where}); "
        "the server's log is not readable from here",
    )
