"""Issue 13 at the network edge, against real `prodai serve` processes on loopback: spoofed forwarding headers,
the failed-auth lockout, header limits, slow and silent connections, the connection cap, memory under a
header flood.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from prodai_cli.config import load_settings
from prodai_cli.keys import create_key, generate_key

pytestmark = [pytest.mark.slow]

OPEN = """\
auth:
  enabled: false
cache:
  enabled: false
"""


def project(kit: Any, registered_project: Path, tmp_path: Path, extra: str) -> Path:
    return kit.make_project(registered_project, tmp_path / "proj", kit.BASE_CONFIG + extra)


def start(kit: Any, servers: list[Any], root: Path) -> Any:
    server = kit.Server(root, "--model", "clf@production")
    servers.append(server)
    kit.start_all(server)
    return server


def predict(server: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json={"text": "a fine movie"}, headers=headers or {}, timeout=30)


def access_clients(server: Any) -> Counter[str]:
    """The ``client`` field of every access-log line of predictions."""
    clients: Counter[str] = Counter()
    for line in server.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("path") == "/predict" and "client" in record:
            clients[record["client"]] += 1
    return clients


# --------------------------------------------------------------------------------------------- client address


def test_spoofed_forwarding_headers_from_an_untrusted_peer_change_nothing(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    root = project(
        kit, registered_project, tmp_path, OPEN + "rate_limit:\n  per_ip: {rate: 5, period_s: 60, burst: 0}\n"
    )
    server = start(kit, servers, root)
    statuses = []
    for i in range(20):
        spoof = {"X-Forwarded-For": f"10.0.0.{i}"} if i % 2 else {"Forwarded": f"for=10.0.1.{i}"}
        statuses.append(predict(server, spoof).status_code)
    # One address (the real peer) with a budget of 5: the rotating header bought nothing.
    assert Counter(statuses) == {200: 5, 429: 15}
    clients = kit.wait_until(lambda: (c := access_clients(server)).total() == 20 and c, 10, what="access log")
    assert set(clients) == {"127.0.0.1"}, clients


def test_a_trusted_proxy_names_the_client(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    root = project(
        kit,
        registered_project,
        tmp_path,
        OPEN + "rate_limit:\n  per_ip: {rate: 5, period_s: 60, burst: 0}\n  trusted_proxies: [127.0.0.1]\n",
    )
    server = start(kit, servers, root)
    # Each forwarded client has its own budget...
    assert {predict(server, {"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(10)} == {200}
    # ...and one client behind the proxy is limited as itself, whichever header the proxy speaks.
    same = [predict(server, {"Forwarded": 'for="10.9.9.9:4711";proto=http'}).status_code for _ in range(4)]
    same += [predict(server, {"X-Forwarded-For": "10.9.9.9"}).status_code for _ in range(4)]
    assert same == [200] * 5 + [429] * 3
    # Log lines are written by a background thread: wait for the last one.
    clients = kit.wait_until(lambda: (c := access_clients(server))["10.9.9.9"] == 8 and c, 10, what="access log")
    assert "127.0.0.1" not in clients, clients


def test_the_lockout_throttles_failures_but_never_a_valid_key(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    root = project(
        kit,
        registered_project,
        tmp_path,
        "cache:\n  enabled: false\nauth:\n  enabled: true\n"
        "rate_limit:\n  auth_failures: {rate: 5, period_s: 60, burst: 0}\n",
    )
    key = create_key(load_settings(root / "prodai.yaml"), "good", ["predict"]).key  # type: ignore[list-item]
    server = start(kit, servers, root)
    # Twelve wrong keys, each behind a different spoofed address: the lockout counts the real peer.
    wrong = [predict(server, {"X-API-Key": generate_key(), "X-Forwarded-For": f"10.1.0.{i}"}) for i in range(12)]
    assert [r.status_code for r in wrong] == [401] * 5 + [429] * 7
    assert wrong[-1].json()["code"] == "auth_rate_limited"
    # The address is locked out for failures, yet a client with a valid key from it is answered.
    for _ in range(3):
        answer = predict(server, {"X-API-Key": key})
        assert answer.status_code == 200, answer.text
    assert predict(server, {"X-API-Key": generate_key()}).status_code == 429


# --------------------------------------------------------------------------------------------- HTTP limits


@pytest.fixture(scope="module")
def edge(kit: Any, registered_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Protection off (these are about the HTTP layer); a 2 s request read deadline."""
    root = kit.make_project(
        registered_project,
        tmp_path_factory.mktemp("edge") / "proj",
        kit.BASE_CONFIG.replace("serving:\n", "serving:\n  request_read_timeout_s: 2\n")
        + OPEN
        + "rate_limit:\n  enabled: false\n",
    )
    server = kit.Server(root, "--model", "clf@production")
    kit.start_all(server)
    yield server
    server.stop()


def raw_exchange(port: int, payload: bytes, timeout: float = 30) -> bytes:
    """Send ``payload`` (ignoring a server that closes early) and read everything until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def head(headers: str) -> bytes:
    body = b'{"text": "fine"}'
    return (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    ).encode() + body


def test_a_64kb_header_gets_431_and_ten_thousand_headers_are_refused(edge: Any) -> None:
    big = raw_exchange(edge.port, head(f"X-Big: {'a' * 65536}\r\n"))
    assert big.startswith(b"HTTP/1.1 431 "), big[:200]
    assert b'"headers_too_large"' in big
    many = raw_exchange(edge.port, head("".join(f"X-H{i}: v\r\n" for i in range(10_000))))
    assert many.startswith(b"HTTP/1.1 431 "), many[:200]
    # An ordinary request on the same server is answered.
    ok = raw_exchange(edge.port, head("X-Small: yes\r\n"))
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]


def test_slow_and_silent_connections_are_closed_by_the_deadline_while_requests_answer(edge: Any) -> None:
    slow = [socket.create_connection(("127.0.0.1", edge.port), timeout=30) for _ in range(50)]
    silent = [socket.create_connection(("127.0.0.1", edge.port), timeout=30) for _ in range(10)]
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    stop = threading.Event()

    def drip() -> None:
        # slowloris: a byte of head per connection every 0.2 s, never finishing it.
        text = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        for position in range(len(text)):
            if stop.is_set():
                return
            for index, sock in enumerate(slow):
                if index in closed_at:
                    continue
                try:
                    sock.send(text[position : position + 1])
                except OSError:
                    closed_at.setdefault(index, time.monotonic() - started)
            time.sleep(0.2)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        statuses = []
        while time.monotonic() - started < 3:
            statuses.append(httpx.post(f"{edge.url}/predict", json={"text": "still answering"}, timeout=10).status_code)
        assert statuses and set(statuses) == {200}, statuses

        def gone(sock: socket.socket) -> bool:
            sock.settimeout(10)
            try:
                while data := sock.recv(65536):
                    if b"408" in data[:20]:
                        continue
                return True
            except OSError:
                return True

        assert all(gone(sock) for sock in silent + slow)
        elapsed = time.monotonic() - started
        # A 2 s deadline: everything was closed well before the 10 s that recv() would have waited.
        assert elapsed < 8, elapsed
    finally:
        stop.set()
        for sock in slow + silent:
            sock.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_under_fifty_connections_of_four_mb_headers(edge: Any) -> None:
    assert edge.proc is not None
    pid = edge.proc.pid
    before = rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    def flood() -> None:
        chunk = b"a" * 65536
        with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
            try:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Flood: ")
                for _ in range(64):  # 4 MB of one header that never ends
                    sock.sendall(chunk)
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    floods = [threading.Thread(target=flood) for _ in range(50)]
    for thread in floods:
        thread.start()
    for thread in floods:
        thread.join(timeout=60)
    done.set()
    sampler.join()
    grown_mb = (peak[0] - before) / 1024
    assert grown_mb < 50, f"RSS grew by {grown_mb:.0f} MB"
    assert predict(edge).status_code == 200


def test_connections_beyond_the_cap_get_503_with_retry_after(
    kit: Any, registered_project: Path, tmp_path: Path, servers: list[Any]
) -> None:
    root = project(kit, registered_project, tmp_path, OPEN + "rate_limit:\n  enabled: false\n")
    (root / "prodai.yaml").write_text(
        (root / "prodai.yaml").read_text().replace("serving:\n", "serving:\n  max_connections: 5\n", 1)
    )
    server = start(kit, servers, root)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(5)]
    try:
        time.sleep(0.3)  # the server has accepted all five
        refused = raw_exchange(server.port, head(""))
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
        assert b"retry-after: 1" in refused.lower()
        assert b'"too_many_connections"' in refused
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert predict(server).status_code == 200
