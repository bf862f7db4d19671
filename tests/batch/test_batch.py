"""prodai batch end to end: both tasks, ids and order, the errors file, resume after crashes, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

from prodai_cli.batch import BatchJob, ErrorRateExceededError, ResumeRefusedError, run_batch
from prodai_cli.batch.engine import _prefetch
from prodai_cli.errors import InputError, UsageError
from prodai_cli.runtime import load_runtime

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
WORDS = ["hello", "world", "good", "bad", "movie", "great", "terrible", "the", "a", "is", "was", "not", "very"]


def make_texts(count: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Dicts are dumped; strings are written verbatim as raw lines."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must parse: a torn line fails the test here."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def job(tmp: Path, model: Path | str, **kwargs: Any) -> BatchJob:
    defaults: dict[str, Any] = {
        "input": tmp / "in.jsonl",
        "output": tmp / "out.jsonl",
        "device": "cpu",
        "max_error_rate": 0.5,
    }
    return BatchJob(model=str(model), **{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------ both tasks


def test_classification_job_keeps_order_and_ids(project: Path, tiny_classifier_dir: Path) -> None:
    texts = make_texts(60)
    rows = [{"id": f"doc-{i}", "text": t, "extra": i} for i, t in enumerate(texts)]
    write_jsonl(project / "in.jsonl", rows)
    summary = run_batch(job(project, tiny_classifier_dir, chunk_size=7, max_tokens=16))
    out = read_jsonl(project / "out.jsonl")
    assert [r["id"] for r in out] == [f"doc-{i}" for i in range(60)]
    assert [r["line"] for r in out] == list(range(1, 61))
    expected = load_runtime(tiny_classifier_dir, device="cpu", max_length=16).predict(texts)
    for got, want in zip(out, expected, strict=True):
        assert got["label"] == want["label"]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
        assert (got["model"], got["model_version"]) == (tiny_classifier_dir.name, "local")
    cut = [len(t.split()) + 2 > 16 for t in texts]  # one token per word here, plus [CLS] and [SEP]
    assert [r["truncated"] for r in out] == cut
    assert summary.truncated == sum(cut) > 0
    assert (summary.items, summary.errors, summary.task, summary.device) == (60, 0, "text-classification", "cpu")
    assert summary.max_batch_tokens is not None  # auto: calibrated
    manifest = json.loads((project / "out.manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["progress"]["lines_done"] == 60
    assert (project / "out.errors.jsonl").read_text() == ""


def test_embedding_job_without_id_field_uses_line_numbers(project: Path, tiny_embedder_dir: Path) -> None:
    texts = make_texts(25, seed=3)
    write_jsonl(project / "in.jsonl", [{"body": t} for t in texts])
    import torch

    summary = run_batch(job(project, tiny_embedder_dir, text_field="body", batch_size=4, chunk_size=10, threads=2))
    assert torch.get_num_threads() == 2  # --threads pins torch's CPU threads for the job
    torch.set_num_threads(1)
    out = read_jsonl(project / "out.jsonl")
    assert [r["id"] for r in out] == list(range(1, 26))
    expected = load_runtime(tiny_embedder_dir, device="cpu").predict(texts)
    for got, want in zip(out, expected, strict=True):
        assert len(got["embedding"]) == 32
        assert sum(a * b for a, b in zip(got["embedding"], want["embedding"], strict=True)) > 0.99999
    assert summary.task == "embedding"
    assert summary.batch_size == 4


def test_phases_add_up_to_the_wall_time(registered_copy: Path) -> None:
    write_jsonl(registered_copy / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(make_texts(300))])
    result = run_cli(
        "--json",
        "-v",
        "batch",
        "in.jsonl",
        "--model",
        "clf@production",
        "-o",
        "scored.jsonl",
        "--device",
        "cpu",
        cwd=registered_copy,
        env=ONE_THREAD,
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    phases = summary["phases"]
    for name in ("registry", "load", "calibrate", "read_tokenize", "forward", "write", "finish"):
        assert name in phases, phases
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["forward"] > 0
    # Every phase is timed on the one thread that runs the job, so together they are the job's wall time.
    assert sum(phases.values()) == pytest.approx(summary["wall_s"], rel=0.05)
    assert "phases: " in result.stderr and "forward" in result.stderr  # -v prints them too


def test_calibration_is_reused_for_the_same_model_and_machine(project: Path, tiny_classifier_dir: Path) -> None:
    write_jsonl(project / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(make_texts(80))])
    first = run_batch(job(project, tiny_classifier_dir))
    second = run_batch(job(project, tiny_classifier_dir, output=project / "again.jsonl"))
    assert first.extra["calibration"] == "measured"
    assert second.extra["calibration"] == "cached"
    assert second.max_batch_tokens == first.max_batch_tokens
    other = run_batch(job(project, tiny_classifier_dir, output=project / "long.jsonl", max_tokens=8))
    assert other.extra["calibration"] in ("measured", "cached")  # a changed setting never errors
    assert read_jsonl(project / "again.jsonl") == read_jsonl(project / "out.jsonl")


# ------------------------------------------------------------------------------------------ bad input


def test_bad_lines_go_to_the_errors_file_and_the_job_finishes(registered_copy: Path) -> None:
    rows: list[Any] = [{"id": i, "text": t} for i, t in enumerate(make_texts(40))]
    bad = {
        5: "{broken",
        9: json.dumps({"id": "no-text"}),
        14: json.dumps({"id": "n", "text": None}),
        20: json.dumps({"id": "e", "text": ""}),
        30: json.dumps({"id": 3, "text": "dup"}),
    }
    for line, raw in sorted(bad.items()):
        rows.insert(line - 1, raw)
    write_jsonl(registered_copy / "in.jsonl", rows)
    result = run_cli(
        "--json",
        "batch",
        "in.jsonl",
        "--model",
        "clf@production",
        "-o",
        "scored.jsonl",
        "--device",
        "cpu",
        "--max-error-rate",
        "0.2",
        cwd=registered_copy,
        env=ONE_THREAD,
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["items"], summary["errors"], summary["lines"]) == (40, 5, 45)
    assert summary["model_version"] == "1" and summary["model"] == "clf"
    out = read_jsonl(registered_copy / "scored.jsonl")
    assert [r["id"] for r in out] == list(range(40))
    assert {r["model_version"] for r in out} == {"1"}
    errors = read_jsonl(registered_copy / "scored.errors.jsonl")
    assert [e["line"] for e in errors] == [5, 9, 14, 20, 30]
    reasons = [e["error"] for e in errors]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1:] == [
        "missing text field 'text'",
        "text field 'text' must be a string, got null",
        "empty text (only whitespace or control characters)",
        "duplicate id 3 (first seen on line 4)",
    ]


def test_error_rate_above_the_limit_fails_after_finishing(project: Path, tiny_classifier_dir: Path) -> None:
    write_jsonl(project / "in.jsonl", [{"id": 1, "text": "good"}, "nope", {"id": 2, "text": "bad"}])
    with pytest.raises(ErrorRateExceededError, match=r"1 of 3 input lines were bad \(33.33%\)") as caught:
        run_batch(job(project, tiny_classifier_dir, max_error_rate=0.1))
    assert caught.value.exit_code == 1
    assert caught.value.summary.items == 2
    assert [r["id"] for r in read_jsonl(project / "out.jsonl")] == [1, 2]
    # The same through the CLI: exit 1, the summary still printed.
    result = run_cli(
        "batch",
        "in.jsonl",
        "--model",
        str(tiny_classifier_dir),
        "-o",
        "cli.jsonl",
        "--max-error-rate",
        "0.1",
        "--device",
        "cpu",
        cwd=project,
        env=ONE_THREAD,
    )
    assert result.exit_code == 1
    assert "above the --max-error-rate of 10.00%" in result.stderr
    assert "Wrote 2 predictions" in result.stdout


def test_missing_input_fails_before_any_model_loads(project: Path) -> None:
    # The model does not exist either: the input error must come first.
    result = run_cli("batch", "missing.jsonl", "--model", "nothing@here", cwd=project)
    assert result.exit_code == 1
    assert "Input file missing.jsonl does not exist" in result.stderr
    with pytest.raises(InputError, match="is a directory"):
        run_batch(BatchJob(input=project, model="nothing@here", device="cpu"))


def test_usage_errors(project: Path, tiny_classifier_dir: Path) -> None:
    write_jsonl(project / "in.jsonl", [{"text": "good"}])
    result = run_cli(
        "batch", "in.jsonl", "--model", str(tiny_classifier_dir), "--device", "cpu", "--precision", "fp16", cwd=project
    )
    assert result.exit_code == 2
    assert "Precision fp16 needs a GPU" in result.stderr
    with pytest.raises(UsageError, match="--batch-size must be auto or a positive integer"):
        run_batch(job(project, tiny_classifier_dir, batch_size="lots"))
    with pytest.raises(UsageError, match="Unknown engine"):
        run_batch(job(project, tiny_classifier_dir, engine="spark"))
    with pytest.raises(UsageError, match="must not be the input"):
        run_batch(job(project, tiny_classifier_dir, output=project / "in.jsonl"))
    result = run_cli("batch", "in.jsonl", cwd=project)
    assert result.exit_code == 2 and "No model given" in result.stderr


# ------------------------------------------------------------------------------------------ resume


def test_changed_input_model_or_settings_refuse_to_resume(
    project: Path, tiny_classifier_dir: Path, tiny_classifier_dir_b: Path
) -> None:
    write_jsonl(project / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(make_texts(10))])
    run_batch(job(project, tiny_classifier_dir))
    before = (project / "out.jsonl").read_bytes()
    with pytest.raises(ResumeRefusedError, match=r"model\.name was"):
        run_batch(job(project, tiny_classifier_dir_b))
    with pytest.raises(ResumeRefusedError, match=r"settings\.max_tokens was None, now 8"):
        run_batch(job(project, tiny_classifier_dir, max_tokens=8))
    with open(project / "in.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": 99, "text": "one more"}) + "\n")
    with pytest.raises(ResumeRefusedError, match="the input file changed") as caught:
        run_batch(job(project, tiny_classifier_dir))
    assert caught.value.exit_code == 2
    assert "--restart" in (caught.value.hint or "")
    assert (project / "out.jsonl").read_bytes() == before  # a refused resume touches nothing
    summary = run_batch(job(project, tiny_classifier_dir, restart=True))
    assert summary.items == 11 and summary.resumed_from_line == 0
    assert [r["id"] for r in read_jsonl(project / "out.jsonl")] == [*range(10), 99]


def test_alias_moved_to_another_version_refuses_to_resume(registered_copy: Path) -> None:
    from prodai_cli.config import load_settings
    from prodai_cli.registry import Registry

    write_jsonl(registered_copy / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(make_texts(12))])

    class Crash(Exception):
        pass

    def crash(update: Any) -> None:
        raise Crash

    with pytest.raises(Crash):
        run_batch(job(registered_copy, "clf@production", chunk_size=4), on_progress=crash)
    Registry(load_settings()).set_alias("clf", "production", 2)
    with pytest.raises(ResumeRefusedError, match=r"model\.version was '1', now '2'"):
        run_batch(job(registered_copy, "clf@production", chunk_size=4))
    summary = run_batch(job(registered_copy, "clf@production", chunk_size=4, restart=True))
    assert summary.model_version == "2"
    assert {r["model_version"] for r in read_jsonl(registered_copy / "out.jsonl")} == {"2"}


def test_output_without_manifest_is_not_overwritten(project: Path, tiny_classifier_dir: Path) -> None:
    write_jsonl(project / "in.jsonl", [{"text": "good"}])
    (project / "out.jsonl").write_text("precious\n")
    with pytest.raises(UsageError, match="has no manifest"):
        run_batch(job(project, tiny_classifier_dir))
    assert (project / "out.jsonl").read_text() == "precious\n"


def test_interrupted_job_resumes_exactly_once_and_repairs_a_torn_line(project: Path, tiny_classifier_dir: Path) -> None:
    rows: list[Any] = [{"id": i, "text": t} for i, t in enumerate(make_texts(50, seed=5))]
    rows.insert(17, "{torn input")
    write_jsonl(project / "in.jsonl", rows)
    reference = run_batch(job(project, tiny_classifier_dir, output=project / "ref.jsonl", chunk_size=6))
    assert reference.items == 50

    class Crash(Exception):
        pass

    def crash_after_three_chunks(update: Any) -> None:
        if update.lines_done >= 18:
            raise Crash

    with pytest.raises(Crash):
        run_batch(job(project, tiny_classifier_dir, chunk_size=6), on_progress=crash_after_three_chunks)
    manifest = json.loads((project / "out.manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["progress"]["lines_done"] == 18
    # What a crash mid-write leaves behind: a complete line that was never committed, then a torn one.
    with open(project / "out.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": 17, "line": 19, "label": "NEGATIVE"}) + '\n{"id": 18, "line": 20, "la')
    summary = run_batch(job(project, tiny_classifier_dir, chunk_size=6))
    assert summary.resumed_from_line == 18
    assert summary.items == 50 and summary.items_this_run == 33 and summary.errors == 1
    ref_rows, out_rows = read_jsonl(project / "ref.jsonl"), read_jsonl(project / "out.jsonl")
    assert [r["id"] for r in out_rows] == [r["id"] for r in ref_rows] == list(range(50))
    assert [r["label"] for r in out_rows] == [r["label"] for r in ref_rows]
    assert read_jsonl(project / "out.errors.jsonl") == read_jsonl(project / "ref.errors.jsonl")
    # Running a finished job again does nothing and says so.
    again = run_batch(job(project, tiny_classifier_dir, chunk_size=6))
    assert (again.items, again.items_this_run, again.resumed_from_line) == (50, 0, 51)


@pytest.mark.slow
def test_sigkill_midway_then_rerun_yields_every_input_exactly_once(project: Path, tiny_classifier_dir: Path) -> None:
    """A real `prodai batch` process is killed with SIGKILL halfway; the rerun completes the job."""
    total = 3000
    rows: list[Any] = []
    valid_ids: list[int] = []
    bad_lines: list[int] = []
    for i, text in enumerate(make_texts(total, seed=11)):
        if i % 97 == 50:
            rows.append('{"id": ' + str(i) + ', "text": ')  # malformed
            bad_lines.append(len(rows))
        else:
            rows.append({"id": i, "text": text})
            valid_ids.append(i)
    write_jsonl(project / "in.jsonl", rows)
    out = project / "out.jsonl"
    args = [
        "batch",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--model",
        str(tiny_classifier_dir),
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--max-error-rate",
        "0.5",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    env.update(ONE_THREAD, PRODAI_BATCH__CHUNK_SIZE="20")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodai_cli", *args],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 300:
                break
            time.sleep(0.02)
        ended = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        assert proc.poll() is None, f"the job ended before it could be killed: {ended}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((project / "out.manifest.json").read_text())
    assert manifest["status"] == "running"
    assert 0 < manifest["progress"]["lines_done"] < total
    # Whatever the kill left (maybe a torn line), add one for certain: the rerun must cut it away.
    with open(out, "ab") as handle:
        handle.write(b'{"id": 123456, "line": 1, "label": "POS')
    result = run_cli("--json", *args, cwd=project, env={**ONE_THREAD, "PRODAI_BATCH__CHUNK_SIZE": "20"})
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed_from_line"] > 0
    assert summary["items"] == len(valid_ids) and summary["errors"] == len(bad_lines)
    predictions = read_jsonl(out)  # no torn line: every line parses
    counts = Counter(r["id"] for r in predictions)
    assert sorted(counts) == valid_ids
    assert set(counts.values()) == {1}
    assert [e["line"] for e in read_jsonl(project / "out.errors.jsonl")] == bad_lines


def test_consecutive_chunks_are_sorted_together_and_still_committed_one_by_one(
    project: Path, tiny_classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prodai_cli.batch import engine

    texts = make_texts(50, seed=3)
    write_jsonl(project / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    calls: list[int] = []
    real_load = engine._load

    def load_and_count(*args: Any, **kwargs: Any) -> Any:  # the real runtime, its calls counted
        runtime = real_load(*args, **kwargs)
        predict = runtime.predict_encoded

        def counted(encoded: Any, **options: Any) -> Any:
            calls.append(len(encoded))
            return predict(encoded, **options)

        runtime.predict_encoded = counted
        return runtime

    monkeypatch.setattr(engine, "_load", load_and_count)

    def run(output: str, **kwargs: Any) -> tuple[list[int], list[int]]:
        calls.clear()
        commits: list[int] = []
        summary = run_batch(
            job(project, tiny_classifier_dir, output=project / output, chunk_size=5, **kwargs),
            on_progress=lambda update: commits.append(update.lines_done),
        )
        assert summary.items == 50
        # A job that finds its budget calibrated already warms up on 2 texts first (not the job's).
        return calls[1:] if summary.extra.get("calibration") == "cached" else list(calls), commits

    # The first window is one chunk (the first results come at once), then 4 chunks are sorted together.
    assert run("windows.jsonl", sort_chunks=4) == ([5, 20, 20, 5], list(range(5, 51, 5)))
    assert run("chunks.jsonl", sort_chunks=1) == ([5] * 10, list(range(5, 51, 5)))
    windows, chunks = read_jsonl(project / "windows.jsonl"), read_jsonl(project / "chunks.jsonl")
    assert [r["id"] for r in windows] == [r["id"] for r in chunks] == list(range(50))
    for a, b in zip(windows, chunks, strict=True):
        assert a["label"] == b["label"]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
    # Long texts close a window early, so a window never holds several chunks of them in memory.
    monkeypatch.setattr(engine, "WINDOW_MAX_CHARS", 1)
    assert run("capped.jsonl", sort_chunks=4) == ([5] * 10, list(range(5, 51, 5)))


# ------------------------------------------------------------------------------------------ engines


def test_prefetch_keeps_order_and_propagates_errors() -> None:
    assert list(_prefetch(iter(range(100)))) == list(range(100))

    def failing() -> Any:
        yield 1
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for item in _prefetch(failing()):
            got.append(item)
    assert got == [1]


@pytest.mark.slow
def test_ray_engine_gives_the_same_output_as_local(project: Path, tiny_classifier_dir: Path) -> None:
    pytest.importorskip("ray")
    rows: list[Any] = [{"id": i, "text": t} for i, t in enumerate(make_texts(120, seed=7))]
    rows.insert(33, "not json")
    write_jsonl(project / "in.jsonl", rows)
    local = run_batch(job(project, tiny_classifier_dir, output=project / "local.jsonl", chunk_size=25))
    result = run_cli(
        "--json",
        "batch",
        "in.jsonl",
        "-o",
        "ray.jsonl",
        "--model",
        str(tiny_classifier_dir),
        "--engine",
        "ray",
        "--ray-actors",
        "2",
        "--device",
        "cpu",
        "--max-error-rate",
        "0.1",
        cwd=project,
        env={**ONE_THREAD, "PRODAI_BATCH__CHUNK_SIZE": "25", "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0"},
        timeout=600,
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["engine"] == "ray" and summary["items"] == local.items == 120
    assert summary["task"] == "text-classification"
    local_rows, ray_rows = read_jsonl(project / "local.jsonl"), read_jsonl(project / "ray.jsonl")
    assert [r["id"] for r in ray_rows] == [r["id"] for r in local_rows]
    for a, b in zip(ray_rows, local_rows, strict=True):
        assert a["label"] == b["label"]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
        assert {k: v for k, v in a.items() if k != "confidence"} == {k: v for k, v in b.items() if k != "confidence"}
    assert (project / "ray.errors.jsonl").read_text() == (project / "local.errors.jsonl").read_text()
    assert not list(project.glob(".ray.jsonl.ray-input*"))  # the staging file is cleaned up
    # A pool the cluster cannot place is refused instead of waiting forever.
    result = run_cli(
        "batch",
        "in.jsonl",
        "-o",
        "ray2.jsonl",
        "--model",
        str(tiny_classifier_dir),
        "--engine",
        "ray",
        "--ray-actors",
        "64",
        "--device",
        "cpu",
        cwd=project,
        env={**ONE_THREAD, "RAY_ADDRESS": ""},
        timeout=600,
    )
    assert result.exit_code == 2
    assert "--ray-actors 64 needs 64 CPUs" in result.stderr
    assert not list(project.glob("ray2*"))  # the refused job left no output, errors file or manifest


def test_a_job_refused_before_its_first_commit_leaves_no_files(project: Path, tiny_classifier_dir: Path) -> None:
    import shutil

    broken = project / "broken-model"
    shutil.copytree(tiny_classifier_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")  # passes the checks, fails to load
    write_jsonl(project / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(make_texts(5))])
    with pytest.raises(Exception, match="cannot load the model"):
        run_batch(job(project, broken))
    assert sorted(p.name for p in project.iterdir()) == ["broken-model", "in.jsonl"]
    # An output an earlier run made is kept whatever this run does.
    run_batch(job(project, tiny_classifier_dir))
    before = (project / "out.jsonl").read_bytes()
    with pytest.raises(ResumeRefusedError):
        run_batch(job(project, broken))
    assert (project / "out.jsonl").read_bytes() == before
    assert json.loads((project / "out.manifest.json").read_text())["status"] == "complete"
