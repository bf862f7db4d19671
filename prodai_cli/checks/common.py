"""What the checklist's items share: the probe text, the served versions, the probe key, ages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prodai_cli.checks.result import CheckResult, skipped

if TYPE_CHECKING:
    from prodai_cli.checks.context import CheckContext, ServedVersion
    from prodai_cli.registry import ModelVersionInfo


def probe_text() -> str:
    """A fresh prediction text for a probe request."""
    # Lowercase letters and digits only: every tokenizer has them. Unique, so the first request is a miss.
    return f"prodai check probe {uuid.uuid4().hex[:12]}"


def served_registered(ctx: CheckContext) -> tuple[list[ServedVersion], list[str]]:
    """The registered versions the server serves, and problems with the others."""
    served = ctx.served_versions()
    problems = [f"{v} is served from a directory, not from the registry" for v in served if not v.registered]
    if not served:
        problems.append("/health lists no model versions")
    return [v for v in served if v.registered], problems


def registry_info(ctx: CheckContext, served: ServedVersion) -> ModelVersionInfo:
    """The registry's record of a served version."""
    from prodai_cli.refs import ModelRef
    from prodai_cli.registry import Registry

    return Registry(ctx.settings).get_version(ModelRef(name=served.name, version=int(served.version)))


def key_or_skip(ctx: CheckContext, item: str) -> tuple[str | None, CheckResult | None]:
    """The key for ordinary requests, or a skip result saying why there is none."""
    key = ctx.request_key()
    if ctx.auth_enabled and key is None:
        return None, skipped(
            item,
            f"predictions need an API key and none is available: {ctx.key_problem()}",
            "Pass --api-key KEY (a client key; check sends it only a few requests)",
        )
    return key, None


def age_days(iso: str | None) -> float | None:
    """Days since an ISO timestamp (None when missing or unreadable)."""
    if not iso:
        return None
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds() / 86400


def show_age(days: float) -> str:
    """An age in days as minutes, hours or days, whichever reads best."""
    if days < 1 / 24:
        return f"{max(days * 1440, 0):.0f} min"
    if days < 2:
        return f"{days * 24:.1f} h"
    return f"{days:.1f} days"


# --------------------------------------------------------------------------------------------------- items
