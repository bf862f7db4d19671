"""The JSONL reader: every kind of bad line gets its line number and reason; good lines get ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prodai_cli.batch.reader import (
    BadLine,
    Record,
    check_readable,
    default_output_path,
    fingerprint,
    read_records,
    sibling,
)
from prodai_cli.errors import InputError


def test_every_bad_line_kind_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "fine"}),  # 1
        "{not json",  # 2
        json.dumps(["a", "list"]),  # 3
        json.dumps({"id": "b"}),  # 4
        json.dumps({"id": "c", "text": 42}),  # 5
        json.dumps({"id": "d", "text": "   "}),  # 6
        json.dumps({"id": "a", "text": "again"}),  # 7 duplicate of line 1
        json.dumps({"id": 1.5, "text": "float id"}),  # 8
        "",  # 9 blank: not an input
        json.dumps({"text": "no id field"}),  # 10
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "e", "text": "\xff"}\n')  # 11 bad UTF-8
    items = list(read_records(path))
    assert len(items) == 11
    assert items[0] == Record(1, "a", "fine")
    assert items[8] is None
    assert items[9] == Record(10, 10, "no id field")
    bad = {item.line: item.reason for item in items if isinstance(item, BadLine)}
    assert bad == {
        2: "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)",
        3: "not a JSON object (got array)",
        4: "missing text field 'text'",
        5: "text field 'text' must be a string, got number",
        6: "empty text (only whitespace or control characters)",
        7: "duplicate id 'a' (first seen on line 1)",
        8: "id field 'id' must be a string or integer, got number",
        11: "not valid UTF-8 (byte 21)",
    }
    by_line = {item.line: item for item in items if isinstance(item, BadLine)}
    assert by_line[7].to_dict() == {
        "line": 7,
        "error": "duplicate id 'a' (first seen on line 1)",
        "id": "a",
        "input": lines[6],
    }
    assert "id" not in by_line[2].to_dict()


def test_custom_fields_and_integer_ids(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"key": 7, "body": "x"})
        + "\n"
        + json.dumps({"key": "7", "body": "y"})
        + "\n"
        + json.dumps({"key": 7, "body": "z"})
        + "\n",
        encoding="utf-8",
    )
    items = list(read_records(path, text_field="body", id_field="key"))
    assert items[0] == Record(1, 7, "x")
    assert items[1] == Record(2, "7", "y")  # the string "7" is a different id from the number 7
    assert isinstance(items[2], BadLine) and items[2].reason.startswith("duplicate id 7")


def test_unreadable_inputs_fail_early(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_readable(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="is a directory"):
        check_readable(tmp_path)


def test_fingerprint_counts_lines_and_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("a\nb\nc", encoding="utf-8")
    first = fingerprint(path)
    assert first.lines == 3
    path.write_text("a\nb\nc\n", encoding="utf-8")
    second = fingerprint(path)
    assert second.lines == 3
    assert second.sha256 != first.sha256


def test_output_names() -> None:
    assert default_output_path(Path("/d/reviews.jsonl")) == Path("/d/reviews.predictions.jsonl")
    assert sibling(Path("/d/out.jsonl"), "errors.jsonl") == Path("/d/out.errors.jsonl")
    assert sibling(Path("/d/out"), "manifest.json") == Path("/d/out.manifest.json")
