"""prodai check: the production checklist, proven against a live server (exit 1 when a required item fails)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from prodai_cli.commands._common import JsonOption, console, settings
from prodai_cli.errors import ThresholdError

if TYPE_CHECKING:
    from prodai_cli.checks import CheckReport
    from prodai_cli.console import Console

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "magenta"}


def command(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Base URL of the server (default: serving.host:serving.port).")
    ] = None,
    deployment: Annotated[
        str | None, typer.Option("--deployment", "-d", help="Check this docker deployment (its URL and logs).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only this item, repeatable: health, registry, docs, metrics, logging, "
            "errors, cache, security, rate_limit, loadtest.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="PRODAI_API_KEY", help="Key for the few ordinary check requests."),
    ] = None,
    probe_key: Annotated[
        str | None,
        typer.Option(
            "--probe-key",
            envvar="PRODAI_PROBE_KEY",
            help="Key dedicated to checks, for the rate-limit burst (default: a temporary one, for a "
            "server that reads this project's config).",
        ),
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Run the production checklist against a live server and print item, status, evidence and how to fix.

    Each item is proven on the server where it can be: a burst ends in 429 with Retry-After (sent with a
    key dedicated to checks, so clients' quotas are untouched), a repeated request is a cache hit, a request
    without a key gets 401, /metrics carries the documented series. Exit 1 when an item listed in
    check.required fails or cannot be checked.

    Example: prodai check --url http://127.0.0.1:8000 --only cache --only rate_limit
    """
    from prodai_cli.checks import CheckContext, resolve_target, run_checks, selected_items

    out = console(ctx, json_flag)
    conf = settings(ctx)
    items = selected_items(only)
    target = resolve_target(conf, url=url, deployment=deployment)
    with (
        CheckContext(conf, target, api_key=api_key, probe_key=probe_key) as check,
        out.status(f"Checking {target.url}"),
    ):
        report = run_checks(check, items, on_result=lambda r: out.debug(f"{r.item}: {r.status} ({r.seconds:.1f}s)"))
    if check.cleanup_error:
        out.warning(f"{check.cleanup_error} (it expires within a day; prodai keys revoke ends it now)")
    render(out, report)
    if not report.passed:
        names = ", ".join(r.item for r in report.blocking)
        raise ThresholdError(f"Required checks did not pass: {names}", hint="See the 'how to fix' column")


def render(out: Console, report: CheckReport) -> None:
    """The report: JSON, or a table (item, status, evidence, how to fix) with a verdict line."""
    if out.json_mode:
        out.result(report.to_dict())
        return
    from rich.markup import escape

    rows = []
    for r in report.results:
        style = STATUS_STYLE[r.status]
        name = r.item if r.required else f"{r.item} (optional)"
        rows.append((escape(name), f"[{style}]{r.status}[/{style}]", escape(r.evidence), escape(r.fix_hint)))
    served = ", ".join(report.served) or "?"
    out.table(["item", "status", "evidence", "how to fix"], rows, title=f"{report.url} serving {served}")
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    if report.passed:
        out.success(f"Production checklist passed ({counts})")
