"""The listening socket `prodai serve` binds before uvicorn starts."""

from __future__ import annotations

import asyncio
import socket

import pytest

from prodai_cli.errors import ServeError
from prodai_cli.serving.server import bind_socket


def test_accepted_connections_get_tcp_nodelay() -> None:
    # Without it, Nagle's algorithm holds each response body behind its headers until the client's delayed
    # ACK: ~40 ms on every request (measured with bench/serve_throughput.py before the fix).
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(scenario())
    assert seen and seen[0] != 0


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"Cannot listen on 127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
