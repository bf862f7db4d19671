"""Issue 13, the config side, against real processes: a YAML alias bomb is refused fast by the CLI and by a
running server's reload (which keeps answering), keys reloads never fall back to "no keys", and requests
still running when the shutdown grace period ends get 503, not 500.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prodai_cli.config import load_settings
from prodai_cli.keys import create_key

pytestmark = [pytest.mark.slow]


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def measured(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, float, int]:
    """Run a command; its exit code, stderr, wall time and peak RSS in MiB (measured by a parent process)."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps([p.returncode, p.stderr, time.monotonic() - t,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, env=env, capture_output=True, text=True)
    code, stderr, seconds, rss = json.loads(out.stdout)
    return code, stderr, seconds, rss


def test_config_validate_refuses_an_alias_bomb_fast_and_small(tmp_path: Path, kit: Any) -> None:
    env = kit.clean_env()
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "prodai.yaml").write_text("serving:\n  port: 8001\n")
    (tmp_path / "bomb").mkdir()
    (tmp_path / "bomb" / "prodai.yaml").write_text(alias_bomb())
    command = [sys.executable, "-m", "prodai_cli", "config", "validate"]
    ok_code, _, _, baseline_mb = measured(command, tmp_path / "good", env)
    assert ok_code == 0
    code, stderr, seconds, peak_mb = measured(command, tmp_path / "bomb", env)
    assert code == 2, stderr
    assert "expands to more than 100000 YAML nodes" in stderr and "prodai.yaml" in stderr
    assert "Traceback" not in stderr
    assert seconds < 2, seconds
    assert peak_mb - baseline_mb < 100, (baseline_mb, peak_mb)
    # The same in the keys file: `keys list` names that file.
    (tmp_path / "bomb" / "prodai.yaml").write_text("auth:\n  keys_file: keys.yaml\n")
    (tmp_path / "bomb" / "keys.yaml").write_text(alias_bomb())
    code, stderr, seconds, _ = measured([sys.executable, "-m", "prodai_cli", "keys", "list"], tmp_path / "bomb", env)
    assert code == 2 and "keys.yaml" in stderr and "YAML nodes" in stderr, stderr
    assert seconds < 2


def test_a_running_server_refuses_a_bomb_reload_and_keeps_answering(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    base = kit.BASE_CONFIG + "auth:\n  enabled: false\ncache:\n  enabled: false\nrate_limit:\n  enabled: false\n"
    root = kit.make_project(registered_project, tmp_path / "proj", base)
    server = kit.Server(root, "--model", "clf@production")
    servers.append(server)
    kit.start_all(server)
    errors_before = server.metric("prodai_config_reloads_total", result="failure")
    (root / "prodai.yaml").write_text(base + alias_bomb())
    latencies = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        started = time.monotonic()
        answer = httpx.post(f"{server.url}/predict", json={"text": "still here"}, timeout=30)
        latencies.append(time.monotonic() - started)
        assert answer.status_code == 200
    assert max(latencies) < 1.0, max(latencies)
    kit.wait_until(
        lambda: server.metric("prodai_config_reloads_total", result="failure") > errors_before, 10, what="refusal"
    )
    assert "YAML nodes" in server.health()["config"]["last_reload"]["error"]


def test_keys_reloads_refuse_an_emptied_config_or_keys_file(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    base = kit.BASE_CONFIG + "cache:\n  enabled: false\nrate_limit:\n  enabled: false\nauth:\n  enabled: true\n"
    root = kit.make_project(registered_project, tmp_path / "proj", base + "  keys_file: keys.yaml\n")
    key = create_key(load_settings(root / "prodai.yaml"), "svc", ["predict"]).key  # type: ignore[list-item]
    server = kit.Server(root, "--model", "clf@production")
    servers.append(server)
    kit.start_all(server)

    def answered() -> int:
        return httpx.post(
            f"{server.url}/predict", json={"text": "x"}, headers={"X-API-Key": key}, timeout=30
        ).status_code

    assert answered() == 200
    keys_text = (root / "keys.yaml").read_text()
    seen = {"failures": server.metric("prodai_auth_key_reloads_total", result="failure")}

    def refused_and_still_answering() -> bool:
        # Keys are re-read when a request arrives after a change: every probe also checks that the last
        # good keys still answer.
        assert answered() == 200
        now = server.metric("prodai_auth_key_reloads_total", result="failure")
        refused, seen["failures"] = now > seen["failures"], now
        return refused

    for broken in ("", "# nothing here\n"):
        (root / "keys.yaml").write_text(broken)
        kit.wait_until(refused_and_still_answering, 10, interval=0.3, what="refusal")
    (root / "keys.yaml").unlink()
    kit.wait_until(refused_and_still_answering, 10, interval=0.3, what="refusal of a missing keys file")
    (root / "keys.yaml").write_text(keys_text)
    # An emptied prodai.yaml is refused the same way (it would otherwise mean "no keys file, no keys").
    (root / "prodai.yaml").write_text("# truncated\n")
    kit.wait_until(refused_and_still_answering, 10, interval=0.3, what="refusal of an emptied prodai.yaml")
    assert "keys reload refused" in server.log()


def test_requests_past_the_grace_period_get_503_not_500(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    config = (
        kit.BASE_CONFIG.replace("grace_period_s: 5", "grace_period_s: 1")
        + "auth:\n  enabled: false\ncache:\n  enabled: false\nrate_limit:\n  enabled: false\n"
    )
    root = kit.make_project(registered_project, tmp_path / "proj", config)
    (root / "faults").write_text("1 delay=4s\n")  # every forward pass of clf/1 takes 4 s longer
    server = kit.Server(root, "--model", "clf@production", env={"PRODAI_FAULTS_FILE": str(root / "faults")})
    servers.append(server)
    kit.start_all(server)
    answers: list[httpx.Response] = []

    def call(i: int) -> None:
        answers.append(httpx.post(f"{server.url}/predict", json={"text": f"slow {i}"}, timeout=60))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 4
    assert [a.status_code for a in answers] == [503] * 4, [(a.status_code, a.text) for a in answers]
    for answer in answers:
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["code"] == "shutting_down"
    server.proc.wait(timeout=60)
