"""Run a planned load test: Locust child processes on one side, SLO verdict, reports and MLflow on the other.

This process never imports Locust (it would monkey-patch everything with gevent). It starts
``python -m prodai_cli.loadtest.child`` as a local runner or a master plus worker processes, reads the JSON
events they print, hands live figures to a callback, and turns the final figures into a summary, a verdict
per SLO, ``summary.json`` beside Locust's reports, and (for a registered version) an MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from prodai_cli.errors import ProdaiError
from prodai_cli.loadtest.plan import LoadtestPlan
from prodai_cli.loadtest.summary import build_summary, write_summary
from prodai_cli.slo import SloResult, percentiles_for

if TYPE_CHECKING:
    from prodai_cli.config import Settings

EventCallback = Callable[[dict[str, Any]], None]
CONTROLLER_LOG = "locust.log"
# Past the planned duration, how long the parent waits for Locust to stop, flush and report.
STOP_GRACE_S = 90.0


@dataclass
class LoadtestResult:
    """The outcome of :func:`run_loadtest`.

    Attributes:
        summary: The summary (also written as ``summary.json``).
        results: Each SLO with its observed value and verdict.
        report_dir: Where the reports lie.
        run_id: The MLflow run the summary was logged to, if any.

    """

    summary: dict[str, Any]
    results: list[SloResult]
    report_dir: Path | None
    run_id: str | None = None

    @property
    def passed(self) -> bool:
        """Every SLO held (and the run measured something)."""
        return bool(self.summary.get("passed"))

    @property
    def failed(self) -> list[SloResult]:
        """The SLOs that did not hold."""
        return [r for r in self.results if not r.passed]


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[str]
    log: IO[str]
    events: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a stray print in the child; events are JSON objects only
                if isinstance(event, dict):
                    self.events.put(event)
            self.events.put(None)

        threading.Thread(target=read, name=f"prodai-loadtest-{self.name}", daemon=True).start()


def _spec_file(spec: dict[str, Any]) -> Path:
    # The spec may hold the API key: a private temp file (mkstemp creates it 0600), deleted after the run.
    fd, name = tempfile.mkstemp(prefix="prodai-loadtest-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    return Path(name)


def _start(name: str, spec: dict[str, Any], log_path: Path, spec_files: list[Path]) -> _Child:
    path = _spec_file(spec)
    spec_files.append(path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115  (closed with the child)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodai_cli.loadtest.child", "--spec", str(path)],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        text=True,
        # Its own session: Ctrl-C reaches only us, and we stop the children in order.
        start_new_session=True,
    )
    child = _Child(name=name, proc=proc, log=log)
    child.start_reader()
    return child


def _stop(children: list[_Child], timeout_s: float = 10.0) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=5)
        child.log.close()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _user_settings(plan: LoadtestPlan) -> dict[str, Any]:
    return {
        "path": plan.path,
        "payloads": plan.payloads,
        "api_key": plan.api_key,
        "api_key_header": plan.api_key_header,
        "user_ids": plan.user_ids,
        "user_header": plan.user_header,
        "timeout_s": plan.request_timeout_s,
    }


def execute(plan: LoadtestPlan, on_event: EventCallback | None = None) -> dict[str, Any]:
    """Run Locust for a local or master plan and return its final figures (the child's ``final`` event).

    Raises:
        ProdaiError: Locust could not run (workers never connected, a child crashed, no final figures).

    """
    assert plan.target is not None and plan.report_dir is not None
    report_dir = plan.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    distributed = plan.mode == "master" or plan.workers > 0
    spec = {
        "mode": "master" if distributed else "local",
        "host": plan.target.url,
        "users": plan.users,
        "spawn_rate": plan.spawn_rate,
        "duration_s": plan.duration_s,
        "warmup_s": plan.warmup_s,
        "percentiles": percentiles_for(plan.slos),
        "report_dir": str(report_dir),
        "expect_workers": plan.workers,
        "master_bind_host": plan.master_bind_host if plan.mode == "master" else "127.0.0.1",
        "master_port": plan.master_port if plan.mode == "master" else 0,
        "worker_timeout_s": plan.worker_timeout_s,
        "user": _user_settings(plan),
    }
    children: list[_Child] = []
    spec_files: list[Path] = []
    final: dict[str, Any] | None = None
    error: str | None = None
    try:
        controller = _start("controller", spec, report_dir / CONTROLLER_LOG, spec_files)
        children.append(controller)
        deadline = time.monotonic() + plan.worker_timeout_s + plan.duration_s + STOP_GRACE_S
        while True:
            if time.monotonic() > deadline:
                error = "Locust did not finish in time"
                break
            try:
                event = controller.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event is None:
                break
            kind = event.get("event")
            if kind == "listening" and plan.mode == "local" and plan.workers > 0:
                for index in range(plan.workers):
                    worker_spec = {"mode": "worker", "master_host": "127.0.0.1", "master_port": event["port"]}
                    log = report_dir / f"locust-worker-{index + 1}.log"
                    children.append(_start(f"worker-{index + 1}", worker_spec, log, spec_files))
            elif kind == "final":
                final = event
            elif kind == "error":
                error = str(event.get("message"))
            if on_event is not None and kind in ("listening", "workers", "started", "stats"):
                on_event(event)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=30)
    finally:
        _stop(children)
        for path in spec_files:
            path.unlink(missing_ok=True)
    if final is None:
        detail = error or f"the Locust process exited with status {children[0].proc.returncode}"
        tail = _tail(report_dir / CONTROLLER_LOG)
        raise ProdaiError(
            f"The load test could not run: {detail}" + (f"\n{tail}" if tail else ""),
            hint=f"Locust's log: {report_dir / CONTROLLER_LOG}",
        )
    return final


def run_worker(plan: LoadtestPlan, on_event: EventCallback | None = None) -> dict[str, Any]:
    """Serve a remote master until it ends the test; return this worker's own request count.

    Raises:
        ProdaiError: The master cannot be reached or the worker crashed.

    """
    log_dir = plan.report_dir or Path(tempfile.mkdtemp(prefix="prodai-loadtest-worker-"))
    spec = {"mode": "worker", "master_host": plan.master_host, "master_port": plan.master_port}
    spec_files: list[Path] = []
    child = _start("worker", spec, log_dir / "locust-worker.log", spec_files)
    done: dict[str, Any] | None = None
    error: str | None = None
    try:
        while True:
            event = child.events.get()
            if event is None:
                break
            if event.get("event") == "worker_done":
                done = event
            elif event.get("event") == "error":
                error = str(event.get("message"))
            elif on_event is not None:
                on_event(event)
        child.proc.wait(timeout=30)
    finally:
        _stop([child])
        for path in spec_files:
            path.unlink(missing_ok=True)
    if done is None:
        raise ProdaiError(f"The Locust worker failed: {error or _tail(log_dir / 'locust-worker.log')}")
    return done


def run_loadtest(
    settings: Settings,
    plan: LoadtestPlan,
    *,
    on_event: EventCallback | None = None,
    log_to_registry: bool = True,
) -> LoadtestResult:
    """Run a local or master plan end to end: Locust, verdict, ``summary.json``, MLflow.

    Args:
        settings: Loaded settings (the registry the run is logged to).
        plan: A plan from :func:`prodai_cli.loadtest.plan.build_plan` (mode ``local`` or ``master``).
        on_event: Called with each live event (``workers``, ``started``, ``stats``) while Locust runs.
        log_to_registry: Log the summary to the model version under test when the plan names one.

    Returns:
        The summary, the verdict per SLO, where the reports are and the MLflow run id.

    Raises:
        ProdaiError: Locust could not run. An SLO that fails is not an exception: see ``result.passed``.

    """
    from prodai_cli.loadtest.contention import ContentionSampler

    started = time.time()
    sampler = ContentionSampler(plan.max_latency_scale)
    sampler.start()
    try:
        final = execute(plan, on_event)
    finally:
        scale = sampler.stop()
    summary, results = build_summary(plan, final, started_at=started, finished_at=time.time(), latency_scale=scale)
    assert plan.report_dir is not None
    write_summary(plan.report_dir, summary)
    run_id: str | None = None
    target = plan.target
    if log_to_registry and target is not None and target.model and target.version is not None:
        run_id = _log_evidence(settings, plan, summary, target.model, target.version)
        write_summary(plan.report_dir, summary)
    return LoadtestResult(summary=summary, results=results, report_dir=plan.report_dir, run_id=run_id)


def attributed_versions(summary: dict[str, Any], named: int) -> list[int]:
    """The versions a run's evidence belongs to: those that answered, else the one the plan named.

    The server stamps every answer with the version that computed it; under an A/B split (or after a
    fallback) that is not the version the user named, so the evidence goes where the answers came from. A
    run in which no answer named a version (every request refused, an old server) stays on ``named``.
    """
    answered = sorted(int(v) for v in (summary.get("versions") or {}) if str(v).isdigit())
    return answered or [named]


def _log_evidence(
    settings: Settings, plan: LoadtestPlan, summary: dict[str, Any], model: str, named: int
) -> str | None:
    """Log the run to each version that answered (see :func:`attributed_versions`); fill ``summary["mlflow"]``."""
    from prodai_cli.loadtest.summary import mlflow_fields
    from prodai_cli.registry import Registry

    assert plan.report_dir is not None
    registry = Registry(settings)
    runs: list[dict[str, Any]] = []
    for version in attributed_versions(summary, named):
        verdict = (summary.get("version_verdicts") or {}).get(str(version))
        fields = mlflow_fields(summary, version=str(version) if verdict is not None else None)
        passed = bool(verdict["passed"]) if verdict is not None else bool(summary["passed"])
        try:
            run = registry.log_loadtest(
                model,
                version,
                passed=passed,
                metrics=fields["metrics"],
                params=fields["params"],
                version_tags=fields["version_tags"],
                report_dir=plan.report_dir,
            )
            runs.append({"run_id": run, "model": model, "version": version, "passed": passed})
        except ProdaiError as exc:
            # The verdict stands without the registry; say loudly that the evidence was not recorded.
            runs.append({"error": exc.message, "model": model, "version": version})
    logged = [r["version"] for r in runs]
    # The first entry keeps the old single-run keys (run_id or error, model, version) for readers of summary.json.
    summary["mlflow"] = {**runs[0], "runs": runs, "named": named, "named_answered": named in logged}
    first = runs[0].get("run_id")
    return str(first) if first else None
