"""The `check:` section of prodai.yaml: defaults, and errors that name the key and the line."""

from __future__ import annotations

from pathlib import Path

from helpers import run_cli

from prodai_cli.config import CHECK_ITEMS, ProdaiConfig


def test_defaults_require_every_item_but_docs() -> None:
    check = ProdaiConfig().check
    assert check.required == [item for item in CHECK_ITEMS if item != "docs"]
    assert check.ship_slo == [] and check.loadtest_max_age_days == 7


def test_invalid_check_values_name_key_and_line(tmp_path: Path) -> None:
    (tmp_path / "prodai.yaml").write_text(
        "check:\n  required: [cache, speed]\n  ship_duration: soon\n  ship_slo: ['p95 <']\n", encoding="utf-8"
    )
    result = run_cli("config", "validate", cwd=tmp_path)
    assert result.exit_code == 2
    assert "check.required.1: Input should be 'health'" in result.stderr and "line 2" in result.stderr
    assert "check.ship_duration: Value error, Invalid ship_duration 'soon'" in result.stderr
    assert "(prodai.yaml line 3)" in result.stderr
    assert "check.ship_slo: Value error, Invalid SLO 'p95 <'" in result.stderr
