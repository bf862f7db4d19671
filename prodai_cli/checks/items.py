"""The production checklist: one small function per item, each proving its property where it can.

Every function takes the :class:`~prodai_cli.checks.context.CheckContext` and returns a
:class:`~prodai_cli.checks.result.CheckResult` whose evidence says what was observed on the live server
(statuses, headers, log lines, registry tags), not only what the config claims. The items live by what they
prove: :mod:`.service` (health, registry, docs, load test), :mod:`.observability` (metrics, logging) and
:mod:`.protection` (errors, cache, security, rate limit); this module lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prodai_cli.checks.observability import check_logging, check_metrics
from prodai_cli.checks.protection import check_cache, check_errors, check_rate_limit, check_security
from prodai_cli.checks.service import check_docs, check_health, check_loadtest, check_registry

if TYPE_CHECKING:
    from prodai_cli.checks.context import CheckContext
    from prodai_cli.checks.result import CheckResult

CheckFn = Callable[["CheckContext"], "CheckResult"]

CHECKS: dict[str, CheckFn] = {
    "health": check_health,
    "registry": check_registry,
    "docs": check_docs,
    "metrics": check_metrics,
    "logging": check_logging,
    "errors": check_errors,
    "cache": check_cache,
    "security": check_security,
    "rate_limit": check_rate_limit,
    "loadtest": check_loadtest,
}
