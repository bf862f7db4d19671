"""prodai ship: the gated promotion. Deploy, load-test, check; move the alias only if everything passed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console, settings
from prodai_cli.errors import ThresholdError, UsageError

if TYPE_CHECKING:
    from prodai_cli.console import Console
    from prodai_cli.ship import ShipReport, ShipStep

MARKS = {"ok": "[green]✓[/green]", "failed": "[bold red]✗[/bold red]", "skipped": "[dim]-[/dim]"}


def command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The version to ship: NAME/VERSION, NAME@ALIAS or NAME (latest).")],
    to: Annotated[str, typer.Option("--to", help="Alias to move when every gate passes.")] = "production",
    slo: Annotated[
        list[str] | None,
        typer.Option(
            "--slo", help="Load-test gate, repeatable: 'p95 < 200ms' (default: check.ship_slo, then loadtest.slo)."
        ),
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target",
            help="local: server processes here; docker|compose: a candidate container, then a zero-downtime "
            "roll-out to the production deployment before the alias moves.",
        ),
    ] = "local",
    json_flag: JsonOption = False,
) -> None:
    """Ship a version: start it beside production, load-test it, run the checklist, then move the alias.

    The alias moves (and the evidence is recorded on the version: tags and an MLflow run with the ship
    report) only when the load test meets every SLO and every required check passes. On any failure the
    candidate is stopped, the alias stays where it was, and the exit status is 1.

    Example: prodai ship sentiment/3 --slo "p95 < 300ms" --slo "error_rate < 1%"
    """
    from prodai_cli.ship import TARGETS, ship

    out = console(ctx, json_flag)
    if target not in TARGETS:
        raise UsageError(f"Unknown --target {target!r}; choose one of {', '.join(TARGETS)}")
    view = _Steps(out)
    try:
        report = ship(
            settings(ctx),
            ref,
            alias=to,
            slos=slo,
            target=target,
            on_step=view.step,
            on_loadtest_event=view.loadtest_event,
        )
    finally:
        view.close()
    _render(out, report)
    if not report.passed:
        raise ThresholdError(f"Not shipped: {report.reason}", hint=f"Report and logs: {report.report_dir}")


class _Steps:
    """One spinner line for the running step on stderr, and a ✓/✗ line as each step ends."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.status: Any = None

    def step(self, step: ShipStep) -> None:
        from rich.markup import escape

        if step.state == "start":
            if self.status is None:
                self.status = self.out.err.status(escape(step.detail))
                self.status.start()
            else:
                self.status.update(escape(step.detail))
            return
        self.close()
        detail = f": {escape(step.detail)}" if step.detail else ""
        self.out.err.print(f"{MARKS.get(step.state, '')} {step.name} ({step.seconds:.1f}s){detail}")

    def loadtest_event(self, event: dict[str, Any]) -> None:
        if event.get("event") != "stats" or self.status is None:
            return
        total = event.get("total") or {}
        p95 = total.get("p95_ms")
        self.status.update(
            f"Load-testing: {event.get('elapsed', 0):.0f}s, {total.get('requests', 0)} requests, "
            f"{total.get('failures', 0)} failed, p95 {'-' if p95 is None else f'{p95:.0f} ms'}"
        )

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _render(out: Console, report: ShipReport) -> None:
    if out.json_mode:
        out.result(report.to_dict())
        return
    if report.checks:
        from prodai_cli.checks import CheckReport, CheckResult
        from prodai_cli.commands.check import render

        results = [CheckResult(**r) for r in report.checks["results"]]
        render(out, CheckReport(url=report.checks["url"], results=results, served=report.checks["served"]))
    if report.passed:
        was = f"was v{report.previous}" if report.previous is not None else "was unset"
        out.success(f"Shipped {report.model}/{report.version}: {report.model}@{report.alias} ({was})")
        if report.production_url:
            out.info(f"Production serves {report.model}/{report.version} at {report.production_url}")
        else:
            out.info("Servers pinned to the previous version keep it until restarted (or route with prodai ab-set)")
