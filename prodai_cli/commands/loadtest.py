"""prodai loadtest: Locust load tests against a prodai server, gated by SLOs (exit 1 when one fails)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console
from prodai_cli.commands._common import settings as project_settings
from prodai_cli.errors import ThresholdError

if TYPE_CHECKING:
    from prodai_cli.console import Console
    from prodai_cli.loadtest.plan import LoadtestPlan
    from prodai_cli.loadtest.runner import LoadtestResult

_PROGRESS_LINE_EVERY_S = 5.0


def command(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="Base URL of the server to test.")] = None,
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Test this deployment (URL and version from its record).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Registered version under test (REF), to log the run to it.")
    ] = None,
    users: Annotated[
        int | None, typer.Option("--users", "-u", help="Concurrent users (default: loadtest.users).")
    ] = None,
    spawn_rate: Annotated[
        float | None,
        typer.Option("--spawn-rate", "-r", help="Users started per second (default: loadtest.spawn_rate)."),
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--duration", "-t", help="Run time: 30s, 2m (default: loadtest.duration).")
    ] = None,
    warmup: Annotated[str | None, typer.Option("--warmup", help="Leading time left out of the SLOs: 5s.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help='JSONL payloads, one {"text": ...} a line.')] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="PRODAI_API_KEY", help="Sent as the API-key header.")
    ] = None,
    user_ids: Annotated[int, typer.Option("--user-ids", help="Spread requests over N user ids (A/B arms).")] = 0,
    slo: Annotated[
        list[str] | None, typer.Option("--slo", help="Gate, repeatable: 'p95 < 200ms', 'error_rate < 1%', 'rps > 50'.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Locust worker processes here (with --master: remote ones to await).")
    ] = 0,
    master: Annotated[bool, typer.Option("--master", help="Be the master of workers on other machines.")] = False,
    worker: Annotated[bool, typer.Option("--worker", help="Be a worker of a master elsewhere.")] = False,
    master_host: Annotated[str | None, typer.Option("--master-host", help="The master a --worker joins.")] = None,
    master_port: Annotated[int, typer.Option("--master-port", help="The master's worker port.")] = 5557,
    master_bind_host: Annotated[str, typer.Option("--master-bind-host", help="Interface a --master listens on.")] = "*",
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Reports here (default .prodai/loadtests/<time>-<target>/).")
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Load-test a prodai server with Locust and gate on SLOs: exit 0 when all hold, 1 when one fails.

    Reports (Locust CSVs, HTML, summary.json) go to --report-dir. A registered version under test
    (--deployment, --model) gets the summary as an MLflow run. Exit 2 for a bad SLO, an empty data file or an
    unreachable server, before any load is sent.

    Example: prodai loadtest --url http://127.0.0.1:8000 -u 20 -t 1m --warmup 10s --slo "p95 < 200ms"
    """
    from prodai_cli.loadtest.plan import build_plan

    out = console(ctx, json_flag)
    settings = project_settings(ctx)
    plan = build_plan(
        settings,
        url=url,
        deployment=deployment,
        model=model,
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        warmup=warmup,
        slos=slo,
        data=data,
        api_key=api_key,
        user_ids=user_ids,
        workers=workers,
        master=master,
        worker=worker,
        master_host=master_host,
        master_port=master_port,
        master_bind_host=master_bind_host,
        report_dir=report_dir,
    )
    if plan.mode == "worker":
        from prodai_cli.loadtest.runner import run_worker

        out.info(f"Joining the Locust master at {plan.master_host}:{plan.master_port}")
        done = run_worker(plan, lambda event: out.info(f"Connected as worker {event.get('index')}"))
        counts = {"requests": done["requests"], "failures": done["failures"]}
        out.result(counts, human=f"Worker finished: {done['requests']} requests, {done['failures']} failed")
        return
    from prodai_cli.loadtest.runner import run_loadtest

    with _LiveView(out, plan) as view:
        result = run_loadtest(settings, plan, on_event=view.update)
    _render(out, result)
    if not result.passed:
        failed = [r.describe() for r in result.failed] + list(result.summary.get("problems") or [])
        raise ThresholdError(f"Load test failed: {'; '.join(failed)}", hint=f"Reports: {result.report_dir}")


class _LiveView:
    """Live figures on stderr: a refreshing table on a terminal, a line every few seconds in CI logs."""

    def __init__(self, out: Console, plan: LoadtestPlan) -> None:
        self.out = out
        self.plan = plan
        self.live: Any = None
        self.last_line = 0.0

    def __enter__(self) -> _LiveView:
        target = self.plan.target.url if self.plan.target else ""
        self.out.info(
            f"Load-testing {target}: {self.plan.users} users, {self.plan.duration_s:g}s"
            + (f" ({self.plan.warmup_s:g}s warm-up)" if self.plan.warmup_s else "")
            + (f", {self.plan.workers} Locust worker(s)" if self.plan.workers else "")
        )
        if self.out.err.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.out.err, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "workers" and self.live is None:
            self.out.info(f"Waiting for Locust workers: {event['connected']}/{event['expected']}")
        if kind != "stats":
            return
        if self.live is not None:
            self.live.update(self._table(event))
        elif time.monotonic() - self.last_line >= _PROGRESS_LINE_EVERY_S:
            self.last_line = time.monotonic()
            total = event["total"]
            self.out.info(
                f"{event['elapsed']:.0f}s/{self.plan.duration_s:g}s  users {event['users']}  "
                f"requests {total['requests']}  failures {total['failures']}  rps {total['rps'] or 0:.1f}  "
                f"p95 {_ms(total.get('p95_ms'))}"
            )

    def _table(self, event: dict[str, Any]) -> Any:
        from rich.table import Table

        title = f"{event['elapsed']:.0f}s / {self.plan.duration_s:g}s · {event['users']} users"
        table = Table(title=title)
        for column in ("request", "requests", "failures", "rps", "p50", "p95", "p99", "max"):
            table.add_column(column, justify="left" if column == "request" else "right")
        for row in [*event["entries"], {**event["total"], "name": "total"}]:
            table.add_row(
                str(row["name"]),
                str(row["requests"]),
                str(row["failures"]),
                f"{row['rps'] or 0:.1f}",
                _ms(row.get("p50_ms")),
                _ms(row.get("p95_ms")),
                _ms(row.get("p99_ms")),
                _ms(row.get("max_ms")),
            )
        return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _render(out: Console, result: LoadtestResult) -> None:
    summary = result.summary
    if out.json_mode:
        out.result(summary)
    else:
        stats = summary["stats"]
        rows = [(r.slo.text, r.slo.show(r.observed), "PASS" if r.passed else "FAIL") for r in result.results]
        out.table(["SLO", "observed", "verdict"], rows, title="SLO verdict")
        out.table(
            ["requests", "failures", "error rate", "rps", "avg", "p50", "p95", "p99", "max"],
            [
                (
                    stats.get("requests"),
                    stats.get("failures"),
                    _pct(stats.get("error_rate")),
                    _num(stats.get("rps")),
                    _ms(stats.get("avg_ms")),
                    _ms(stats.get("p50_ms")),
                    _ms(stats.get("p95_ms")),
                    _ms(stats.get("p99_ms")),
                    _ms(stats.get("max_ms")),
                )
            ],
            title=f"Measured over {summary.get('window_seconds') or 0:.1f}s (warm-up excluded)",
        )
        if len(summary.get("variants") or {}) > 1:
            out.table(
                ["variant", "requests", "failures", "error rate", "p50", "p95", "p99"],
                [
                    (
                        name,
                        v.get("requests"),
                        v.get("failures"),
                        _pct(v.get("error_rate")),
                        _ms(v.get("p50_ms")),
                        _ms(v.get("p95_ms")),
                        _ms(v.get("p99_ms")),
                    )
                    for name, v in summary["variants"].items()
                ],
                title="Per variant",
            )
    mlflow = summary.get("mlflow") or {}
    runs = mlflow.get("runs") or ([mlflow] if mlflow else [])
    answered = ", ".join(
        f"v{version} ({row.get('requests', 0)} requests)"
        for version, row in (summary.get("versions") or {}).items()
        if version.isdigit()
    )
    if mlflow and not mlflow.get("named_answered", True):
        out.warning(
            f"{mlflow['model']}/{mlflow['named']} answered none of the requests: the server answered with "
            f"{answered}, so the evidence is logged there"
        )
    elif summary.get("mixed"):
        out.warning(f"Several versions answered this run: {answered}; each is judged and logged on its own figures")
    for run in runs:
        if run.get("error"):
            out.warning(f"The summary was not logged to {run['model']} version {run['version']}: {run['error']}")
        elif run.get("run_id"):
            verdict = "" if "passed" not in run else (" (passed)" if run["passed"] else " (failed)")
            out.info(f"Logged to {run['model']} version {run['version']}{verdict} (MLflow run {run['run_id']})")
    out.info(f"Reports: {result.report_dir}")
    if result.passed:
        out.success(f"All {len(result.results)} SLOs hold")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
