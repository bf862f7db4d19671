"""`prodai check` against real `prodai serve` processes on loopback: every item proven on the live server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, run_cli

from prodai_cli.checks import CHECK_ITEMS, run_checks

pytestmark = pytest.mark.slow

# Protection switched off in the server's config (see conftest.SWITCHED_OFF) -> the item that must fail.
SWITCHED_OFF = {"auth": "security", "rate_limit": "rate_limit", "cache": "cache", "metrics": "metrics"}
# The config key each fix hint must name, so the user knows what to change.
FIX_NAMES = {
    "security": "auth.enabled: true",
    "rate_limit": "rate_limit.enabled: true",
    "cache": "cache.enabled: true",
    "metrics": "monitoring.metrics: true",
}


def _statuses(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.item: r.status for r in report.results}


def test_fully_configured_deployment_passes_every_item(full_server: Any, checking: Any) -> None:
    config_before = (full_server.root / "prodai.yaml").read_text(encoding="utf-8")
    with checking(full_server) as ctx:
        report = run_checks(ctx)
    by_item = {r.item: r for r in report.results}
    assert list(by_item) == list(CHECK_ITEMS)
    failing = {r.item: (r.status, r.evidence) for r in report.results if r.status != "pass"}
    assert not failing, failing
    assert report.passed
    # Evidence from the live server, not from the config:
    assert "429" in by_item["rate_limit"].evidence and "Retry-After" in by_item["rate_limit"].evidence
    assert "probe key" in by_item["rate_limit"].evidence
    assert "MISS then HIT" in by_item["cache"].evidence
    assert "401" in by_item["security"].evidence and "ApiKey" in by_item["security"].evidence
    assert "log line is JSON" in by_item["logging"].evidence
    assert "clf/1" in by_item["loadtest"].evidence
    # The temporary probe key was revoked and removed: the config is as it was, comments included.
    assert (full_server.root / "prodai.yaml").read_text(encoding="utf-8") == config_before


@pytest.mark.parametrize("switched_off", list(SWITCHED_OFF))
def test_switching_off_a_protection_fails_exactly_its_item(
    switched_off_servers: dict[str, Any], switched_off: str, checking: Any
) -> None:
    server = switched_off_servers[switched_off]
    item = SWITCHED_OFF[switched_off]
    with checking(server) as ctx:
        report = run_checks(ctx)
    statuses = _statuses(report)
    assert statuses[item] == "fail", report.to_dict()
    others = {name: status for name, status in statuses.items() if name != item and status != "pass"}
    assert not others, report.to_dict()
    failed = next(r for r in report.results if r.item == item)
    assert FIX_NAMES[item] in failed.fix_hint
    assert not report.passed and [r.item for r in report.blocking] == [item]


def test_an_item_left_out_of_check_required_does_not_gate(switched_off_servers: dict[str, Any], checking: Any) -> None:
    server = switched_off_servers["cache"]
    with checking(server) as ctx:
        ctx.settings.config.check.required = ["health", "metrics"]
        report = run_checks(ctx, ["health", "cache", "metrics"])
    assert _statuses(report) == {"health": "pass", "cache": "fail", "metrics": "pass"}
    assert report.passed
    assert not next(r for r in report.results if r.item == "cache").required


def _set_loadtest_tags(server: Any, version: int, **tags: str) -> None:
    from prodai_cli.registry import Registry

    Registry(server.settings()).set_version_tags("clf", version, {f"prodai.loadtest.{k}": v for k, v in tags.items()})


def _loadtest_result(server: Any, checking: Any):  # type: ignore[no-untyped-def]
    with checking(server) as ctx:
        return run_checks(ctx, ["loadtest"]).results[0]


def test_loadtest_item_reads_the_served_versions_last_load_test(full_server: Any, checking: Any) -> None:
    now = datetime.now(UTC)
    try:
        _set_loadtest_tags(full_server, 1, passed="false", at=now.isoformat(timespec="seconds"))
        result = _loadtest_result(full_server, checking)
        assert result.status == "fail" and "last load test failed" in result.evidence
        assert "prodai loadtest --url" in result.fix_hint

        old = (now - timedelta(days=8)).isoformat(timespec="seconds")
        _set_loadtest_tags(full_server, 1, passed="true", at=old)
        result = _loadtest_result(full_server, checking)
        assert result.status == "fail" and "8.0 days old (max 7 days)" in result.evidence
    finally:
        _set_loadtest_tags(full_server, 1, passed="true", at=now.isoformat(timespec="seconds"))
    assert _loadtest_result(full_server, checking).status == "pass"


def test_a_plaintext_key_in_the_config_fails_security(full_server: Any, checking: Any) -> None:
    path = full_server.root / "prodai.yaml"
    before = path.read_text(encoding="utf-8")
    leaked = "pk_" + "A" * 43
    try:
        path.write_text(before + f"# the key for the dashboard: {leaked}\n", encoding="utf-8")
        with checking(full_server) as ctx:
            result = run_checks(ctx, ["security"]).results[0]
    finally:
        path.write_text(before, encoding="utf-8")
    assert result.status == "fail"
    assert f"prodai.yaml line {len(before.splitlines()) + 1}" in result.evidence
    assert leaked not in result.evidence + result.fix_hint  # the report must not repeat the secret
    assert "prodai keys revoke" in result.fix_hint


def test_check_command_json_only_and_exit_codes(full_server: Any) -> None:
    env = {"PRODAI_CONFIG": str(full_server.root / "prodai.yaml")}
    ok = run_cli(
        "check", "--url", full_server.url, "--only", "health", "--only", "docs", "--json", cwd=full_server.root, env=env
    )
    assert ok.exit_code == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert [r["item"] for r in data["results"]] == ["health", "docs"]
    assert data["passed"] is True and data["served"]

    human = run_cli("check", "--url", full_server.url, "--only", "metrics", cwd=full_server.root, env=env)
    assert human.exit_code == 0 and "metrics" in human.stdout and "pass" in human.stdout

    bogus = run_cli("check", "--url", full_server.url, "--only", "bogus", cwd=full_server.root, env=env)
    assert bogus.exit_code == 2 and "Unknown check item 'bogus'" in bogus.stderr


def test_check_command_exits_1_naming_the_failed_item(switched_off_servers: dict[str, Any]) -> None:
    server = switched_off_servers["metrics"]
    env = {"PRODAI_CONFIG": str(server.root / "prodai.yaml")}
    result = run_cli(
        "check", "--url", server.url, "--only", "health", "--only", "metrics", "--json", cwd=server.root, env=env
    )
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["blocking"] == ["metrics"]
    assert "Required checks did not pass: metrics" in result.stderr


def test_unreachable_server_is_a_usage_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("check", "--url", url, cwd=tmp_path)
    assert result.exit_code == 2
    assert f"Cannot reach {url}" in result.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)
