"""JSONL input for ``prodai batch``: one record per line, and a precise reason for every line that is not one.

A bad line never stops the job: it becomes a :class:`BadLine` (line number, reason, the start of the raw
text) that the writer puts in the errors file. Reading is deterministic, so a resumed job rebuilds exactly
the same set of seen ids by reading the done part of the file again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prodai_cli.errors import InputError
from prodai_cli.untrusted import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_NUMBER_DIGITS,
    UntrustedInputError,
    decode,
    is_blank,
    loads,
)

RAW_PREVIEW_CHARS = 200
DEFAULT_MAX_LINE_BYTES = 1_048_576
_SKIP_BLOCK = 1 << 16


@dataclass(frozen=True)
class LineLimits:
    """Bounds on one untrusted input line (``batch.max_line_bytes``, ``max_json_depth``, ``max_json_number_digits``)."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_number_digits: int = DEFAULT_MAX_NUMBER_DIGITS


@dataclass(frozen=True)
class Record:
    """A valid input line."""

    line: int
    id: str | int
    text: str


@dataclass(frozen=True)
class BadLine:
    """An input line that cannot be predicted, and why."""

    line: int
    reason: str
    raw: str
    id: str | int | None = None

    def to_dict(self) -> dict[str, object]:
        """The errors-file form."""
        data: dict[str, object] = {"line": self.line, "error": self.reason}
        if self.id is not None:
            data["id"] = self.id
        data["input"] = self.raw
        return data


@dataclass(frozen=True)
class InputFingerprint:
    """What identifies an input file's content (for the manifest) and how many lines it has."""

    sha256: str
    size: int
    lines: int


def check_readable(path: Path) -> None:
    """Fail early, before any model loads, when the input cannot be read.

    Raises:
        InputError: Missing, a directory, or unreadable.

    """
    if not path.exists():
        raise InputError(f"Input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"Input {path} is a directory, not a JSONL file")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputError(f"Cannot read input {path}: {exc.strerror or exc}") from None


def fingerprint(path: Path) -> InputFingerprint:
    """Hash the input and count its lines in one pass."""
    digest = hashlib.sha256()
    lines = 0
    size = 0
    last = b"\n"
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                lines += block.count(b"\n")
                size += len(block)
                last = block[-1:]
    except OSError as exc:
        raise InputError(f"Cannot read input {path}: {exc.strerror or exc}") from None
    if last != b"\n":
        lines += 1
    return InputFingerprint(sha256=digest.hexdigest(), size=size, lines=lines)


def read_records(
    path: Path, *, text_field: str = "text", id_field: str = "id", limits: LineLimits | None = None
) -> Iterator[Record | BadLine | None]:
    """Parse a JSONL file line by line.

    Yields one item per physical line, in order: a :class:`Record`, a :class:`BadLine`, or None for a blank
    line (blank lines are not inputs, but the caller counts them towards progress).

    A line is bad when it is longer than ``limits.max_line_bytes`` (it is skipped without being held in
    memory), is not valid UTF-8 or JSON or not within the JSON limits (:func:`prodai_cli.untrusted.loads`:
    depth, number digits, lone surrogates), is not an object, lacks the text field or holds a non-string or
    blank text there (:func:`prodai_cli.untrusted.is_blank`, the server's policy too), has an id that is not
    a string or integer, or repeats an id seen on an earlier valid line. Lines without the id field use their
    line number as id.
    """
    limits = limits or LineLimits()
    seen: dict[str, int] = {}
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below, across yields
    except OSError as exc:
        raise InputError(f"Cannot read input {path}: {exc.strerror or exc}") from None
    try:
        number = 0
        while raw_bytes := handle.readline(limits.max_line_bytes + 1):
            number += 1
            if len(raw_bytes) > limits.max_line_bytes and not raw_bytes.endswith(b"\n"):
                while (rest := handle.readline(_SKIP_BLOCK)) and not rest.endswith(b"\n"):
                    pass  # the rest of an over-long line, read and dropped block by block
                preview = raw_bytes[:RAW_PREVIEW_CHARS].decode("utf-8", errors="replace")
                yield BadLine(number, f"line longer than {limits.max_line_bytes} bytes", preview)
                continue
            yield _parse_line(number, raw_bytes, text_field, id_field, seen, limits)
    finally:
        handle.close()


def _parse_line(
    number: int, raw_bytes: bytes, text_field: str, id_field: str, seen: dict[str, int], limits: LineLimits
) -> Record | BadLine | None:
    stripped = raw_bytes.rstrip(b"\r\n")
    if not stripped.strip():
        return None
    try:
        raw = decode(stripped)
    except UntrustedInputError as exc:
        return BadLine(number, str(exc), stripped[:RAW_PREVIEW_CHARS].decode("utf-8", errors="replace"))
    preview = raw[:RAW_PREVIEW_CHARS]
    try:
        obj = loads(raw, max_depth=limits.max_depth, max_number_digits=limits.max_number_digits)
    except UntrustedInputError as exc:
        return BadLine(number, str(exc), preview)
    if not isinstance(obj, dict):
        return BadLine(number, f"not a JSON object (got {_json_type(obj)})", preview)
    record_id: str | int
    if id_field in obj:
        value = obj[id_field]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            reason = f"id field {id_field!r} must be a string or integer, got {_json_type(value)}"
            return BadLine(number, reason, preview)
        record_id = value
    else:
        record_id = number
    if text_field not in obj:
        return BadLine(number, f"missing text field {text_field!r}", preview, record_id)
    text = obj[text_field]
    if not isinstance(text, str):
        reason = f"text field {text_field!r} must be a string, got {_json_type(text)}"
        return BadLine(number, reason, preview, record_id)
    if is_blank(text):
        return BadLine(number, "empty text (only whitespace or control characters)", preview, record_id)
    key = json.dumps(record_id)
    first = seen.get(key)
    if first is not None:
        return BadLine(number, f"duplicate id {record_id!r} (first seen on line {first})", preview, record_id)
    seen[key] = number
    return Record(number, record_id, text)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def default_output_path(input_path: Path) -> Path:
    """``reviews.jsonl`` -> ``reviews.predictions.jsonl`` beside the input."""
    stem = input_path.name[: -len(".jsonl")] if input_path.name.endswith(".jsonl") else input_path.name
    return input_path.with_name(f"{stem}.predictions.jsonl")


def sibling(output: Path, suffix: str) -> Path:
    """``out.jsonl`` -> ``out.<suffix>`` (``out.errors.jsonl``, ``out.manifest.json``)."""
    name = output.name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return output.with_name(f"{stem}.{suffix}")


__all__ = [
    "BadLine",
    "InputFingerprint",
    "Record",
    "check_readable",
    "default_output_path",
    "fingerprint",
    "read_records",
    "sibling",
]
