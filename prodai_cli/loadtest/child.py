"""The Locust child process of ``prodai loadtest`` (``python -m prodai_cli.loadtest.child --spec FILE``).

Not for people: the parent (:mod:`prodai_cli.loadtest.runner`) writes a JSON spec, starts this module as a
local runner, a master (with workers beside it or on other machines) or a worker, and reads JSON lines from
its stdout:

- ``{"event": "listening", "port": P}``: a master is ready for workers.
- ``{"event": "workers", "connected": K, "expected": N}``: while a master waits for its workers.
- ``{"event": "started", "at": T}``: users start spawning.
- ``{"event": "stats", ...}``: once a second, the whole-run figures so far.
- ``{"event": "final", ...}``: the run's figures, the SLO window's figures and each worker's own counts.
- ``{"event": "error", "message": M}``: the run could not go on; the process exits 1.
- ``{"event": "worker_done", "requests": N, "failures": F}``: a worker's own count, when it exits.

The SLO window (the run minus ``warmup_s``) is measured where requests happen: each worker keeps its own
window stats from its ``test_start`` and ships them to the master beside Locust's own report, so the warm-up
boundary is exact rather than rounded to Locust's 3-second report interval.
"""

# ruff: noqa: I001  (locust must be imported first, see below)
from __future__ import annotations

# Locust first: importing it monkey-patches the process with gevent, which must happen before anything
# else touches sockets, ssl or threads.
import locust  # noqa: F401

import argparse
import csv
import json
import logging
import os
from array import array
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import stats as locust_stats
from locust.env import Environment
from locust.html import get_html_report
from locust.runners import WorkerRunner
from locust.stats import RequestStats, StatsEntry, StatsError

from prodai_cli.loadtest import locustfile
from prodai_cli.loadtest.summary import exact_percentile, variants, versions
from prodai_cli.slo import percentile_key

CSV_PREFIX = "locust"
HTML_REPORT = "report.html"
# Custom messages between master and workers (Locust's own distributed protocol carries them).
MSG_HELLO = "prodai_hello"
MSG_SPEC = "prodai_spec"
MSG_FLUSH = "prodai_flush"
MSG_FLUSHED = "prodai_flushed"
WINDOW_KEY = "prodai_window"


def emit(event: dict[str, Any]) -> None:
    """One event line for the parent on stdout."""
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------- figures


def entry_figures(entry: StatsEntry, percentiles: list[float], seconds: float | None) -> dict[str, Any]:
    """Plain figures of one Locust stats entry; ``seconds`` turns the count into a rate."""
    n = int(entry.num_requests)
    timed = n - int(entry.num_none_requests)
    figures: dict[str, Any] = {
        "name": entry.name,
        "method": entry.method or "",
        "requests": n,
        "failures": int(entry.num_failures),
        "error_rate": (entry.num_failures / n) if n else None,
        "avg_ms": float(entry.avg_response_time) if timed else None,
        "min_ms": float(entry.min_response_time) if entry.min_response_time is not None else None,
        "max_ms": float(entry.max_response_time) if timed else None,
        "rps": (n / seconds) if seconds and seconds > 0 else None,
    }
    for percent in percentiles:
        figures[percentile_key(percent)] = float(entry.get_response_time_percentile(percent / 100.0)) if timed else None
    return figures


def stats_figures(stats: RequestStats, percentiles: list[float], seconds: float | None) -> dict[str, Any]:
    """Total, per-entry and per-error figures of a RequestStats."""
    return {
        "total": entry_figures(stats.total, percentiles, seconds),
        "entries": [entry_figures(e, percentiles, seconds) for e in locust_stats.sort_stats(stats.entries)],
        "errors": [
            {
                "method": e.method or "",
                "name": e.name,
                "error": StatsError.parse_error(e.error),
                "occurrences": int(e.occurrences),
            }
            for e in locust_stats.sort_stats(stats.errors)
        ],
    }


def merge_report(stats: RequestStats, report: dict[str, Any]) -> None:
    """Add one worker report (entries, total, errors) to ``stats`` the way Locust's master does."""
    for data in report.get("stats", []):
        entry = StatsEntry.unserialize(data, stats)
        stats.entries[(entry.name, entry.method)].extend(entry)
    for key, data in report.get("errors", {}).items():
        if key in stats.errors:
            stats.errors[key].occurrences += data["occurrences"]
        else:
            stats.errors[key] = StatsError.unserialize(data)
    if "stats_total" in report:
        stats.total.extend(StatsEntry.unserialize(report["stats_total"], stats))


class Window:
    """The SLO window's stats and this process's own request count.

    Args:
        warmup_s: Leading seconds after ``test_start`` left out of the window.

    """

    def __init__(self, warmup_s: float) -> None:
        self.warmup_s = warmup_s
        self.stats = RequestStats(use_response_times_cache=False)
        self.measure_from: float | None = None
        self.requests = 0
        self.failures = 0
        # Every response time of the window, per (name, method): Locust's own percentiles come from buckets
        # rounded to two significant digits (950-1049 ms all read 1000 ms), too coarse to judge an SLO by.
        self.times: dict[tuple[str, str], array[float]] = {}
        self._unsent: dict[tuple[str, str], array[float]] = {}

    def start(self) -> None:
        """Called on ``test_start``: the window opens ``warmup_s`` from now."""
        self.stats.clear_all()
        self.requests = 0
        self.failures = 0
        self.times = {}
        self._unsent = {}
        self.measure_from = time.time() + self.warmup_s

    def add_times(self, name: str, method: str, times: Any) -> None:
        """Keep response times (ms) measured here or reported by a worker."""
        self.times.setdefault((name, method), array("d")).extend(float(t) for t in times)

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        """Count every request; keep those after the warm-up in the window stats."""
        self.requests += 1
        if exception:
            self.failures += 1
        if self.measure_from is not None and time.time() >= self.measure_from:
            self.stats.log_request(request_type, name, response_time, response_length)
            if response_time is not None:
                self.add_times(name, request_type, (response_time,))
                self._unsent.setdefault((name, request_type), array("d")).append(float(response_time))
            if exception:
                self.stats.log_error(request_type, name, exception)

    def report(self) -> dict[str, Any]:
        """The window stats since the last report, in Locust's wire format; resets what it sends."""
        report = {
            "stats": self.stats.serialize_stats(),
            "stats_total": self.stats.total.get_stripped_report(),
            "errors": self.stats.serialize_errors(),
            "times": [[name, method, list(times)] for (name, method), times in self._unsent.items()],
        }
        self.stats.errors = {}
        self._unsent = {}
        return report

    def exact(self, figures: dict[str, Any], percentiles: list[float]) -> dict[str, Any]:
        """``figures`` (of :func:`stats_figures`) with every percentile computed from the recorded times."""
        by_name = {key: sorted(times) for key, times in self.times.items()}
        total = sorted(t for times in self.times.values() for t in times)
        for percent in percentiles:
            key = percentile_key(percent)
            figures["total"][key] = exact_percentile(total, percent)
            for entry in figures["entries"]:
                entry[key] = exact_percentile(by_name.get((entry["name"], entry["method"]), []), percent)
        # Per variant and per answering version, from the same recorded times (a version may have answered
        # under several variants, a variant may have been answered by several versions).
        figures["variants"] = variants(figures["entries"], by_name, percentiles)
        figures["versions"] = versions(figures["entries"], by_name, percentiles)
        return figures


# ----------------------------------------------------------------------------------------------- controller


def run_controller(spec: dict[str, Any]) -> int:
    """Run a local or master runner for the spec's duration, write reports, emit the final figures."""
    master = spec["mode"] == "master"
    percentiles = [float(p) for p in spec["percentiles"]]
    user_settings = dict(spec["user"])
    locustfile.configure(user_settings)
    env = Environment(user_classes=[locustfile.ProdaiUser], host=spec["host"], stop_timeout=0.0)
    window = Window(float(spec["warmup_s"]))
    env.events.test_start.add_listener(lambda **_: window.start())
    if master:
        runner: Any = env.create_master_runner(
            master_bind_host=spec.get("master_bind_host", "*"), master_bind_port=int(spec.get("master_port", 0))
        )
        emit({"event": "listening", "port": runner.server.port})
        spec_sent: set[str] = set()
        flushed: dict[str, dict[str, Any]] = {}

        def on_hello(environment: Environment, msg: Any) -> None:
            runner.send_message(MSG_SPEC, {**user_settings, "warmup_s": window.warmup_s}, client_id=msg.node_id)
            spec_sent.add(msg.node_id)

        def on_flushed(environment: Environment, msg: Any) -> None:
            flushed[msg.node_id] = {"id": msg.node_id, **msg.data}

        def on_worker_report(client_id: str, data: dict[str, Any]) -> None:
            if WINDOW_KEY in data:
                merge_report(window.stats, data[WINDOW_KEY])
                for name, method, times in data[WINDOW_KEY].get("times", []):
                    window.add_times(name, method, times)

        runner.register_message(MSG_HELLO, on_hello)
        runner.register_message(MSG_FLUSHED, on_flushed)
        env.events.worker_report.add_listener(on_worker_report)
        expected = int(spec["expect_workers"])
        deadline = time.monotonic() + float(spec.get("worker_timeout_s", 60))
        last_note = 0.0
        while len(runner.clients.ready) < expected or len(spec_sent) < expected:
            if time.monotonic() > deadline:
                emit(
                    {
                        "event": "error",
                        "message": f"only {len(runner.clients.ready)} of {expected} Locust workers connected "
                        f"within {spec.get('worker_timeout_s', 60)}s",
                    }
                )
                runner.quit()
                return 1
            if time.monotonic() - last_note >= 1:
                emit({"event": "workers", "connected": len(runner.clients.ready), "expected": expected})
                last_note = time.monotonic()
            gevent.sleep(0.1)
    else:
        runner = env.create_local_runner()
        env.events.request.add_listener(window.on_request)

    report_dir = Path(spec["report_dir"]) if spec.get("report_dir") else None
    csv_writer = None
    greenlets = []
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        csv_writer = locust_stats.StatsCSVFileWriter(
            env, locust_stats.PERCENTILES_TO_REPORT, str(report_dir / CSV_PREFIX), full_history=True
        )
        greenlets.append(gevent.spawn(csv_writer.stats_writer))
    greenlets.append(gevent.spawn(locust_stats.stats_history, runner))

    started = time.time()
    emit({"event": "started", "at": started})
    spawner = gevent.spawn(runner.start, int(spec["users"]), float(spec["spawn_rate"]))
    duration = float(spec["duration_s"])
    interval = float(spec.get("stats_interval_s", 1.0))
    error: str | None = None
    while True:
        left = started + duration - time.time()
        if left <= 0:
            break
        gevent.sleep(min(interval, left))
        elapsed = time.time() - started
        live = stats_figures(runner.stats, percentiles, elapsed)
        emit(
            {
                "event": "stats",
                "elapsed": elapsed,
                "users": runner.user_count,
                "workers": runner.worker_count if master else None,
                **live,
            }
        )
        if master and runner.worker_count == 0 and runner.state != "spawning":
            error = "every Locust worker went away during the run"
            break

    stopped = time.time()
    spawner.kill(block=True)
    runner.stop()
    workers: list[dict[str, Any]] = []
    if master:
        # Each worker sends the stats it has not reported yet, then its own count of what it sent: the
        # master's totals and the workers' counts must then agree exactly.
        ids = set(spec_sent)
        for client_id in ids:
            runner.send_message(MSG_FLUSH, None, client_id=client_id)
        flush_deadline = time.monotonic() + float(spec.get("flush_timeout_s", 15))
        while not ids.issubset(flushed) and time.monotonic() < flush_deadline:
            gevent.sleep(0.05)
        workers = sorted(flushed.values(), key=lambda w: (w.get("index", 0), w["id"]))
        missing = ids - set(flushed)
        if missing and error is None:
            error = f"{len(missing)} Locust worker(s) did not send their final figures"

    measure_from = window.measure_from if window.measure_from is not None else started + window.warmup_s
    window_seconds = max(stopped - measure_from, 0.0)
    final = {
        "event": "final",
        "started_at": started,
        "measure_from": measure_from,
        "stopped_at": stopped,
        "window_seconds": window_seconds,
        "window": window.exact(stats_figures(window.stats, percentiles, window_seconds), percentiles),
        "run": stats_figures(runner.stats, percentiles, stopped - started),
        "workers": workers,
        "exceptions": [{"count": e["count"], "message": e["msg"]} for e in runner.exceptions.values()],
        "error": error,
    }
    if report_dir is not None:
        _write_reports(env, report_dir, csv_writer, greenlets)
    emit(final)
    runner.quit()
    return 0 if error is None else 1


def _write_reports(env: Environment, report_dir: Path, csv_writer: Any, greenlets: list[Any]) -> None:
    """Locust's CSVs (final rows) and its HTML report."""
    for greenlet in greenlets:
        greenlet.kill(block=True)
    if csv_writer is not None:
        csv_writer.close_files()
    # The periodic writer may have stopped between two ticks: rewrite the final tables in full.
    final = locust_stats.StatsCSV(env, locust_stats.PERCENTILES_TO_REPORT)
    prefix = str(report_dir / CSV_PREFIX)
    for suffix, write in (
        ("_stats.csv", final.requests_csv),
        ("_failures.csv", final.failures_csv),
        ("_exceptions.csv", final.exceptions_csv),
    ):
        with open(prefix + suffix, "w", newline="", encoding="utf-8") as handle:
            write(csv.writer(handle))
    html = get_html_report(env, show_download_link=False)
    (report_dir / HTML_REPORT).write_text(html, encoding="utf-8")


# ----------------------------------------------------------------------------------------------- worker


def run_worker(spec: dict[str, Any]) -> int:
    """Run a worker until its master says quit; print its own request count last."""
    env = Environment(user_classes=[locustfile.ProdaiUser], stop_timeout=0.0)
    window = Window(0.0)
    env.events.test_start.add_listener(lambda **_: window.start())
    env.events.request.add_listener(window.on_request)
    try:
        runner: WorkerRunner = env.create_worker_runner(spec["master_host"], int(spec["master_port"]))
    except ConnectionError:
        where = f"{spec['master_host']}:{spec['master_port']}"
        emit({"event": "error", "message": f"cannot reach the Locust master at {where}"})
        return 1

    def on_spec(environment: Environment, msg: Any) -> None:
        locustfile.configure(msg.data)
        window.warmup_s = float(msg.data.get("warmup_s", 0.0))

    def on_flush(environment: Environment, msg: Any) -> None:
        data: dict[str, Any] = {}
        environment.events.report_to_master.fire(client_id=runner.client_id, data=data)
        runner.send_message("stats", data)
        runner.send_message(
            MSG_FLUSHED, {"index": runner.worker_index, "requests": window.requests, "failures": window.failures}
        )

    def on_report(client_id: str, data: dict[str, Any]) -> None:
        data[WINDOW_KEY] = window.report()

    runner.register_message(MSG_SPEC, on_spec)
    runner.register_message(MSG_FLUSH, on_flush)
    env.events.report_to_master.add_listener(on_report)
    # Ask for the spec only now that its handler exists (an unsolicited one could arrive before it).
    runner.send_message(MSG_HELLO, None)
    emit({"event": "connected", "index": runner.worker_index})
    runner.greenlet.join()
    emit({"event": "worker_done", "requests": window.requests, "failures": window.failures})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Read the spec and run as it says."""
    parser = argparse.ArgumentParser(prog="python -m prodai_cli.loadtest.child", description=__doc__)
    parser.add_argument("--spec", required=True, help="JSON spec written by prodai loadtest")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    logging.basicConfig(
        level=getattr(logging, str(spec.get("log_level", "WARNING")).upper(), logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if spec["mode"] == "worker":
        return run_worker(spec)
    return run_controller(spec)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Locust leaves greenlets (heartbeats, zmq) behind; do not let them hold the process open.
    os._exit(code)
