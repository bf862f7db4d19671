"""Issue 13: hostile input lines never stop `prodai batch`: each is one errors-file line, every good line is
predicted exactly once, and the exit code follows --max-error-rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from prodai_cli.batch.reader import BadLine, LineLimits, Record, read_records

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# line content (bytes, written verbatim) -> the start of the reason the errors file must give
HOSTILE: list[tuple[bytes, str]] = [
    (b'{"id": "s1", "text": "\\ud800"}', "a string holds a lone UTF-16 surrogate"),
    (b'{"id": "s2", "text": "ok \\udfff there"}', "a string holds a lone UTF-16 surrogate"),
    (b'{"id": "\\ud83d", "text": "surrogate id"}', "a string holds a lone UTF-16 surrogate"),
    (b'{"id": "n1", "text": "fine", "extra": ' + b"9" * 4301 + b"}", "a number has more than 100 digits"),
    (b'{"id": "n2", "text": "fine", "extra": -' + b"1" * 150 + b"}", "a number has more than 100 digits"),
    (b'{"id": "d1", "text": "fine", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "nested too deeply"),
    (b'{"id": "d2", "text": "fine", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply"),
    (b'{"id": "u1", "text": "caf\xe9"}', "not valid UTF-8"),
    (b"\xff\xfe\x00garbage", "not valid UTF-8"),
    (b'{"id": "big", "text": "' + b"a" * (5 * 1024 * 1024) + b'"}', "line longer than 1048576 bytes"),
    (b'["an", "array"]', "not a JSON object (got array)"),
    (b"42", "not a JSON object (got number)"),
    (b'"just a string"', "not a JSON object (got string)"),
    (b"null", "not a JSON object (got null)"),
    (b'{"id": "e1", "text": ""}', "empty text"),
    (b'{"id": "e2", "text": "   \\t  "}', "empty text"),
    (b'{"id": "e3", "text": "\\u0000\\u0000"}', "empty text"),
    (b'{"id": "t1", "text": 17}', "text field 'text' must be a string"),
    (b'{"id": "t2", "text": ["a"]}', "text field 'text' must be a string"),
    (b'{"id": "m1"}', "missing text field 'text'"),
    (b'{"id": "j1", "text": "unterminated', "not valid JSON"),
    (b'{"id": 1.5, "text": "float id"}', "id field 'id' must be a string or integer"),
    (b'{"id": "g5", "text": "a duplicate of a good id"}', "duplicate id 'g5'"),
]


def build_corpus(path: Path, good: int = 1000) -> tuple[dict[int, str], dict[int, str]]:
    """Good lines with hostile ones (and blank lines) mixed in; returns line -> id and line -> reason."""
    good_lines: dict[int, str] = {}
    bad_lines: dict[int, str] = {}
    hostile = iter(HOSTILE)
    line = 0
    with open(path, "wb") as handle:
        for index in range(good):
            if index % 40 == 20:
                raw, reason = next(hostile, (b"", ""))
                if raw:
                    line += 1
                    handle.write(raw + b"\n")
                    bad_lines[line] = reason
            if index % 97 == 50:
                line += 1
                handle.write(b"   \n")  # a blank line: not an input, not an error
            line += 1
            handle.write(json.dumps({"id": f"g{index}", "text": f"good movie number {index}"}).encode() + b"\n")
            good_lines[line] = f"g{index}"
        for raw, reason in hostile:
            line += 1
            handle.write(raw + b"\n")
            bad_lines[line] = reason
    return good_lines, bad_lines


def test_the_reader_turns_every_hostile_line_into_a_reason(tmp_path: Path) -> None:
    good, bad = build_corpus(tmp_path / "in.jsonl", good=100)
    items = list(read_records(tmp_path / "in.jsonl", limits=LineLimits()))
    records = {i.line: i.id for i in items if isinstance(i, Record)}
    reasons = {i.line: i.reason for i in items if isinstance(i, BadLine)}
    assert records == good
    assert set(reasons) == set(bad)
    for line, expected in bad.items():
        assert reasons[line].startswith(expected), (line, reasons[line])
    # Every reason and preview can be written to the (UTF-8) errors file.
    for item in items:
        if isinstance(item, BadLine):
            json.dumps(item.to_dict(), ensure_ascii=False).encode("utf-8")


@pytest.mark.slow
def test_a_corpus_of_hostile_lines_never_stops_the_job(registered_copy: Path) -> None:
    good, bad = build_corpus(registered_copy / "in.jsonl")
    assert len(bad) >= 20 and len(good) == 1000

    def run(*extra: str) -> tuple[int, str]:
        result = run_cli(
            "--json", "batch", "in.jsonl", "--model", "clf@production", "-o", "out.jsonl", "--device", "cpu",
            *extra, cwd=registered_copy, env=ONE_THREAD,
        )  # fmt: skip
        return result.exit_code, result.stderr

    # 23 bad of 1,023 inputs is 2.2%: over the default 1% the job still finishes, then exits 1.
    code, stderr = run("--restart")
    assert code == 1 and "above the --max-error-rate" in stderr, stderr
    code, stderr = run("--restart", "--max-error-rate", "0.05")
    assert code == 0, stderr
    out = [json.loads(line) for line in (registered_copy / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["line"] for r in out) == sorted(good)  # every good line exactly once, nothing else
    assert {r["line"]: r["id"] for r in out} == good
    errors = [json.loads(line) for line in (registered_copy / "out.errors.jsonl").read_text().splitlines()]
    assert sorted(e["line"] for e in errors) == sorted(bad)
    for entry in errors:
        assert entry["error"].startswith(bad[entry["line"]]), entry
