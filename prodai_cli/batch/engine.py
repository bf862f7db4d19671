"""``prodai batch``: check the job, open its resumable output, run an engine over it, summarise.

:func:`run_batch` is the entry point. The local engine here runs the model in this process; the Ray engine
(:mod:`prodai_cli.batch.ray_engine`) runs the same runtime in Ray Data actors. Both get an
:class:`~prodai_cli.batch.job.EngineRun` and commit through it, so outputs, errors files, manifests and
resume behave identically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.batch.job import (
    BatchJob,
    BatchSummary,
    Chunk,
    EngineRun,
    ProgressCallback,
    calibration_sample,
    encode_chunk,
    iter_chunks,
    pinned_model,
    set_threads,
)
from prodai_cli.batch.phases import PhaseTimer
from prodai_cli.batch.reader import check_readable, fingerprint
from prodai_cli.batch.writer import ResumableWriter
from prodai_cli.errors import ErrorRateExceededError, UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.runtime import ModelRuntime


# A sort window (batch.sort_chunks) also closes once its texts hold this many characters, so long lines (up
# to batch.max_line_bytes each) cannot make a window hold several chunks of them in memory.
WINDOW_MAX_CHARS = 64 * 1024 * 1024


def _identity(job: BatchJob, fingerprint_sha: str, model: dict[str, Any], max_length: int | None) -> dict[str, Any]:
    # Only what changes the output: device and batch size do not (beyond float noise), so they may change
    # between a crash and the resume.
    return {
        "input": {"sha256": fingerprint_sha},
        "model": model,
        "settings": {
            "text_field": job.text_field,
            "id_field": job.id_field,
            "max_tokens": max_length,
            "precision": job.precision,
        },
    }


def _model_identity(job: BatchJob, settings: Settings | None) -> dict[str, Any]:
    """Name and version of the model without loading it (a local directory is fingerprinted instead)."""
    from prodai_cli.runtime.model import ModelSource, locate_model

    path = Path(job.model).expanduser()
    if path.is_dir():
        from prodai_cli.registry import detect_task

        source: ModelSource = locate_model(path, settings)
        return {
            "name": source.name,
            "version": "local",
            "task": detect_task(source.model_dir),
            "fingerprint": _dir_fingerprint(source.model_dir),
        }
    from prodai_cli.refs import parse_model_ref
    from prodai_cli.registry import Registry

    if settings is None:
        from prodai_cli.config import load_settings

        settings = load_settings()
    registry = Registry(settings)
    ref = parse_model_ref(job.model)
    # A pinned version already cached needs no registry at all (its files are checked when they load);
    # anything else is looked up, in the SQLite file directly when the registry is the embedded one.
    cached = registry.cached(ref.name, ref.version, verify=False) if ref.version is not None else None
    info = cached.info if cached is not None else registry.get_version(ref)
    return {"name": info.name, "version": str(info.version), "task": info.task}


def _dir_fingerprint(model_dir: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for item in sorted(model_dir.iterdir()):
        if item.is_file():
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()[:16]


def parse_batch_size(value: int | str) -> int | str:
    """``auto`` or a positive integer (texts per forward pass)."""
    if isinstance(value, int) or str(value).strip().isdigit():
        number = int(value)
        if number < 1:
            raise UsageError(f"--batch-size must be auto or a positive integer, got {value}")
        return number
    if str(value).strip().lower() == "auto":
        return "auto"
    raise UsageError(f"--batch-size must be auto or a positive integer, got {value!r}")


def run_batch(
    job: BatchJob,
    settings: Settings | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    on_status: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Run (or resume) a batch job to completion.

    Args:
        job: What to run.
        settings: Settings for registry access.
        on_progress: Called after each committed chunk.
        on_status: Called with short phase messages (loading, calibrating...).

    Returns:
        The summary of the whole job (counts include lines done by earlier, interrupted runs).

    Raises:
        InputError: The input cannot be read (raised before any model loads).
        ResumeRefusedError: The output exists for another input, model version or settings.
        ThresholdError: The job finished but more lines than ``max_error_rate`` were bad.

    """
    from prodai_cli.runtime.device import check_precision, resolve_device

    # Wall time starts before any work, so the phases below account for all of it (a test holds them to 5%).
    started = time.perf_counter()
    timer = PhaseTimer()
    status = on_status or (lambda _message: None)
    with timer.phase("checks"):
        batch_size = parse_batch_size(job.batch_size)
        if job.engine not in ("local", "ray"):
            raise UsageError(f"Unknown engine {job.engine!r}", hint="Use local or ray")
        if job.max_tokens is not None and job.max_tokens < 2:
            raise UsageError(f"--max-tokens must be at least 2, got {job.max_tokens}")
    with timer.phase("device"):
        device = resolve_device(job.device)
        check_precision(job.precision, device)
    with timer.phase("checks"):
        check_readable(job.input)
        output = job.output_path
        if output.resolve() == job.input.resolve():
            raise UsageError("The output file must not be the input file")
    with timer.phase("fingerprint"):
        input_print = fingerprint(job.input)
    with timer.phase("registry"):
        model_identity = _model_identity(job, settings)
    with timer.phase("open_output"):
        identity = _identity(job, input_print.sha256, model_identity, job.max_tokens)
        writer = ResumableWriter(output, identity, restart=job.restart)
        progress = writer.open()
    failed = True
    try:
        resumed_from = progress.lines_done
        items_before = progress.items
        runtime_info: dict[str, Any]
        lines_total = input_print.lines
        if progress.lines_done >= lines_total:
            runtime_info = {"task": "", "device": device, "precision": job.precision, "max_batch_tokens": None}
        else:
            run = EngineRun(
                job, settings, writer, model_identity, device, batch_size, lines_total, started, on_progress, status
            )
            if job.engine == "ray":
                from prodai_cli.batch.ray_engine import run_chunks_on_ray

                with timer.phase("ray"):
                    runtime_info = run_chunks_on_ray(run)
            else:
                runtime_info = _run_local(run, timer)
        with timer.phase("finish"):
            writer.finish()
        failed = False
    finally:
        with timer.phase("finish"):
            writer.close()
            if failed:
                writer.discard_if_unused()  # a job refused before its first commit leaves no files
    wall = time.perf_counter() - started
    progress = writer.progress
    this_run = progress.items - items_before
    total_inputs = progress.items + progress.errors
    error_rate = progress.errors / total_inputs if total_inputs else 0.0
    summary = BatchSummary(
        input=str(job.input),
        output=str(output),
        errors_file=str(writer.errors_path),
        model=str(model_identity["name"]),
        model_version=str(model_identity["version"]),
        task=str(runtime_info.get("task") or model_identity.get("task") or ""),
        engine=job.engine,
        device=str(runtime_info.get("device", device)),
        precision=job.precision,
        items=progress.items,
        errors=progress.errors,
        truncated=progress.truncated,
        tokens=progress.tokens,
        lines=input_print.lines,
        resumed_from_line=resumed_from,
        items_this_run=this_run,
        wall_s=round(wall, 3),
        items_per_s=round(this_run / wall, 2) if wall > 0 else 0.0,
        tokens_per_s=round(float(runtime_info.get("tokens_this_run", 0)) / wall, 1) if wall > 0 else 0.0,
        error_rate=round(error_rate, 6),
        max_batch_tokens=runtime_info.get("max_batch_tokens"),
        batch_size=batch_size if isinstance(batch_size, int) else None,
        phases=timer.to_dict(),
        extra={key: runtime_info[key] for key in ("calibration", "first_forward_s", "trace") if key in runtime_info},
    )
    if error_rate > job.max_error_rate:
        raise ErrorRateExceededError(
            f"{progress.errors} of {total_inputs} input lines were bad ({error_rate:.2%}), above the "
            f"--max-error-rate of {job.max_error_rate:.2%}; see {writer.errors_path}",
            summary,
        )
    return summary


def _load(job: BatchJob, settings: Settings | None, device: str, model: dict[str, Any]) -> ModelRuntime:
    from prodai_cli.runtime import load_runtime

    trace_dir = None
    if job.trace:
        if settings is None:
            from prodai_cli.config import load_settings

            settings = load_settings()
        trace_dir = settings.state_dir / "traces"
    return load_runtime(
        pinned_model(job, model),
        settings,
        device=device,
        precision=job.precision,
        max_length=job.max_tokens,
        trace_dir=trace_dir,
    )


def _run_local(run: EngineRun, timer: PhaseTimer | None = None) -> dict[str, Any]:
    from prodai_cli.runtime.model import Encoded

    timer = timer or PhaseTimer()
    job, device, batch_size = run.job, run.device, run.batch_size
    run.status(f"Loading {job.model} on {device} ({job.precision})")
    with timer.phase("load"):
        set_threads(job.threads)
        runtime = _load(job, run.settings, device, run.model)
    skip = run.writer.progress.lines_done
    calibration = "fixed"
    with timer.phase("calibrate"):
        if batch_size == "auto":
            calibration = _calibrate_cached(job, run.settings, runtime, run.model, device, skip, run.status)
        else:
            runtime.warmup()
    budget = runtime.max_batch_tokens if batch_size == "auto" else None
    size = batch_size if isinstance(batch_size, int) else None

    def encode(chunk: Chunk) -> tuple[Chunk, Any]:
        return encode_chunk(runtime.encode, chunk)

    chunks = iter_chunks(job, skip)
    # On an accelerator, tokenizing and parsing the next chunk overlaps the current forward passes; on
    # a CPU they would only compete with the model for the same cores.
    encoded_chunks = _prefetch(map(encode, chunks)) if device != "cpu" else map(encode, chunks)
    first_forward_s: float | None = None
    window_chunks = 1  # the first window is one chunk, so the first results (and progress) come at once
    while True:
        # Consecutive chunks (job.sort_chunks) are sorted by length together: the more texts a sort sees, the
        # closer the lengths in each forward pass (less padding, fuller passes). Each chunk is still committed
        # on its own, in input order, so resume and exactly-once work as before.
        window: list[tuple[Chunk, Any]] = []
        with timer.phase("read_tokenize"):  # with the prefetch thread: the wait for chunks, not their tokenising
            chars = 0
            while len(window) < window_chunks and chars < WINDOW_MAX_CHARS:
                pair = next(encoded_chunks, None)
                if pair is None:
                    break
                window.append(pair)
                chars += sum(len(record.text) for record in pair[0].records)
        if not window:
            break
        window_chunks = job.sort_chunks
        if first_forward_s is None:
            first_forward_s = round(time.perf_counter() - run.started, 3)  # the fixed cost a job pays
        with timer.phase("forward"):
            merged = Encoded.concat([encoded for _, encoded in window])
            predictions = runtime.predict_encoded(merged, max_batch_tokens=budget, max_batch_size=size)
        with timer.phase("write"):
            offset = 0
            for chunk, encoded in window:
                mine = predictions[offset : offset + len(encoded)]
                offset += len(encoded)
                outputs = [
                    run.output_line(record, prediction, cut)
                    for record, prediction, cut in zip(chunk.records, mine, encoded.truncated, strict=True)
                ]
                run.commit(chunk, outputs, truncated=sum(encoded.truncated), tokens=sum(encoded.lengths))
    trace = runtime.trace_state
    if trace == "eager":  # this job built the model class; store a trace so the next job loads in a blink
        run.status("Keeping a checked trace of the model for the next job")
        with timer.phase("trace"):
            try:
                trace = runtime.keep_trace(calibration_sample(job, skip))
            except Exception as exc:  # the job's output is complete: a trace must never fail it
                logging.getLogger(__name__).info("Could not keep a trace of %s: %s", job.model, exc)
                trace = "failed"
    return {
        **runtime.describe(),
        "tokens_this_run": run.tokens_this_run,
        "max_batch_tokens": budget,
        "calibration": calibration,
        "first_forward_s": first_forward_s,
        "trace": trace,
    }


def _calibrate_cached(
    job: BatchJob,
    settings: Settings | None,
    runtime: ModelRuntime,
    model: dict[str, Any],
    device: str,
    skip: int,
    status: Callable[[str], None],
) -> str:
    """Reuse a budget calibrated for this model version, precision and machine, else calibrate and keep it."""
    from prodai_cli.batch import calibration_cache

    if settings is None:
        from prodai_cli.config import load_settings

        settings = load_settings()
    sample = calibration_sample(job, skip)
    key = calibration_cache.cache_key(
        model, job.precision, device, runtime.compute_threads(), runtime.encode(sample).lengths
    )
    path = settings.state_dir / "calibration.json"
    cached = calibration_cache.lookup(path, key)
    if cached is not None:
        runtime.max_batch_tokens = cached
        runtime.warmup()  # still pay the first-call setup outside the timed forward passes
        return "cached"
    status("Calibrating the batch size")
    calibration_cache.store(path, key, runtime.calibrate(sample))
    return "measured"


def _prefetch(items: Iterator[Any]) -> Iterator[Any]:
    """Produce the next item in a background thread while the caller works on the current one."""
    import queue

    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def worker() -> None:
        try:
            for item in items:
                box.put((True, item))
        except BaseException as exc:  # handed to the consumer, re-raised there
            box.put((False, exc))
            return
        box.put((False, None))

    threading.Thread(target=worker, daemon=True, name="prodai-prefetch").start()
    while True:
        ok, item = box.get()
        if not ok:
            if item is not None:
                raise item
            return
        yield item
