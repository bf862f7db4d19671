"""Fixtures of the server tests: real uvicorn servers on loopback (in a thread, or as a `prodai serve` process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port

from prodai_cli.config import ProdaiConfig, Settings

# These tests are about the core server: API keys, rate limits and the response cache are switched off here
# (they are on by default) and tested against real servers in tests/integration.
CORE_ONLY: dict[str, Any] = {"auth": {"enabled": False}, "rate_limit": {"enabled": False}, "cache": {"enabled": False}}
CORE_ONLY_ENV = {f"PRODAI_{section}__ENABLED": "false" for section in ("AUTH", "RATE_LIMIT", "CACHE")}


def make_settings(root: Path, **serving: Any) -> Settings:
    """Settings rooted at `root` (its .prodai registry) with `serving` overrides."""
    config = ProdaiConfig.model_validate({**CORE_ONLY, "serving": serving, "monitoring": {"log_level": "warning"}})
    return Settings(config=config, path=None, root=root)


class ThreadServer:
    """`create_app(settings, model=...)` under a real uvicorn server in a background thread, on loopback."""

    def __init__(self, settings: Settings, model: str) -> None:
        import uvicorn

        from prodai_cli.serving.app import create_app

        self.settings = settings
        self.app = create_app(settings, model=model)
        self.state = self.app.state.prodai
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, *, wait_ready: bool = True, timeout: float = 180) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn thread died during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        if wait_ready:
            self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
        return self

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"server not ready: {httpx.get(f'{self.url}/health', timeout=5).text}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn thread did not stop"


@pytest.fixture
def thread_server() -> Iterator[Any]:
    """Factory: `thread_server(settings, model)` starts a server; every one is stopped at teardown."""
    servers: list[ThreadServer] = []

    def start(settings: Settings, model: str, *, wait_ready: bool = True) -> ThreadServer:
        server = ThreadServer(settings, model)
        servers.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def clf_server(registered_project: Path) -> Iterator[ThreadServer]:
    """A server on `clf@production` (version 1) of the registered project, shared by a module's tests."""
    server = ThreadServer(make_settings(registered_project), "clf@production").start()
    yield server
    server.stop()


class ServerProcess:
    """`python -m prodai_cli serve ...` as a real process; stderr (the JSON log) goes to a file."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"serve-{self.port}.log"
        self._log = self.log_path.open("w")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
        full_env.update(CORE_ONLY_ENV)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "serve", "--port", str(self.port), *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8")

    def wait_listening(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.log()[-3000:]}"
            try:
                httpx.get(f"{self.url}/health/live", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.02)
        raise AssertionError(f"server never listened: {self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 180) -> None:
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.log()[-3000:]}"
            if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"server not ready: {self.log()[-3000:]}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def serve_process() -> Iterator[Any]:
    """Factory: `serve_process(cwd, *args, env=...)`; every process is terminated at teardown."""
    procs: list[ServerProcess] = []

    def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(cwd, *args, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()


def metrics_of(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The parsed /metrics of a server."""
    from prodai_cli.serving.metrics import parse_exposition

    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return parse_exposition(response.text)


@pytest.fixture
def settings_for() -> Any:
    """`settings_for(root, **serving)`: Settings on `root` with serving overrides (see make_settings)."""
    return make_settings


@pytest.fixture
def scrape() -> Any:
    """`scrape(url)`: the parsed /metrics of a server."""
    return metrics_of


@pytest.fixture(scope="module")
def fuzz_server(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """A server with small limits (so generated inputs reach them) and a queue too big to fill."""
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz"), max_text_chars=200, max_batch_items=8, max_body_bytes=4096
    )
    server = ThreadServer(settings, str(tiny_classifier_dir)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_class() -> type[ThreadServer]:
    """The ThreadServer class, for module-scoped servers a test module configures itself."""
    return ThreadServer
