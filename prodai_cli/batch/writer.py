"""Crash-safe, resumable output for ``prodai batch``: append, fsync, then record progress in a manifest.

Commit protocol, per chunk of input lines:

1. append the chunk's predictions to ``OUT.jsonl`` and its bad lines to ``OUT.errors.jsonl``; fsync both;
2. atomically replace ``OUT.manifest.json`` (temp file, fsync, rename, fsync the directory) with the new
   line count and the byte sizes of both files.

A crash (even ``kill -9``) at any point leaves the manifest describing a prefix of the output that is
complete and durable. Resuming truncates both files back to the sizes the manifest records (which removes a
torn last line and any uncommitted chunk) and carries on from the recorded input line, so every input ends
up in the output exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from filelock import BaseFileLock, FileLock, Timeout

from prodai_cli.batch.reader import sibling
from prodai_cli.errors import InputError, ResumeRefusedError, UsageError

MANIFEST_FORMAT = 1


@dataclass
class JobProgress:
    """What is durably done (the manifest's ``progress``)."""

    lines_done: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    items: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0


def _now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


class ResumableWriter:
    """The output, errors file and manifest of one batch job.

    Args:
        output: The output JSONL path.
        identity: What the output depends on (input hash, model version, settings); a resumed job must
            match it exactly.
        restart: Discard an existing output instead of resuming it.

    """

    def __init__(self, output: Path, identity: dict[str, Any], *, restart: bool = False) -> None:
        self.output = output
        self.errors_path = sibling(output, "errors.jsonl")
        self.manifest_path = sibling(output, "manifest.json")
        self.lock_path = output.with_name(f".{output.name}.lock")
        self.identity = identity
        self.restart = restart
        self.progress = JobProgress()
        self.resumed = False
        self.started = _now()
        self.runs = 1
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None
        self._lock: BaseFileLock | None = None
        # Files this run created from nothing, and whether it committed anything into them.
        self._created = False
        self._committed = False

    # ------------------------------------------------------------------------------------ opening
    def open(self) -> JobProgress:
        """Take the job lock, then resume (after checks) or start fresh; return what is already done.

        Raises:
            ResumeRefusedError: The existing output was made from another input, model or settings.
            UsageError: Another process is writing this output, or the output exists without a manifest.

        """
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            # filelock: flock(2) on POSIX like before, and portable; held for the job, released in close().
            self._lock = FileLock(self.lock_path)
            self._lock.acquire(blocking=False)
        except Timeout:
            self._lock = None
            raise UsageError(f"Another prodai batch is writing {self.output} right now") from None
        except OSError as exc:
            self._lock = None
            raise InputError(f"Cannot write beside {self.output}: {exc.strerror or exc}") from None
        try:
            self._open_files()
        except BaseException:
            self.close()
            raise
        return self.progress

    def _open_files(self) -> None:
        if self.restart:
            for path in (self.output, self.errors_path, self.manifest_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if self.manifest_path.exists():
            self._resume()
        else:
            if self.output.exists() and self.output.stat().st_size > 0:
                raise UsageError(
                    f"{self.output} exists but has no manifest ({self.manifest_path.name}), so it cannot be resumed",
                    hint="Pass --restart to overwrite it, or choose another output with -o",
                )
            for path in (self.output, self.errors_path):
                path.write_bytes(b"")
            self._created = True
            self._write_manifest("running")
        self._out = open(self.output, "ab")  # noqa: SIM115 - closed in close()
        self._err = open(self.errors_path, "ab")  # noqa: SIM115

    def _resume(self) -> None:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            progress = JobProgress(**manifest["progress"])
            recorded = {key: manifest[key] for key in self.identity}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeRefusedError(
                f"The manifest {self.manifest_path} is unreadable ({type(exc).__name__}), so the job cannot resume",
                hint="Pass --restart to start over",
            ) from None
        differences = _differences(recorded, self.identity)
        if differences:
            raise ResumeRefusedError(
                f"{self.output} was made from a different job, refusing to resume: {'; '.join(differences)}",
                hint="Pass --restart to discard it and start over, or choose another output with -o",
            )
        for path, size in ((self.output, progress.output_bytes), (self.errors_path, progress.errors_bytes)):
            actual = path.stat().st_size if path.exists() else -1
            if actual < size:
                raise ResumeRefusedError(
                    f"{path} is shorter than its manifest records ({max(actual, 0)} < {size} bytes)",
                    hint="It was edited or truncated after the job wrote it; pass --restart to start over",
                )
            if actual > size:
                # Bytes past the last commit: a torn line or a chunk whose commit never finished.
                with open(path, "r+b") as handle:
                    handle.truncate(size)
                    handle.flush()
                    os.fsync(handle.fileno())
        self.progress = progress
        self.resumed = progress.lines_done > 0 or manifest.get("status") == "complete"
        self.started = str(manifest.get("started") or self.started)
        self.runs = int(manifest.get("runs", 1)) + 1

    # ------------------------------------------------------------------------------------ writing
    def commit(
        self, *, lines_done: int, outputs: list[str], errors: list[str], truncated: int = 0, tokens: int = 0
    ) -> None:
        """Durably append one chunk and advance the manifest to ``lines_done`` input lines.

        Args:
            lines_done: Input lines (of any kind) fully handled after this chunk.
            outputs: Output JSON lines (without newlines), in input order.
            errors: Errors-file JSON lines, in input order.
            truncated: Inputs in this chunk that were cut to the model's max length.
            tokens: Tokens the model saw in this chunk.

        """
        assert self._out is not None and self._err is not None, "open() first"
        for handle, lines in ((self._out, outputs), (self._err, errors)):
            if lines:
                handle.write(("\n".join(lines) + "\n").encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        progress = self.progress
        progress.lines_done = lines_done
        progress.output_bytes = self._out.tell()
        progress.errors_bytes = self._err.tell()
        progress.items += len(outputs)
        progress.errors += len(errors)
        progress.truncated += truncated
        progress.tokens += tokens
        self._committed = True
        self._write_manifest("running")

    def finish(self) -> None:
        """Mark the job complete in the manifest."""
        self._write_manifest("complete")

    def close(self) -> None:
        """Close files and release the job lock."""
        for handle in (self._out, self._err):
            if handle is not None:
                handle.close()
        self._out = self._err = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            self._lock.release()
            self._lock = None

    def discard_if_unused(self) -> bool:
        """Remove the output, errors file and manifest if this run created them and committed nothing.

        A job refused after its output was opened (a Ray pool the cluster cannot place, a model that does
        not load) then leaves no files behind. Outputs of earlier runs are never touched.

        Returns:
            True when files were removed.

        """
        if not self._created or self._committed:
            return False
        for path in (self.manifest_path, self.output, self.errors_path):  # manifest first: never a dangling one
            with contextlib.suppress(OSError):
                path.unlink()
        return True

    def _write_manifest(self, status: str) -> None:
        from prodai_cli.config import write_atomic

        manifest = {
            "format": MANIFEST_FORMAT,
            "status": status,
            **self.identity,
            "progress": asdict(self.progress),
            "output": self.output.name,
            "errors_file": self.errors_path.name,
            "started": self.started,
            "updated": _now(),
            "runs": self.runs,
        }
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2) + "\n")


def _differences(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in current:
        now, before = current[key], recorded.get(key)
        if isinstance(now, dict) and isinstance(before, dict):
            out.extend(_differences(before, now, f"{prefix}{key}."))
        elif now != before:
            what = {"input.sha256": "the input file changed"}.get(f"{prefix}{key}")
            out.append(what or f"{prefix}{key} was {before!r}, now {now!r}")
    return out
