"""What both batch engines share: the job, its chunks, its output lines, progress and the run context.

The local engine (:mod:`prodai_cli.batch.engine`) and the Ray engine (:mod:`prodai_cli.batch.ray_engine`)
both import this module and neither imports the other's internals: :class:`EngineRun` is everything an
engine is handed, and :meth:`EngineRun.commit` is the one way either makes progress durable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.batch.reader import BadLine, LineLimits, Record, default_output_path, read_records
from prodai_cli.extras import installed

if TYPE_CHECKING:
    from prodai_cli.batch.writer import ResumableWriter
    from prodai_cli.config import Settings

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
    sort_chunks: int = 4
    ray_actors: int = 1
    threads: int | None = None
    line_limits: LineLimits = field(default_factory=LineLimits)
    trace: bool = True

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


@dataclass
class Chunk:
    """A run of consecutive input lines: the valid ones to predict and the bad ones to report."""

    end_line: int
    records: list[Record]
    bad: list[BadLine]


ProgressCallback = Callable[[ProgressUpdate], None]


def iter_chunks(job: BatchJob, skip_lines: int) -> Iterator[Chunk]:
    """Group the input after ``skip_lines`` into chunks of ``job.chunk_size`` lines (any kind)."""
    records: list[Record] = []
    bad: list[BadLine] = []
    count = 0
    line = 0
    items = read_records(job.input, text_field=job.text_field, id_field=job.id_field, limits=job.line_limits)
    for line, item in enumerate(items, start=1):
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
        {
            "id": record.id,
            "line": record.line,
            **prediction,
            "truncated": truncated,
            "model": model,
            "model_version": version,
        },
        ensure_ascii=False,
    )


def pinned_model(job: BatchJob, model: dict[str, Any]) -> str:
    """The exact version the manifest recorded (``NAME/VERSION``), so an alias moving mid-job changes nothing."""
    return job.model if model["version"] == "local" else f"{model['name']}/{model['version']}"


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads for this process (None keeps torch's default of one per core).

    Without torch (an install that runs ONNX versions only) there is nothing to pin: ONNX Runtime keeps its pool.
    """
    if threads and installed("torch"):
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


@dataclass
class EngineRun:
    """Everything an engine is handed for one run: the job and where its output goes.

    Attributes:
        job: What to run.
        settings: Settings for registry access (None: load them when needed).
        writer: The open, resumable output.
        model: The model's identity as the manifest records it (name, version, task).
        device: The resolved device.
        batch_size: ``auto`` or texts per forward pass.
        lines_total: Lines in the input (for progress).
        started: ``time.perf_counter()`` when the job started.
        on_progress: Called after each committed chunk.
        status: Called with short phase messages.

    """

    job: BatchJob
    settings: Settings | None
    writer: ResumableWriter
    model: dict[str, Any]
    device: str
    batch_size: int | str
    lines_total: int
    started: float
    on_progress: ProgressCallback | None
    status: Callable[[str], None]
    tokens_this_run: int = 0

    @property
    def pinned(self) -> str:
        """The exact model version to load (see :func:`pinned_model`)."""
        return pinned_model(self.job, self.model)

    def output_line(self, record: Record, prediction: dict[str, Any], truncated: bool) -> str:
        """One output line for ``record``, naming this run's model and version."""
        return output_line(record, prediction, truncated, str(self.model["name"]), str(self.model["version"]))

    def commit(self, chunk: Chunk, outputs: list[str], truncated: int, tokens: int) -> None:
        """Make ``chunk`` durable (its outputs and its bad lines), then report progress."""
        errors = [json.dumps(bad.to_dict(), ensure_ascii=False) for bad in chunk.bad]
        self.writer.commit(
            lines_done=chunk.end_line, outputs=outputs, errors=errors, truncated=truncated, tokens=tokens
        )
        self.tokens_this_run += tokens
        if self.on_progress is not None:
            p = self.writer.progress
            elapsed = time.perf_counter() - self.started
            self.on_progress(ProgressUpdate(p.lines_done, self.lines_total, p.items, p.tokens, elapsed))


def encode_chunk(encode: Callable[[list[str]], Any], chunk: Chunk) -> tuple[Chunk, Any]:
    """Tokenize a chunk's texts; a text the tokenizer refuses becomes that line's error, not the job's.

    The whole chunk is encoded at once (the fast path); only when that raises is each text tried alone,
    and the ones that fail move to ``chunk.bad`` with the tokenizer's reason.
    """
    try:
        return chunk, encode([r.text for r in chunk.records])
    except Exception:
        pass
    good: list[Record] = []
    bad = list(chunk.bad)
    for record in chunk.records:
        try:
            encode([record.text])
        except Exception as exc:
            reason = f"the tokenizer refused this text ({type(exc).__name__}: {str(exc)[:200]})"
            bad.append(BadLine(record.line, reason, record.text[:200], record.id))
        else:
            good.append(record)
    bad.sort(key=lambda item: item.line)
    fixed = Chunk(chunk.end_line, good, bad)
    return fixed, encode([r.text for r in good])
