"""Fixtures of the server-level tests: real `prodai serve` processes over copies of the registered project
(clf v1 alias production, v2 alias staging), a real redis-server, and a lean HTTP/1.1 client.

The client speaks raw HTTP/1.1 over keep-alive sockets (asyncio streams): these tests send tens of thousands
of requests, and a general-purpose client would spend more CPU per request than the server does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import RedisServer, free_port

from prodai_cli.serving.metrics import parse_exposition, sample_sum

# Quiet, fast-draining servers; each test adds what it is about.
BASE_CONFIG = """\
# written by tests/integration
monitoring:
  log_level: info
serving:
  drain_delay_s: 0
  grace_period_s: 5
"""


# --------------------------------------------------------------------------------------------- HTTP


@dataclass
class Answer:
    """One HTTP answer, or the transport error that stood in for it."""

    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection to a loopback server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None or raw is not None:
            lines.append("Content-Type: application/json")
        head = "\r\n".join(lines).encode()
        for name, value in (headers or {}).items():
            head += f"\r\n{name}: ".encode() + value.encode("utf-8")
        try:
            self._writer.write(head + b"\r\n\r\n" + data)
            status_line = await self._reader.readline()
            if not status_line:
                raise ConnectionError("connection closed before an answer")
            status = int(status_line.split()[1])
            found: dict[str, str] = {}
            while True:
                line = await self._reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                found[name.strip().lower()] = value.strip()
            payload = await self._reader.readexactly(int(found.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            self.close()
            return Answer(0, {}, b"", error=f"{type(exc).__name__}: {exc}")
        if found.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, found, payload)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class Call:
    """One request of a batch sent with :func:`send_all`."""

    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/predict"
    method: str = "POST"
    raw: bytes | None = None


def send_all(port: int, calls: Sequence[Call], concurrency: int = 8, timeout: float = 300) -> list[Answer]:
    """Send every call over `concurrency` keep-alive connections; answers in call order."""

    async def run() -> list[Answer]:
        answers: list[Answer | None] = [None] * len(calls)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(calls)):
            queue.put_nowait(index)

        async def worker() -> None:
            connection = Connection(port)
            try:
                while not queue.empty():
                    index = queue.get_nowait()
                    call = calls[index]
                    answers[index] = await connection.request(
                        call.method, call.path, call.body, call.headers, raw=call.raw
                    )
            finally:
                connection.close()

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(calls)))))
        return [a for a in answers if a is not None]

    return asyncio.run(run())


def send_at_once(port: int, calls: Sequence[Call], timeout: float = 120) -> list[Answer]:
    """Open one connection per call first, then send every call at the same moment (true concurrency)."""

    async def run() -> list[Answer]:
        connections = [Connection(port) for _ in calls]
        for connection in connections:  # connect first, so the requests themselves arrive together
            connection._reader, connection._writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(timeout):
                pending = [
                    c.request(k.method, k.path, k.body, k.headers, raw=k.raw)
                    for c, k in zip(connections, calls, strict=True)
                ]
                return list(await asyncio.gather(*pending))
        finally:
            for connection in connections:
                connection.close()

    return asyncio.run(run())


class Hammer:
    """Clients sending calls on `connections` keep-alive connections until stopped; every answer is recorded.

    `make_call(worker, i)` builds the i-th call of a worker. Use as a context manager.
    """

    def __init__(self, port: int, make_call: Callable[[int, int], Call], connections: int = 8) -> None:
        self.port = port
        self.make_call = make_call
        self.connections = connections
        self.records: list[tuple[float, Answer]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async def client(worker: int) -> None:
            connection = Connection(self.port)
            i = 0
            try:
                while not self._stop.is_set():
                    call = self.make_call(worker, i)
                    i += 1
                    answer = await connection.request(call.method, call.path, call.body, call.headers, raw=call.raw)
                    self.records.append((time.monotonic(), answer))
                    if answer.error:
                        await asyncio.sleep(0.05)
            finally:
                connection.close()

        await asyncio.gather(*(client(w) for w in range(self.connections)))

    def answers_since(self, moment: float) -> list[Answer]:
        return [answer for at, answer in list(self.records) if at >= moment]

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the clients did not stop"


# --------------------------------------------------------------------------------------------- servers


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without PRODAI_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    env.update(extra)
    return env


class Server:
    """`python -m prodai_cli serve` in a project directory, on a free loopback port; its JSON log in a file."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.root = root
        self.args = args
        self.env = env or {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / f"serve-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prodai_cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                cwd=self.root,
                env=clean_env(**self.env),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 300) -> Server:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s: {self.log()[-3000:]}")

    def health(self) -> dict[str, Any]:
        data = httpx.get(f"{self.url}/health", timeout=10).json()
        assert isinstance(data, dict)
        return data

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200
        return parse_exposition(response.text)

    def metric(self, name: str, **labels: Any) -> float:
        return sample_sum(self.metrics(), name, **labels)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_all(*servers: Server, timeout: float = 300) -> None:
    """Start servers together (model loading overlaps) and wait until every one is ready."""
    for server in servers:
        server.start()
    for server in servers:
        server.wait_ready(timeout)


def make_project(registered_project: Path, target: Path, config: str) -> Path:
    """A private copy of the registered project with `config` as its prodai.yaml."""
    shutil.copytree(registered_project, target, symlinks=True)
    (target / "prodai.yaml").write_text(config, encoding="utf-8")
    return target


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts (append them); every one is stopped at teardown."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for one test module (helpers.RedisServer)."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kit() -> Any:
    """This conftest's helpers for the test modules (a conftest cannot be imported by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        BASE_CONFIG=BASE_CONFIG,
        Answer=Answer,
        Call=Call,
        Server=Server,
        Hammer=Hammer,
        send_all=send_all,
        send_at_once=send_at_once,
        start_all=start_all,
        make_project=make_project,
        wait_until=wait_until,
        clean_env=clean_env,
    )
