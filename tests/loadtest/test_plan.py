"""Everything checked before a load test starts: payload files, targets, options; exit 2 and no load sent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT, free_port

from prodai_cli.config import load_settings
from prodai_cli.errors import UsageError
from prodai_cli.loadtest.plan import build_plan, load_payloads, resolve_target


def test_load_payloads_skips_blank_lines_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b", "id": 7}\n   \n{"text": ""}\n', encoding="utf-8")
    assert load_payloads(path) == ["a", "b", ""]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty: it holds no payloads"),
        ("\n  \n", "is empty: it holds no payloads"),
        ('{"text": "ok"}\n{"text": broken\n', "line 2: not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', "line 2: expected an object with a string 'text' field"),
        ('["text"]\n', "line 1: expected an object"),
        ('{"text": 3}\n', "line 1: expected an object with a string 'text' field"),
    ],
)
def test_bad_payload_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_payloads(path)
    assert message in err.value.message


def test_missing_payload_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_payloads(tmp_path / "nope.jsonl")


def test_deployment_record_gives_url(project: Path) -> None:
    records = project / ".prodai" / "deployments"
    records.mkdir(parents=True)
    (records / "web.json").write_text(json.dumps({"name": "web", "url": "http://127.0.0.1:9/"}), encoding="utf-8")
    target = resolve_target(load_settings(), url=None, deployment="web", model=None)
    assert (target.url, target.deployment, target.model, target.version) == ("http://127.0.0.1:9", "web", None, None)
    with pytest.raises(UsageError) as err:
        resolve_target(load_settings(), url=None, deployment="other", model=None)
    assert "Unknown deployment 'other'" in err.value.message
    assert err.value.hint == "Known deployments: web"


def test_plan_uses_config_defaults_and_headers(project: Path) -> None:
    (project / "prodai.yaml").write_text(
        "loadtest:\n  users: 7\n  duration: 1m\n  warmup: 5s\n  slo: ['p99 < 1s']\n"
        "auth:\n  header: X-Key\nab:\n  user_header: X-Customer\n",
        encoding="utf-8",
    )
    plan = build_plan(load_settings(), url="http://127.0.0.1:9", check_target=False)
    assert (plan.users, plan.duration_s, plan.warmup_s) == (7, 60.0, 5.0)
    assert [s.text for s in plan.slos] == ["p99 < 1s"]
    assert (plan.api_key_header, plan.user_header) == ("X-Key", "X-Customer")
    assert plan.report_dir is not None and plan.report_dir.parent == project / ".prodai" / "loadtests"
    assert plan.report_dir.name.endswith("-127.0.0.1_9")
    # Options win over the config.
    plan = build_plan(
        load_settings(),
        url="http://127.0.0.1:9",
        users=2,
        duration="10s",
        warmup="0s",
        slos=["rps > 1"],
        check_target=False,
    )
    assert (plan.users, plan.duration_s, plan.warmup_s, [s.text for s in plan.slos]) == (2, 10.0, 0.0, ["rps > 1"])


def _loadtest(cwd: Path, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "prodai_cli", "loadtest", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:9", "--slo", "p95 < fast"], "Invalid SLO 'p95 < fast'"),
        (["--url", "http://127.0.0.1:9", "--duration", "10s", "--warmup", "10s"], "must be shorter than --duration"),
        (["--url", "http://127.0.0.1:9", "--duration", "soon"], "Invalid --duration 'soon'"),
        (["--url", "ftp://x", "--slo", "p95 < 1s"], "Invalid URL 'ftp://x'"),
        (["--url", "http://127.0.0.1:9", "--deployment", "x"], "Give --url or --deployment, not both"),
        ([], "Nothing to test: give --url URL or --deployment NAME"),
        (["--deployment", "prod"], "Unknown deployment 'prod'"),
        (["--url", "http://127.0.0.1:9", "--users", "0"], "--users must be at least 1"),
        (["--worker", "--master-host", "10.0.0.1", "--url", "http://x"], "--url cannot be used with --worker"),
        (["--worker"], "--worker needs --master-host"),
        (["--master", "--url", "http://127.0.0.1:9"], "--master needs --workers N"),
    ],
)
def test_usage_errors_exit_2_before_anything_runs(project: Path, args: list[str], message: str) -> None:
    code, stderr, _ = _loadtest(project, *args)
    assert code == 2, stderr
    assert message in stderr
    assert not (project / ".prodai" / "loadtests").exists()


def test_empty_data_file_exits_2(project: Path) -> None:
    (project / "empty.jsonl").write_text("\n", encoding="utf-8")
    code, stderr, _ = _loadtest(project, "--url", "http://127.0.0.1:9", "--data", "empty.jsonl")
    assert code == 2
    assert "empty.jsonl is empty: it holds no payloads" in stderr
    assert not (project / ".prodai" / "loadtests").exists()


def test_unreachable_url_exits_2_without_running(project: Path) -> None:
    port = free_port()  # nothing listens here
    code, stderr, elapsed = _loadtest(project, "--url", f"http://127.0.0.1:{port}", "--duration", "30s")
    assert code == 2
    assert f"Cannot reach http://127.0.0.1:{port}" in stderr
    assert "ConnectError" in stderr
    # Refused at once: the 30 s run never started.
    assert elapsed < 25
    assert not (project / ".prodai" / "loadtests").exists()


def test_help_has_an_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prodai_cli", "loadtest", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "Example: prodai loadtest --url" in proc.stdout
