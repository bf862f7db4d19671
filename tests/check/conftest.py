"""Fixtures of the checklist and ship tests: copies of the registered project with a chosen prodai.yaml, and
real `prodai serve` processes on loopback whose JSON log goes to a file the checks can read."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import free_port

# Everything on, with limits small enough that the checklist's burst reaches a 429 quickly, and an A/B split
# over clf v1/v2 so a fallback is configured. `serving.model` is what a server without A/B support serves.
FULL_CONFIG: dict[str, Any] = {
    "serving": {"model": "clf/1", "drain_delay_s": 0, "max_text_chars": 1000},
    "ab": {
        "enabled": True,
        "model": "clf",
        "variants": {"v1": {"version": 1, "weight": 0.9}, "v2": {"version": 2, "weight": 0.1}},
    },
    "auth": {"enabled": True},
    "rate_limit": {
        "enabled": True,
        "per_key": {"rate": 40, "period_s": 1.0, "burst": 10},
        "per_ip": {"rate": 20, "period_s": 1.0, "burst": 10},
    },
    "cache": {"enabled": True},
    "monitoring": {"metrics": True, "log_format": "json", "access_log": True, "log_level": "info"},
}

# What "switching off" each protection means in the config, and the item that must then fail.
SWITCHED_OFF: dict[str, tuple[tuple[str, str], str]] = {
    "auth": (("auth", "enabled"), "security"),
    "rate_limit": (("rate_limit", "enabled"), "rate_limit"),
    "cache": (("cache", "enabled"), "cache"),
    "metrics": (("monitoring", "metrics"), "metrics"),
}


def full_config(**off: bool) -> dict[str, Any]:
    """FULL_CONFIG with the named protections (keys of SWITCHED_OFF) switched off."""
    import copy

    config = copy.deepcopy(FULL_CONFIG)
    for name, is_off in off.items():
        if is_off:
            (section, key), _ = SWITCHED_OFF[name]
            config[section][key] = False
    return config


def make_project(source: Path, target: Path, config: dict[str, Any]) -> Path:
    """A private copy of a registered project with `config` as its prodai.yaml (with a comment to keep)."""
    shutil.copytree(source, target, symlinks=True)
    text = "# prodai.yaml of a check test: comments like this one must survive\n" + yaml.safe_dump(config)
    (target / "prodai.yaml").write_text(text, encoding="utf-8")
    return target


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    env.update(extra)
    return env


@dataclass
class Served:
    """A `prodai serve` process over a project directory."""

    root: Path
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def settings(self) -> Any:
        from prodai_cli.config import load_settings

        return load_settings(self.root / "prodai.yaml")

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout}s: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(root: Path) -> Served:
    """Start `prodai serve` in `root` on a free loopback port (not waiting for readiness)."""
    port = free_port()
    log_path = root / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return Served(root=root, url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)


def seed_loadtests(root: Path, versions: tuple[int, ...] = (1, 2), passed: bool = True) -> None:
    """Record a load test of each version the way `prodai loadtest` does (Registry.log_loadtest: a real MLflow run)."""
    from prodai_cli.config import load_settings
    from prodai_cli.registry import Registry

    registry = Registry(load_settings(root / "prodai.yaml"))
    for version in versions:
        registry.log_loadtest(
            "clf", version, passed=passed, metrics={"p95_ms": 12.0, "error_rate": 0.0}, params={"users": "4"}
        )


@pytest.fixture(scope="module")
def full_server(registered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A fully configured project (FULL_CONFIG, passing load tests of v1 and v2) and its server."""
    root = make_project(registered_project, tmp_path_factory.mktemp("check-full") / "proj", full_config())
    seed_loadtests(root)
    server = start_server(root)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def switched_off_servers(
    registered_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    """One server per protection switched off (started together: the model loads overlap)."""
    servers: dict[str, Served] = {}
    try:
        for name in SWITCHED_OFF:
            root = make_project(
                registered_project, tmp_path_factory.mktemp(f"check-{name}-off") / "proj", full_config(**{name: True})
            )
            seed_loadtests(root)
            servers[name] = start_server(root)
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def check_context(server: Served, **kwargs: Any) -> Any:
    """A CheckContext on `server` that reads its log file (as ship does for its local candidates)."""
    from prodai_cli.checks import CheckContext, CheckTarget

    target = CheckTarget(server.url, None, server.log, manage_keys=True)
    return CheckContext(server.settings(), target, **kwargs)


@pytest.fixture
def checking() -> Any:
    """`checking(server, **kwargs)`: an open-able CheckContext on a test server (see check_context)."""
    return check_context


@pytest.fixture
def configured_project(registered_project: Path, tmp_path: Path) -> Any:
    """`configured_project(extra=None, embedded_defaults=False, **off)`: a private copy of the registered
    project with FULL_CONFIG (protections named in `off` switched off, `extra` sections merged in) as its
    prodai.yaml, or with no prodai.yaml at all (embedded defaults)."""
    counter = iter(range(1000))

    def make(extra: dict[str, Any] | None = None, *, embedded_defaults: bool = False, **off: bool) -> Path:
        target = tmp_path / f"proj{next(counter)}"
        if embedded_defaults:
            shutil.copytree(registered_project, target, symlinks=True)
            (target / "prodai.yaml").unlink(missing_ok=True)
            return target
        config = full_config(**off)
        for section, values in (extra or {}).items():
            config.setdefault(section, {}).update(values)
        return make_project(registered_project, target, config)

    return make


@pytest.fixture
def serve_project() -> Iterator[Any]:
    """`serve_project(root)`: a ready `prodai serve` over `root` (start_server), stopped after the test."""
    servers: list[Served] = []

    def start(root: Path) -> Served:
        server = start_server(root)
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
