"""prodai jobs: submit a JSONL file to a server as a batch job, follow it, fetch its results, cancel, list.

Exit codes: 0 ok; 1 the job failed or was cancelled (with --wait), or the server refused; 2 usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console
from prodai_cli.commands._common import settings as project_settings

if TYPE_CHECKING:
    from prodai_cli.console import Console
    from prodai_cli.jobs.client import JobsClient

app = typer.Typer(
    help="Batch jobs on a server: submit, status, result, cancel, list (needs a key with the jobs scope).",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="PRODAI_SERVER_URL", help="Server base URL (default: serving.host and port)."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="PRODAI_API_KEY", help="API key with the jobs scope (prodai keys create)."),
]


def _client(ctx: typer.Context, url: str | None, api_key: str | None) -> JobsClient:
    from prodai_cli.jobs.client import JobsClient

    settings = project_settings(ctx)
    serving = settings.config.serving
    host = "127.0.0.1" if serving.host in ("0.0.0.0", "::", "") else serving.host
    return JobsClient(url or f"http://{host}:{serving.port}", api_key, header=settings.config.auth.header)


def _show(out: Console, record: dict[str, Any]) -> None:
    out.result(record)
    if out.json_mode:
        return
    progress = record.get("progress", {})
    line = (
        f"job {record['id']}  {record['status']}  {progress.get('done', 0)}/{progress.get('total', 0)} lines  "
        f"{record.get('items', 0)} predictions  {record.get('errors', 0)} errors  "
        f"{record.get('items_per_s', 0):,.1f} items/s  model {record.get('model')}"
    )
    out.info(line + (f"\nerror: {record['error']}" if record.get("error") else ""))


def _end_state(record: dict[str, Any]) -> None:
    from prodai_cli.errors import JobError

    if record["status"] != "succeeded":
        raise JobError(
            f"Job {record['id']} {record['status']}" + (f": {record['error']}" if record.get("error") else "")
        )


@app.command("submit")
def submit(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="JSONL input, one object per line.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="NAME@ALIAS or NAME/VERSION (default: the server's).")
    ] = None,
    text_field: Annotated[str | None, typer.Option("--text-field", help="Field holding the text.")] = None,
    id_field: Annotated[str | None, typer.Option("--id-field", help="Field holding the id.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="With --wait: write the results here when it succeeds.")
    ] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
    json_flag: JsonOption = False,
) -> None:
    """Upload FILE.jsonl as a job; the server pins the model version now (an unknown one is refused here).

    Example: PRODAI_API_KEY=pk_... prodai jobs submit reviews.jsonl --model clf@production --wait -o scored.jsonl
    """
    from prodai_cli.errors import UsageError

    if output is not None and not wait:
        raise UsageError("--output needs --wait (or run `prodai jobs result ID -o FILE` later)")
    out = console(ctx, json_flag)
    client = _client(ctx, url, api_key)
    try:
        record = client.submit(input_path, model, text_field=text_field, id_field=id_field)
        if not wait:
            _show(out, record)
            return
        out.info(f"Submitted job {record['id']} (model {record['model']})")
        record = _follow(out, client, record["id"])
        if output is not None and record["status"] == "succeeded":
            lines = client.download(record["id"], output)
            record["output"] = str(output)
            out.debug(f"wrote {lines} lines to {output}")
        _show(out, record)
        _end_state(record)
    finally:
        client.close()


def _follow(out: Console, client: JobsClient, job_id: str) -> dict[str, Any]:
    from rich.progress import TextColumn

    progress = out.progress(TextColumn("{task.fields[rate]}"))
    task = progress.add_task(job_id[:8], total=None, rate="")

    def update(record: dict[str, Any]) -> None:
        done = record.get("progress", {})
        progress.update(
            task,
            completed=done.get("done", 0),
            total=done.get("total") or None,
            description=f"{job_id[:8]} {record['status']}",
            rate=f"{record.get('items_per_s', 0):,.0f} items/s",
        )

    with progress:
        return client.wait(job_id, update)


@app.command("status")
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job until it ends (exit 1 unless it succeeds).")
    ] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
    json_flag: JsonOption = False,
) -> None:
    """Show a job's status, progress, items/s, error count and times.

    Example: prodai jobs status 3f2a... --json
    """
    out = console(ctx, json_flag)
    client = _client(ctx, url, api_key)
    try:
        record = _follow(out, client, job_id) if wait else client.status(job_id)
    finally:
        client.close()
    _show(out, record)
    if wait:
        _end_state(record)


@app.command("result")
def result(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Write the JSONL here.")],
    errors: Annotated[bool, typer.Option("--errors", help="Fetch the errors file (bad input lines) instead.")] = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
    json_flag: JsonOption = False,
) -> None:
    """Download a job's predictions (or its bad lines) as JSONL; a running job gives what is committed so far.

    Example: prodai jobs result 3f2a... -o scored.jsonl
    """
    out = console(ctx, json_flag)
    client = _client(ctx, url, api_key)
    try:
        record = client.status(job_id)
        lines = client.download(job_id, output, errors=errors)
    finally:
        client.close()
    out.result({"id": job_id, "status": record["status"], "output": str(output), "lines": lines})
    if not out.json_mode:
        out.success(f"Wrote {lines} {'error' if errors else 'prediction'} lines to {output} (job {record['status']})")


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    url: UrlOption = None,
    api_key: KeyOption = None,
    json_flag: JsonOption = False,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next commit (committed results stay).

    Example: prodai jobs cancel 3f2a...
    """
    out = console(ctx, json_flag)
    client = _client(ctx, url, api_key)
    try:
        record = client.cancel(job_id)
    finally:
        client.close()
    _show(out, record)


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status_filter: Annotated[
        str | None, typer.Option("--status", help="queued, running, succeeded, failed or cancelled.")
    ] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many (newest first).")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Page size.")] = 20,
    url: UrlOption = None,
    api_key: KeyOption = None,
    json_flag: JsonOption = False,
) -> None:
    """List this key's jobs, newest first.

    Example: prodai jobs list --status running
    """
    out = console(ctx, json_flag)
    client = _client(ctx, url, api_key)
    try:
        page = client.list(status=status_filter, offset=offset, limit=limit)
    finally:
        client.close()
    out.result(page)
    if out.json_mode:
        return
    rows = [
        (
            j["id"],
            j["status"],
            f"{j['progress']['done']}/{j['progress']['total']}",
            j["errors"],
            j["model"],
            j["created"],
        )
        for j in page["jobs"]
    ]
    out.table(["id", "status", "progress", "errors", "model", "created"], rows, title=f"{page['total']} jobs")
