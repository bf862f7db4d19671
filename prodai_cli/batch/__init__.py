"""Batch inference over JSONL files: per-line errors, crash-safe resumable output, local and Ray engines."""

from __future__ import annotations

from prodai_cli.batch.engine import run_batch
from prodai_cli.batch.job import BatchJob, BatchSummary, ProgressUpdate
from prodai_cli.batch.reader import BadLine, Record, read_records
from prodai_cli.batch.writer import ResumableWriter
from prodai_cli.errors import ErrorRateExceededError, ResumeRefusedError

__all__ = [
    "BadLine",
    "BatchJob",
    "BatchSummary",
    "ErrorRateExceededError",
    "ProgressUpdate",
    "Record",
    "ResumableWriter",
    "ResumeRefusedError",
    "read_records",
    "run_batch",
]
