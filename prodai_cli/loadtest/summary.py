"""The summary of a load test (``summary.json``, ``--json``), its SLO verdict, and what MLflow records of it.

Figures come from the Locust child's ``final`` event: ``window`` covers the run minus the warm-up (what the
SLOs judge), ``run`` the whole run (what Locust's own CSV and HTML reports show).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.slo import SloResult, evaluate, percentile_key

if TYPE_CHECKING:
    from prodai_cli.loadtest.contention import LatencyScale
    from prodai_cli.loadtest.plan import LoadtestPlan

SUMMARY_FILE = "summary.json"
SCHEMA_VERSION = 1
# Locust request names carry the A/B variant and the version that answered as "<path> [<variant> v<version>]"
# (or "<path> [<variant>]"; see locustfile.VERSION_NAME_FORMAT).
_VARIANT_NAME = re.compile(r"^(?P<path>\S+) \[(?P<variant>[^\] ]+)(?: v(?P<version>[0-9]+))?\]$")
NO_VARIANT = "(none)"
# Figures of the window total that become MLflow metrics and summary "stats".
_FIGURE_KEYS = ("requests", "failures", "error_rate", "rps", "avg_ms", "min_ms", "max_ms")
_REPORT_FILES = (
    SUMMARY_FILE,
    "report.html",
    "locust_stats.csv",
    "locust_stats_history.csv",
    "locust_failures.csv",
    "locust_exceptions.csv",
    "locust.log",
)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


def figures(row: dict[str, Any]) -> dict[str, Any]:
    """A stats row without its name and method."""
    return {k: v for k, v in row.items() if k not in ("name", "method")}


def parse_name(name: str) -> tuple[str, str | None, str | None]:
    """A Locust request name split into its path, A/B variant and answering version (None when absent)."""
    match = _VARIANT_NAME.match(name)
    if not match:
        return name, None, None
    return match.group("path"), match.group("variant"), match.group("version")


def _group(
    entries: list[dict[str, Any]],
    part: int,
    times: dict[tuple[str, str], list[float]] | None,
    percentiles: list[float],
) -> dict[str, dict[str, Any]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    plain: list[dict[str, Any]] = []
    for row in entries:
        label = parse_name(str(row.get("name", "")))[part]
        if label is not None:
            rows.setdefault(label, []).append(row)
        elif row.get("requests"):
            plain.append(row)
    if rows and plain:
        rows[NO_VARIANT] = plain
    grouped: dict[str, dict[str, Any]] = {}
    for label, members in rows.items():
        if len(members) == 1 and (times is None or label == NO_VARIANT):
            grouped[label] = figures(members[0])
            continue
        requests = sum(int(r.get("requests") or 0) for r in members)
        failures = sum(int(r.get("failures") or 0) for r in members)
        merged: dict[str, Any] = {
            "requests": requests,
            "failures": failures,
            "error_rate": failures / requests if requests else None,
        }
        rates = [r["rps"] for r in members if isinstance(r.get("rps"), (int, float))]
        if rates:
            merged["rps"] = float(sum(rates))
        if times is not None:
            ordered = sorted(t for r in members for t in times.get((str(r["name"]), str(r.get("method", ""))), ()))
            merged["avg_ms"] = sum(ordered) / len(ordered) if ordered else None
            merged["max_ms"] = ordered[-1] if ordered else None
            merged["min_ms"] = ordered[0] if ordered else None
            for percent in percentiles:
                merged[percentile_key(percent)] = exact_percentile(ordered, percent)
        elif len(members) == 1:
            merged = figures(members[0])
        grouped[label] = merged
    return dict(sorted(grouped.items(), key=lambda item: _sort_key(item[0])))


def _sort_key(label: str) -> tuple[int, int, str]:
    # Names (and "(none)") alphabetically, then version numbers in numeric order.
    return (1, int(label), "") if label.isdigit() else (0, 0, label)


def variants(
    entries: list[dict[str, Any]],
    times: dict[tuple[str, str], list[float]] | None = None,
    percentiles: list[float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-variant figures from Locust rows named ``<path> [<variant> v<version>]``; empty when none names one.

    Requests without a variant (failed before the router, or a server without A/B) are grouped as ``(none)``.
    A variant answered by several versions (a fallback) has its rows merged; with ``times`` (response times
    per row) its latency figures are exact, else only counts are merged.
    """
    return _group(entries, 1, times, list(percentiles or ()))


def versions(
    entries: list[dict[str, Any]],
    times: dict[tuple[str, str], list[float]] | None = None,
    percentiles: list[float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Figures per answering version (keys ``"1"``, ``"2"``; ``(none)``: answers naming none); see :func:`variants`."""
    return _group(entries, 2, times, list(percentiles or ()))


def exact_percentile(ordered: list[float], percent: float) -> float | None:
    """The nearest-rank percentile of sorted response times: the smallest time with ``percent`` % at or below."""
    if not ordered:
        return None
    rank = math.ceil(percent / 100.0 * len(ordered))
    return float(ordered[min(max(rank, 1), len(ordered)) - 1])


def endpoints(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per endpoint with variant rows folded back into their path (request and failure counts)."""
    folded: dict[tuple[str, str], dict[str, Any]] = {}
    for row in entries:
        name = parse_name(str(row.get("name", "")))[0]
        key = (str(row.get("method", "")), name)
        slot = folded.setdefault(key, {"method": key[0], "name": name, "requests": 0, "failures": 0})
        slot["requests"] += int(row.get("requests") or 0)
        slot["failures"] += int(row.get("failures") or 0)
    for slot in folded.values():
        slot["error_rate"] = slot["failures"] / slot["requests"] if slot["requests"] else None
    return list(folded.values())


def build_summary(
    plan: LoadtestPlan,
    final: dict[str, Any],
    *,
    started_at: float,
    finished_at: float,
    latency_scale: LatencyScale | None = None,
) -> tuple[dict[str, Any], list[SloResult]]:
    """Judge the SLOs on the window figures and assemble the summary.

    With ``plan.scale_latency``, latency thresholds are multiplied by ``latency_scale.factor`` (the machine's
    measured contention); the summary records the scale either way.

    Returns:
        The summary dict and the per-SLO results. ``passed`` is true only when every SLO held, the window
        measured at least one request, and Locust reported no error of its own.

    """
    window = final.get("window") or {}
    run = final.get("run") or {}
    total = figures(window.get("total") or {})
    factor = latency_scale.factor if (latency_scale is not None and plan.scale_latency) else 1.0
    results = evaluate(plan.slos, total, latency_scale=factor)
    problems: list[str] = []
    if not total.get("requests"):
        problems.append("no request completed inside the SLO window")
    if final.get("error"):
        problems.append(str(final["error"]))
    if final.get("exceptions"):
        problems.append("the Locust user raised: " + "; ".join(e["message"] for e in final["exceptions"]))
    passed = all(r.passed for r in results) and not problems
    answered: dict[str, dict[str, Any]] = window.get("versions") or versions(window.get("entries") or [])
    verdicts = {
        version: version_verdict(plan, row, total, problems, factor)
        for version, row in answered.items()
        if version != NO_VARIANT
    }
    run_total = figures(run.get("total") or {})
    workers = final.get("workers") or []
    summary: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "passed": passed,
        "failed": [r.slo.text for r in results if not r.passed],
        "problems": problems,
        "slos": [r.to_dict() for r in results],
        "target": plan.target.to_dict() if plan.target else None,
        "settings": plan.settings_dict(),
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "window_seconds": final.get("window_seconds"),
        "stats": total,
        "run": run_total,
        "endpoints": endpoints(window.get("entries") or []),
        "variants": window.get("variants") or variants(window.get("entries") or []),
        "versions": answered,
        "mixed": len([v for v in answered if v != NO_VARIANT]) > 1,
        "version_verdicts": verdicts,
        "errors": window.get("errors") or [],
        "workers": workers,
        "worker_requests": sum(int(w.get("requests", 0)) for w in workers) if workers else None,
        "exceptions": final.get("exceptions") or [],
        "report_dir": str(plan.report_dir) if plan.report_dir else None,
        "latency_scale": {**latency_scale.to_dict(), "applied": plan.scale_latency} if latency_scale else None,
        "mlflow": None,
    }
    return summary, results


def version_verdict(
    plan: LoadtestPlan, row: dict[str, Any], total: dict[str, Any], problems: list[str], factor: float
) -> dict[str, Any]:
    """The SLOs judged on one answering version's own figures.

    Latency and error rate are that version's; ``rps`` is the server's whole throughput (a version's share of
    it depends on the split, not on the version). Problems of the run (no request measured, a Locust error)
    fail every version.
    """
    own = {**row, "rps": total.get("rps")}
    results = evaluate(plan.slos, own, latency_scale=factor)
    return {
        "passed": all(r.passed for r in results) and not problems,
        "failed": [r.slo.text for r in results if not r.passed],
        "requests": row.get("requests"),
    }


def write_summary(report_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` (listing the report files present) and return its path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    summary["files"] = sorted({name for name in _REPORT_FILES if (report_dir / name).exists()} | {SUMMARY_FILE})
    path = report_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _metric_name(text: str) -> str:
    # MLflow metric keys allow letters, digits, _ - . / and spaces.
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def mixed_note(summary: dict[str, Any]) -> str:
    """``v1 36, v2 80`` when more than one version answered the run, else empty."""
    if not summary.get("mixed"):
        return ""
    return ", ".join(
        f"v{version} {row.get('requests', 0)}"
        for version, row in (summary.get("versions") or {}).items()
        if version != NO_VARIANT
    )


def mlflow_fields(summary: dict[str, Any], version: str | None = None) -> dict[str, dict[str, Any]]:
    """What a load test records in MLflow: run metrics and params, and the model-version tags.

    With ``version`` (one that answered), the figures and the verdict are that version's own, and a run
    several versions answered says so in the ``prodai.loadtest.mixed`` tag (``v1 36, v2 80``) and the
    ``version_requests_share`` metric.

    Metrics: the window figures (``requests``, ``failures``, ``error_rate``, ``rps``, ``avg_ms``, ``min_ms``,
    ``max_ms``, ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms`` and any other percentile an SLO names),
    ``window_seconds``, ``run_requests``, ``run_failures``, ``slo_passed`` (1 or 0), and per variant
    ``variant.<name>.requests|failures|error_rate|p95_ms|p99_ms|avg_ms``.
    """
    stats = summary.get("stats") or {}
    verdict: dict[str, Any] = {}
    if version is not None:
        stats = {**((summary.get("versions") or {}).get(version) or {}), "rps": stats.get("rps")}
        verdict = (summary.get("version_verdicts") or {}).get(version) or {}
    metrics: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[_metric_name(key)] = float(value)
    if isinstance(summary.get("window_seconds"), (int, float)):
        metrics["window_seconds"] = float(summary["window_seconds"])
    run = summary.get("run") or {}
    for key in ("requests", "failures"):
        if isinstance(run.get(key), (int, float)):
            metrics[f"run_{key}"] = float(run[key])
    metrics["slo_passed"] = 1.0 if (verdict.get("passed") if verdict else summary.get("passed")) else 0.0
    total_requests = (summary.get("stats") or {}).get("requests")
    if version is not None and total_requests:
        metrics["version_requests_share"] = float(stats.get("requests") or 0) / float(total_requests)
    for name, row in (summary.get("variants") or {}).items():
        for key in ("requests", "failures", "error_rate", "avg_ms", "p95_ms", "p99_ms"):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[_metric_name(f"variant.{name}.{key}")] = float(value)
    settings = summary.get("settings") or {}
    target = summary.get("target") or {}
    params = {
        "target_url": target.get("url"),
        "deployment": target.get("deployment"),
        "mode": settings.get("mode"),
        "users": settings.get("users"),
        "spawn_rate": settings.get("spawn_rate"),
        "duration_s": settings.get("duration_s"),
        "warmup_s": settings.get("warmup_s"),
        "workers": settings.get("workers"),
        "path": settings.get("path"),
        "data": settings.get("data"),
        "payloads": settings.get("payloads"),
        "user_ids": settings.get("user_ids"),
        "slos": "; ".join(settings.get("slos") or []),
    }
    slo_texts = "; ".join(r["slo"] for r in summary.get("slos") or [])
    version_tags = {
        "prodai.loadtest.slos": slo_texts,
        "prodai.loadtest.failed": "; ".join((verdict.get("failed") if verdict else summary.get("failed")) or []),
        "prodai.loadtest.mixed": mixed_note(summary),
        "prodai.loadtest.requests": str(stats.get("requests", 0)),
        "prodai.loadtest.error_rate": _tag_number(stats.get("error_rate")),
        "prodai.loadtest.p95_ms": _tag_number(stats.get("p95_ms")),
        "prodai.loadtest.rps": _tag_number(stats.get("rps")),
    }
    return {
        "metrics": metrics,
        "params": {k: str(v) for k, v in params.items() if v is not None and v != ""},
        "version_tags": version_tags,
    }


def _tag_number(value: Any) -> str:
    return f"{float(value):.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
