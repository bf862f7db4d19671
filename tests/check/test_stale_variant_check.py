"""Issue 15.8 in `prodai check`: the registry item warns about an A/B variant whose alias moved since ab-set."""

from __future__ import annotations

from typing import Any

import pytest

from prodai_cli.checks import run_checks

pytestmark = pytest.mark.slow

# What `prodai ab-set production=90% staging=10% --model clf` writes (v1 is production, v2 staging).
BY_ALIAS = {
    "enabled": True,
    "model": "clf",
    "variants": {
        "production": {"version": 1, "weight": 0.9, "alias": "production"},
        "staging": {"version": 2, "weight": 0.1, "alias": "staging"},
    },
}


def test_registry_item_warns_about_a_stale_alias_variant(
    configured_project: Any, serve_project: Any, checking: Any
) -> None:
    from prodai_cli.registry import Registry

    server = serve_project(configured_project({"ab": BY_ALIAS}))
    with checking(server) as ctx:
        fresh = run_checks(ctx, ["registry"]).results[0]
    assert fresh.status == "pass", fresh.evidence
    # What ship does when v2 passes its gate: production moves to v2; the variant still names v1.
    Registry(server.settings()).set_alias("clf", "production", 2)
    with checking(server) as ctx:
        result = run_checks(ctx, ["registry"]).results[0]
    assert result.status == "warn", result.evidence
    assert "A/B variant production serves clf/1, but alias production now points at v2" in result.evidence
    assert "prodai ab-set production=90% staging=10% --model clf" in result.fix_hint
