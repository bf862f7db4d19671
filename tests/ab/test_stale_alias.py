"""Issue 15.8: an A/B variant set by alias keeps its version when the alias moves; ab-show says it is stale.

The chosen behaviour (docs/ab.md): a variant stores the version its alias named when ab-set ran (a server
needs no registry to serve it, and a promotion never silently reroutes live traffic); ab-show, check and
ship flag the variant once the alias points elsewhere, and name the ab-set command that follows it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from prodai_cli.abconfig import resplit_command, stale_variants
from prodai_cli.config import parse_config_text

pytestmark = pytest.mark.slow


def test_a_variant_whose_alias_moved_is_flagged_stale_by_ab_show(ab_project: Path) -> None:
    assert run_cli("ab-set", "production=50%", "staging=50%", "--model", "clf", cwd=ab_project).exit_code == 0
    fresh = run_cli("ab-show", "--json", cwd=ab_project)
    assert fresh.exit_code == 0, fresh.stderr
    assert json.loads(fresh.stdout)["stale"] == []
    # What ship does on success: production moves to v2.
    moved = run_cli("models", "promote", "clf", "2", "--alias", "production", cwd=ab_project)
    assert moved.exit_code == 0, moved.stderr

    shown = run_cli("ab-show", "--json", cwd=ab_project)
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout)
    production = data["variants"]["production"]
    assert production["version"] == 1 and production["alias"] == "production"
    assert production["stale"] is True and production["alias_now"] == 2
    assert data["variants"]["staging"]["stale"] is False
    assert data["stale"] == ["A/B variant production serves clf/1, but alias production now points at v2"]
    assert data["resplit"] == "prodai ab-set production=50% staging=50% --model clf"

    human = run_cli("ab-show", cwd=ab_project)
    assert "stale: production -> v2" in human.stdout + human.stderr
    assert "keeps serving the old version until ab-set runs again" in human.stderr

    # The printed command makes the variant follow its alias again.
    again = run_cli(*data["resplit"].split()[1:], cwd=ab_project)
    assert again.exit_code == 0, again.stderr
    after = json.loads(run_cli("ab-show", "--json", cwd=ab_project).stdout)
    assert after["stale"] == [] and after["variants"]["production"]["version"] == 2


def test_variants_set_by_version_are_never_stale() -> None:
    config = parse_config_text(
        "ab:\n  enabled: true\n  model: clf\n  variants:\n"
        "    v1: {version: 1, weight: 0.9}\n    production: {version: 1, weight: 0.1, alias: production}\n"
    )
    asked: list[tuple[str, str]] = []

    def lookup(model: str, alias: str) -> int | None:
        asked.append((model, alias))
        return None  # the alias was deleted

    (stale,) = stale_variants(config, lookup)
    assert asked == [("clf", "production")]
    assert stale.name == "production" and stale.now is None
    assert stale.describe("clf") == "A/B variant production serves clf/1, but alias production no longer exists"
    assert resplit_command(config) == "prodai ab-set v1=90% production=10% --model clf"
