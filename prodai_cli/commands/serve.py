"""prodai serve: run the model server (FastAPI under uvicorn) on a registered model or a model directory."""

from __future__ import annotations

from typing import Annotated

import typer

from prodai_cli.commands._common import JsonOption, console
from prodai_cli.commands._common import settings as project_settings


def command(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="NAME, NAME@ALIAS, NAME/VERSION or a model directory (default: serving.model, then "
            "registry.default_model).",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default: serving.host).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", min=1, max=65535, help="TCP port (default: serving.port).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", min=1, max=64, help="Worker processes, each with the model (default: serving.workers)."
        ),
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Serve predictions over HTTP until SIGTERM or Ctrl-C.

    Endpoints: POST /predict, POST /predict/batch, GET /health, /health/live, /health/ready, /metrics, /docs.
    Concurrent requests are micro-batched; logs are JSON lines on stderr. On SIGTERM readiness turns 503,
    in-flight requests finish (serving.grace_period_s), then the process exits. Without --model and with
    ab.enabled it routes by the ab: split, and follows edits of prodai.yaml (ab-set, keys) without a restart.

    Example: prodai serve --model sentiment@production --port 8000
    """
    out = console(ctx, json_flag)
    settings = project_settings(ctx)
    config = settings.config
    serving = config.serving
    from prodai_cli.serving.app import served_model_ref
    from prodai_cli.serving.pool import pin_model_ref
    from prodai_cli.serving.server import run_server

    ab = config.ab
    pinned: str | None = None
    if model is None and ab.enabled:  # route by ab: (followed live as prodai.yaml changes)
        served = f"{ab.model} A/B " + " ".join(f"{name}=v{v.version}:{v.weight:g}" for name, v in ab.variants.items())
    else:
        with out.status("Resolving the model"):
            pinned = pin_model_ref(settings, served_model_ref(serving, config.registry, model))
        served = pinned
    bind_host = host or serving.host
    bind_port = port or serving.port
    processes = workers or serving.workers
    url = f"http://{bind_host}:{bind_port}"
    out.result({"url": url, "model": served, "workers": processes})
    if config.monitoring.log_format == "text":  # with JSON logs, the server's own "serving" line says it
        out.info(f"Serving {served} on {url} with {processes} worker(s); docs at {url}/docs. Ctrl-C to stop.")
    run_server(settings, model=pinned, host=bind_host, port=bind_port, workers=processes)
