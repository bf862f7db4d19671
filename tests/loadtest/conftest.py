"""Fixtures of the load-test tests: a real `prodai serve` process on loopback over a copy of the registered project."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import free_port

# The server under test: no auth or rate limits (a load test would trip them and measure 401/429s instead of
# the model), and a text limit that generated texts stay under but a crafted payload can exceed (a real 422).
SERVER_CONFIG = """\
auth:
  enabled: false
rate_limit:
  enabled: false
serving:
  max_text_chars: 1000
monitoring:
  log_level: warning
"""


@dataclass
class ServedProject:
    """A project directory (registry with clf v1/v2) and a prodai server on clf@production (version 1)."""

    root: Path
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def predict_count(self, status: str = "200") -> float:
        """The server's own count of /predict answers with `status` (prodai_requests_total)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            wanted = line.startswith("prodai_requests_total{") and f'status="{status}"' in line
            if wanted and 'route="/predict"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def _wait_ready(server: ServedProject, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"server exited {server.proc.returncode}: {server.log()[-3000:]}"
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout}s: {server.log()[-3000:]}")


@contextlib.contextmanager
def serving(registered_project: Path, root: Path, config: str) -> Iterator[ServedProject]:
    """A private copy of the registered project at `root` with `config`, serving clf@production on a free port."""
    shutil.copytree(registered_project, root, symlinks=True)
    (root / "prodai.yaml").write_text(config, encoding="utf-8")
    port = free_port()
    log_path = root / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prodai_cli",
                "serve",
                "--model",
                "clf@production",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = ServedProject(root=root, url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(registered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProject]:
    """A private copy of the registered project serving clf@production on a free loopback port (module-wide)."""
    with serving(registered_project, tmp_path_factory.mktemp("loadtest") / "proj", SERVER_CONFIG) as server:
        yield server


# Auth on, and a per-key limit of one request a minute: the second request of a key gets 429 (the preflight).
GUARDED_CONFIG = """\
auth:
  enabled: true
rate_limit:
  enabled: true
  per_key: {rate: 1, period_s: 60.0, burst: 0}
  per_ip: {rate: 1000, period_s: 1.0, burst: 1000}
monitoring:
  log_level: warning
"""


@pytest.fixture(scope="module")
def guarded(registered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProject]:
    """A server that wants an API key and allows each key one request a minute."""
    with serving(registered_project, tmp_path_factory.mktemp("preflight") / "proj", GUARDED_CONFIG) as server:
        yield server
