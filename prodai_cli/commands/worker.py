"""prodai worker: a Celery worker that runs this project's batch jobs (jobs.backend: celery)."""

from __future__ import annotations

from typing import Annotated

import typer

from prodai_cli.commands._common import settings as project_settings


def command(
    ctx: typer.Context,
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="Worker name (default prodai@HOST); unique per worker.")
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run jobs queued in Redis, one at a time, until stopped; start more (here or on other machines) to scale.

    Every worker needs the same prodai.yaml (jobs.redis_url, the registry) and the same jobs directory
    (jobs.dir, a shared volume) as the server. A worker killed mid-job leaves the job to another worker,
    which resumes after the last committed line. SIGTERM or Ctrl-C: Celery's warm shutdown lets the running job
    finish first; a second signal (or SIGKILL) stops at once and another worker resumes the job.

    Example: prodai worker --hostname gpu-1
    """
    import importlib.util

    from prodai_cli.errors import UsageError

    settings = project_settings(ctx)
    if importlib.util.find_spec("celery") is None:
        raise UsageError("prodai worker needs Celery", hint="pip install 'prodai[jobs]'")
    from prodai_cli.jobs.celery_app import run_worker

    if loglevel.lower() not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--loglevel must be debug, info, warning or error, got {loglevel!r}")
    run_worker(settings, hostname=hostname, loglevel=loglevel.upper())
