"""Run the model server under uvicorn: one process, or N worker processes sharing one socket.

The model reference is pinned to ``NAME/VERSION`` once, here, so every worker (and a restarted one) serves
the same version even if an alias moves meanwhile; a pinned reference whose files are cached needs no
registry at all (how a container with baked-in models starts).

Several workers: each loads the model and runs its own micro-batcher. Metrics use prometheus_client's
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set to a fresh directory (unless already set) before the
workers start, so ``/metrics`` on any worker reports the sum over all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from typing import TYPE_CHECKING

from prodai_cli.errors import ServeError

if TYPE_CHECKING:
    from pathlib import Path

    from prodai_cli.config import Settings

logger = logging.getLogger("prodai.serving")

FACTORY = "prodai_cli.serving.app:factory"


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before starting (a busy port is a clear error, not a log line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and without it Nagle's
    # algorithm holds the response body behind the headers until the client's delayed ACK (~40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="Pick another --port or stop the other server",
        ) from None
    sock.set_inheritable(True)
    return sock


def run_server(settings: Settings, *, model: str | None, host: str, port: int, workers: int = 1) -> None:
    """Serve ``model`` until SIGTERM/SIGINT (blocks).

    Args:
        settings: Loaded settings.
        model: A pinned reference (:func:`pin_model_ref`), or None to route by the ``ab:`` section.
        host: Address to bind.
        port: TCP port.
        workers: Worker processes.

    Raises:
        ServeError: The port is busy, or the model did not load.

    """
    import uvicorn

    from prodai_cli.serving.http import uvicorn_options
    from prodai_cli.serving.logging import configure_logging, log_config

    monitoring = settings.config.monitoring
    serving = settings.config.serving
    options = {
        "log_config": log_config(monitoring.log_format, monitoring.log_level),
        "access_log": False,  # ours carries the request id: prodai.serving.access
        "timeout_graceful_shutdown": max(1, round(serving.grace_period_s)),
        "lifespan": "on",
        "server_header": False,
        **uvicorn_options(serving),
    }
    configure_logging(monitoring.log_format, monitoring.log_level)
    sock = bind_socket(host, port)
    logger.info(
        "serving",
        extra={
            "url": f"http://{host}:{port}",
            "model": model or "A/B (ab: in the config)",
            "workers": workers,
            "docs": f"http://{host}:{port}/docs",
        },
    )
    if workers <= 1:
        from prodai_cli.serving.app import create_app

        app = create_app(settings, model=model, bind=(host, port))
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
        failures: list[str] = []

        def stop(reason: str) -> None:
            failures.append(reason)
            server.should_exit = True

        app.state.prodai.on_fatal = stop
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits 3 when the lifespan refuses to start (a busy gRPC port)
            if exc.code in (None, 0):
                raise
            raise ServeError("The server could not start; see the log above") from None
        finally:
            sock.close()
        if failures:
            raise ServeError(f"The model did not load: {failures[0]}")
        return
    _run_workers(settings.path, sock, model=model, host=host, port=port, workers=workers, options=options)


def _run_workers(
    config_path: Path | None,
    sock: socket.socket,
    *,
    model: str | None,
    host: str,
    port: int,
    workers: int,
    options: dict[str, object],
) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from prodai_cli.config import ENV_CONFIG
    from prodai_cli.serving.app import ENV_SERVE_BIND, ENV_SERVE_MODEL, STARTUP_FAILURE
    from prodai_cli.serving.metrics import MULTIPROC_ENV

    owned_dir: str | None = None
    if not os.environ.get(MULTIPROC_ENV):
        owned_dir = tempfile.mkdtemp(prefix="prodai-metrics-")
        os.environ[MULTIPROC_ENV] = owned_dir
    if model:
        os.environ[ENV_SERVE_MODEL] = model
    else:  # route by ab: (a stale value from the environment would pin one model)
        os.environ.pop(ENV_SERVE_MODEL, None)
    os.environ[ENV_SERVE_BIND] = f"{host}:{port}"
    if config_path is not None:  # the workers load the same file (uvicorn's factory takes no arguments)
        os.environ[ENV_CONFIG] = str(config_path)
    config = uvicorn.Config(FACTORY, factory=True, host=host, port=port, workers=workers, **options)  # type: ignore[arg-type]
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)
            with contextlib.suppress(KeyError):
                del os.environ[MULTIPROC_ENV]
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise ServeError("A worker could not load the model; see the log above")
