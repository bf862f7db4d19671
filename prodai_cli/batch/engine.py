"""``prodai batch``'s job: read JSONL, predict in chunks, commit each chunk durably, summarise.

The local engine runs the model in this process; the Ray engine (:mod:`prodai_cli.batch.ray_engine`) runs
the same runtime in Ray Data actors. Both read and write through the same reader and writer, so outputs,
errors files, manifests and resume behave identically.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.batch.phases import PhaseTimer
from prodai_cli.batch.reader import BadLine, Record, check_readable, default_output_path, fingerprint, read_records
from prodai_cli.batch.writer import ResumableWriter
from prodai_cli.errors import ThresholdError, UsageError

if TYPE_CHECKING:
    from prodai_cli.config import Settings
    from prodai_cli.runtime import ModelRuntime

CALIBRATION_SAMPLE = 256


@dataclass(frozen=True)
class BatchJob:
    """Everything one ``prodai batch`` run needs (defaults mirror prodai.yaml's ``batch`` section)."""

    input: Path
    model: str
    output: Path | None = None
    text_field: str = "text"
    id_field: str = "id"
    batch_size: int | str = "auto"
    max_tokens: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    engine: str = "local"
    restart: bool = False
    max_error_rate: float = 0.01
    chunk_size: int = 1024
    ray_actors: int = 1
    threads: int | None = None

    @property
    def output_path(self) -> Path:
        """The output file (default: ``INPUT.predictions.jsonl`` beside the input)."""
        return self.output if self.output is not None else default_output_path(self.input)


@dataclass
class ProgressUpdate:
    """Sent to the progress callback after every committed chunk."""

    lines_done: int
    lines_total: int
    items: int
    tokens: int
    elapsed_s: float


@dataclass
class BatchSummary:
    """The outcome of a batch job (printed as the summary, and as JSON with ``--json``)."""

    input: str
    output: str
    errors_file: str
    model: str
    model_version: str
    task: str
    engine: str
    device: str
    precision: str
    items: int
    errors: int
    truncated: int
    tokens: int
    lines: int
    resumed_from_line: int
    items_this_run: int
    wall_s: float
    items_per_s: float
    tokens_per_s: float
    error_rate: float
    max_batch_tokens: int | None
    batch_size: int | None
    status: str = "complete"
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data


class ErrorRateExceededError(ThresholdError):
    """The job finished, every good line was predicted, but too many lines were bad."""

    def __init__(self, message: str, summary: BatchSummary) -> None:
        super().__init__(message, hint="The good lines were all predicted; fix the input or raise --max-error-rate")
        self.summary = summary


@dataclass
class Chunk:
    """A run of consecutive input lines: the valid ones to predict and the bad ones to report."""

    end_line: int
    records: list[Record]
    bad: list[BadLine]


ProgressCallback = Callable[[ProgressUpdate], None]
PredictFn = Callable[[list[str]], tuple[list[dict[str, Any]], list[bool], list[int]]]


def iter_chunks(job: BatchJob, skip_lines: int) -> Iterator[Chunk]:
    """Group the input after ``skip_lines`` into chunks of ``job.chunk_size`` lines (any kind)."""
    records: list[Record] = []
    bad: list[BadLine] = []
    count = 0
    line = 0
    for line, item in enumerate(read_records(job.input, text_field=job.text_field, id_field=job.id_field), start=1):
        if line <= skip_lines:
            continue  # done in an earlier run; read only so duplicate ids are still recognised
        if isinstance(item, Record):
            records.append(item)
        elif isinstance(item, BadLine):
            bad.append(item)
        count += 1
        if count >= job.chunk_size:
            yield Chunk(line, records, bad)
            records, bad, count = [], [], 0
    if count:
        yield Chunk(line, records, bad)


def output_line(record: Record, prediction: dict[str, Any], truncated: bool, model: str, version: str) -> str:
    """One output JSON line: id, line number, the prediction, truncation and the model that made it."""
    return json.dumps(
        {"id": record.id, "line": record.line, **prediction, "truncated": truncated, "model": model,
         "model_version": version},
        ensure_ascii=False,
    )


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
    from prodai_cli.registry import Registry

    if settings is None:
        from prodai_cli.config import load_settings

        settings = load_settings()
    info = Registry(settings).get_version(job.model)
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
    try:
        resumed_from = progress.lines_done
        items_before = progress.items
        runtime_info: dict[str, Any]
        lines_total = input_print.lines
        if progress.lines_done >= lines_total:
            runtime_info = {"task": "", "device": device, "precision": job.precision, "max_batch_tokens": None}
        elif job.engine == "ray":
            from prodai_cli.batch.ray_engine import run_chunks_on_ray

            with timer.phase("ray"):
                runtime_info = run_chunks_on_ray(
                    job, settings, writer, model_identity, device, batch_size, lines_total, started, on_progress,
                    status,
                )
        else:
            runtime_info = _run_local(
                job, settings, writer, model_identity, device, batch_size, lines_total, started, on_progress, status,
                timer,
            )
        with timer.phase("finish"):
            writer.finish()
    finally:
        with timer.phase("finish"):
            writer.close()
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
        extra={"calibration": runtime_info["calibration"]} if "calibration" in runtime_info else {},
    )
    if error_rate > job.max_error_rate:
        raise ErrorRateExceededError(
            f"{progress.errors} of {total_inputs} input lines were bad ({error_rate:.2%}), above the "
            f"--max-error-rate of {job.max_error_rate:.2%}; see {writer.errors_path}",
            summary,
        )
    return summary


def pinned_model(job: BatchJob, model: dict[str, Any]) -> str:
    """The exact version the manifest recorded (``NAME/VERSION``), so an alias moving mid-job changes nothing."""
    return job.model if model["version"] == "local" else f"{model['name']}/{model['version']}"


def _load(job: BatchJob, settings: Settings | None, device: str, model: dict[str, Any]) -> ModelRuntime:
    from prodai_cli.runtime import load_runtime

    return load_runtime(
        pinned_model(job, model), settings, device=device, precision=job.precision, max_length=job.max_tokens
    )


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads for this process (None keeps torch's default of one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def calibration_sample(job: BatchJob, skip_lines: int, size: int = CALIBRATION_SAMPLE) -> list[str]:
    """The first ``size`` valid texts after ``skip_lines`` (what the job is about to predict)."""
    texts: list[str] = []
    for chunk in iter_chunks(job, skip_lines):
        texts.extend(r.text for r in chunk.records[: size - len(texts)])
        if len(texts) >= size:
            break
    return texts


def _run_local(
    job: BatchJob,
    settings: Settings | None,
    writer: ResumableWriter,
    model: dict[str, Any],
    device: str,
    batch_size: int | str,
    lines_total: int,
    started: float,
    on_progress: ProgressCallback | None,
    status: Callable[[str], None],
    timer: PhaseTimer | None = None,
) -> dict[str, Any]:
    timer = timer or PhaseTimer()
    status(f"Loading {job.model} on {device} ({job.precision})")
    with timer.phase("load"):
        set_threads(job.threads)
        runtime = _load(job, settings, device, model)
    name, version = str(model["name"]), str(model["version"])
    skip = writer.progress.lines_done
    calibration = "fixed"
    with timer.phase("calibrate"):
        if batch_size == "auto":
            calibration = _calibrate_cached(job, settings, runtime, model, device, skip, status)
        else:
            runtime.warmup()
    budget = runtime.max_batch_tokens if batch_size == "auto" else None
    size = batch_size if isinstance(batch_size, int) else None
    tokens_this_run = 0

    def encode(chunk: Chunk) -> tuple[Chunk, Any]:
        return chunk, runtime.encode([r.text for r in chunk.records])

    chunks = iter_chunks(job, skip)
    # On an accelerator, tokenizing and parsing the next chunk overlaps the current forward passes; on
    # a CPU they would only compete with the model for the same cores.
    encoded_chunks = _prefetch(map(encode, chunks)) if device != "cpu" else map(encode, chunks)
    while True:
        # With the prefetch thread this is the wait for the next chunk, not its whole tokenising time.
        with timer.phase("read_tokenize"):
            pair = next(encoded_chunks, None)
        if pair is None:
            break
        chunk, encoded = pair
        with timer.phase("forward"):
            predictions = runtime.predict_encoded(encoded, max_batch_tokens=budget, max_batch_size=size)
        with timer.phase("write"):
            lengths = encoded.lengths
            outputs = [
                output_line(record, prediction, cut, name, version)
                for record, prediction, cut in zip(chunk.records, predictions, encoded.truncated, strict=True)
            ]
            errors = [json.dumps(bad.to_dict(), ensure_ascii=False) for bad in chunk.bad]
            writer.commit(
                lines_done=chunk.end_line, outputs=outputs, errors=errors, truncated=sum(encoded.truncated),
                tokens=sum(lengths),
            )
        tokens_this_run += sum(lengths)
        if on_progress is not None:
            p = writer.progress
            on_progress(ProgressUpdate(p.lines_done, lines_total, p.items, p.tokens, time.perf_counter() - started))
    return {
        **runtime.describe(), "tokens_this_run": tokens_this_run, "max_batch_tokens": budget,
        "calibration": calibration,
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
    import torch

    sample = calibration_sample(job, skip)
    key = calibration_cache.cache_key(
        model, job.precision, device, torch.get_num_threads(), runtime.encode(sample).lengths
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
