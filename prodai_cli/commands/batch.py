"""prodai batch: run a registered model over a JSONL file, resumably, with per-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prodai_cli.commands._common import JsonOption, console
from prodai_cli.commands._common import settings as project_settings

if TYPE_CHECKING:
    from prodai_cli.batch import BatchSummary
    from prodai_cli.config import Settings
    from prodai_cli.console import Console


def command(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Argument(metavar="INPUT.jsonl", help="JSONL file, one object per line.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output JSONL (default: INPUT.predictions.jsonl).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="NAME, NAME@ALIAS, NAME/VERSION or a model directory.")
    ] = None,
    text_field: Annotated[str | None, typer.Option("--text-field", help="Field holding the text.")] = None,
    id_field: Annotated[str | None, typer.Option("--id-field", help="Field holding the id (else line number).")] = None,
    batch_size: Annotated[
        str | None, typer.Option("--batch-size", help="auto (calibrated token budget) or texts per forward pass.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Truncate texts to N tokens.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, bf16 or fp16 (GPU only).")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="local, or ray (Ray Data actors).")] = None,
    ray_actors: Annotated[int | None, typer.Option("--ray-actors", min=1, help="Model replicas with ray.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads (default 1/core).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Resume an interrupted job, or discard it and start over.")
    ] = True,
    max_error_rate: Annotated[
        float | None, typer.Option("--max-error-rate", min=0.0, max=1.0, help="Exit 1 above this share of bad lines.")
    ] = None,
    json_flag: JsonOption = False,
) -> None:
    """Predict every line of INPUT.jsonl; bad lines go to OUTPUT.errors.jsonl; rerun to resume after a crash.

    Example: prodai batch reviews.jsonl -o scored.jsonl --model sentiment@production
    """
    from prodai_cli.batch import BatchJob, ErrorRateExceededError
    from prodai_cli.batch.reader import LineLimits
    from prodai_cli.errors import UsageError

    out = console(ctx, json_flag)
    settings = project_settings(ctx)
    defaults = settings.config.batch
    model = model or settings.config.registry.default_model
    if not model:
        raise UsageError("No model given", hint="Pass --model NAME@ALIAS or set registry.default_model")
    job = BatchJob(
        input=input_path,
        output=output,
        model=model,
        text_field=text_field or defaults.text_field,
        id_field=id_field or defaults.id_field,
        batch_size=batch_size or defaults.batch_size,
        max_tokens=max_tokens if max_tokens is not None else defaults.max_tokens,
        device=device or defaults.device,
        precision=precision or defaults.precision,
        engine=engine or defaults.engine,
        restart=not resume,
        max_error_rate=max_error_rate if max_error_rate is not None else defaults.max_error_rate,
        chunk_size=defaults.chunk_size,
        sort_chunks=defaults.sort_chunks,
        ray_actors=ray_actors or defaults.ray_actors,
        threads=threads or defaults.threads,
        line_limits=LineLimits(
            max_line_bytes=defaults.max_line_bytes,
            max_depth=defaults.max_json_depth,
            max_number_digits=defaults.max_json_number_digits,
        ),
        trace=defaults.trace,
    )
    try:
        summary = _run_with_progress(out, job, settings)
    except ErrorRateExceededError as exc:
        _render(out, exc.summary)
        raise
    _render(out, summary)


def _run_with_progress(out: Console, job: Any, settings: Settings) -> BatchSummary:
    from rich.progress import TextColumn

    from prodai_cli.batch import ProgressUpdate, run_batch

    progress = out.progress(TextColumn("{task.fields[rates]}"))
    task = progress.add_task("batch", total=None, rates="")

    def on_progress(update: ProgressUpdate) -> None:
        rate = update.items / update.elapsed_s if update.elapsed_s > 0 else 0.0
        tokens = update.tokens / update.elapsed_s if update.elapsed_s > 0 else 0.0
        rates = f"{rate:,.0f} items/s {tokens:,.0f} tok/s"
        progress.update(task, completed=update.lines_done, total=update.lines_total, rates=rates)

    def on_status(message: str) -> None:
        progress.update(task, description=message)

    with progress:
        summary = run_batch(job, settings, on_progress=on_progress, on_status=on_status)
        progress.update(task, description="done")
    return summary


# What `trace` in the summary means (docs/batch.md, "Little fixed cost per job").
TRACE_STATES = {
    "traced": "loaded a stored trace, not the model class",
    "stored": "ran the model and stored a checked trace for the next job",
    "known": "ran the model; a trace was stored or refused before",
    "refused": "ran the model; its trace did not reproduce its outputs, so none is kept",
    "failed": "ran the model; could not trace it or write the trace",
    "off": "batch.trace is false",
}


def _render(out: Console, summary: BatchSummary) -> None:
    data = summary.to_dict()
    out.result(data)
    if summary.phases:
        # -v: where the wall time went, so fixed cost (registry, load, calibration) is visible per job.
        out.debug("phases: " + "  ".join(f"{name} {seconds:.2f}s" for name, seconds in summary.phases.items()))
    trace = summary.extra.get("trace")
    if trace:
        out.debug(f"model trace: {trace} ({TRACE_STATES.get(str(trace), 'see docs/batch.md')})")
    if out.json_mode:
        return
    resumed = f", resumed at line {summary.resumed_from_line}" if summary.resumed_from_line else ""
    out.success(f"Wrote {summary.items} predictions to {summary.output}{resumed}")
    out.info(
        f"items {summary.items}  errors {summary.errors} ({summary.error_rate:.2%})  truncated {summary.truncated}\n"
        f"model {summary.model} v{summary.model_version}  engine {summary.engine}  device {summary.device}  "
        f"precision {summary.precision}\n"
        f"{summary.items_per_s:,.1f} items/s  {summary.tokens_per_s:,.0f} tokens/s  wall {summary.wall_s:.1f}s"
        + (f"\nerrors: {summary.errors_file}" if summary.errors else "")
    )
