"""The production checklist as code: ``run_checks`` proves each item against a live server.

Usage::

    target = resolve_target(settings, url="http://127.0.0.1:8000")
    with CheckContext(settings, target, api_key=None) as ctx:
        report = run_checks(ctx, only=["cache", "rate_limit"])
    report.passed, report.results   # CheckResult(item, status, evidence, fix_hint, required)

Items run in :data:`prodai_cli.config.CHECK_ITEMS` order (the rate-limit burst last among the live ones);
``check.required`` in prodai.yaml decides which gate the verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from prodai_cli.checks.context import CheckContext, CheckTarget, ServedVersion, resolve_target
from prodai_cli.checks.result import CheckReport, CheckResult
from prodai_cli.config import CHECK_ITEMS
from prodai_cli.errors import ProdaiError, UsageError

__all__ = [
    "CHECK_ITEMS",
    "CheckContext",
    "CheckReport",
    "CheckResult",
    "CheckTarget",
    "ServedVersion",
    "resolve_target",
    "run_checks",
    "selected_items",
]


def selected_items(only: Sequence[str] | None) -> list[str]:
    """The items to run, in checklist order.

    Raises:
        UsageError: An unknown item name.

    """
    if not only:
        return list(CHECK_ITEMS)
    unknown = [name for name in only if name not in CHECK_ITEMS]
    if unknown:
        raise UsageError(f"Unknown check item {unknown[0]!r}", hint=f"Items: {', '.join(CHECK_ITEMS)}")
    return [name for name in CHECK_ITEMS if name in only]


def ensure_reachable(ctx: CheckContext) -> None:
    """Fail early, with one clear line, when nothing answers at the URL.

    Raises:
        UsageError: Connection refused, DNS failure or timeout.

    """
    import httpx

    try:
        ctx.client.get("/health/live")
    except httpx.HTTPError as exc:
        raise UsageError(
            f"Cannot reach {ctx.url}: {type(exc).__name__}: {exc}",
            hint="Start the server (prodai serve, prodai deploy) or give --url / --deployment",
        ) from None


def run_checks(
    ctx: CheckContext,
    only: Sequence[str] | None = None,
    *,
    on_result: Callable[[CheckResult], None] | None = None,
) -> CheckReport:
    """Run the checklist against ``ctx``'s server.

    Args:
        ctx: The open check context.
        only: Item names to run (default: all).
        on_result: Called with each result as soon as it is known (progress).

    Returns:
        The report; ``report.passed`` is False when a required item failed or could not be checked.

    Raises:
        UsageError: Unknown item names, or the server cannot be reached.

    """
    import httpx

    from prodai_cli.checks.items import CHECKS

    items = selected_items(only)
    ensure_reachable(ctx)
    required = set(ctx.settings.config.check.required)
    report = CheckReport(url=ctx.url)
    for name in items:
        started = time.monotonic()
        try:
            result = CHECKS[name](ctx)
        except httpx.HTTPError as exc:
            result = CheckResult(
                name, "fail", f"a request failed: {type(exc).__name__}: {exc}", "Is the server up and reachable?"
            )
        except ProdaiError as exc:
            result = CheckResult(name, "fail", exc.message, exc.hint or "")
        result = replace(result, required=name in required, seconds=time.monotonic() - started)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    try:
        report.served = [str(v) for v in ctx.served_versions()]
    except httpx.HTTPError:
        report.served = []
    return report
