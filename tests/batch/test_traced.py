"""Traced models (prodai_cli.runtime.traced): the first job stores a checked trace, the next loads it.

The point of a trace is the load time (no transformers import, no model class to build), so the tests check
that mechanism directly (a fresh process that loads a trace has not imported transformers), that a traced
job's outputs equal the eager job's, and that a damaged trace, changed model files, an unwritable state
directory or ``batch.trace: false`` all fall back to the eager model without failing a job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_same_predictions, run_cli

from prodai_cli.batch import BatchJob, run_batch
from prodai_cli.runtime import load_runtime

WORDS = ["hello", "world", "good", "bad", "movie", "great", "terrible", "the", "a", "is", "was", "not", "very"]


def write_texts(path: Path, count: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(count)]
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return texts


def job(project: Path, model: Path | str, output: str) -> BatchJob:
    return BatchJob(input=project / "in.jsonl", output=project / output, model=str(model), device="cpu")


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def traces(project: Path) -> list[Path]:
    return sorted((project / ".prodai" / "traces").glob("*.pt"))


def assert_same_outputs(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert_same_predictions(got, want)


@pytest.mark.parametrize("which", ["tiny_classifier_dir", "tiny_embedder_dir"])
def test_the_second_job_runs_the_stored_trace_with_the_same_outputs(
    project: Path, which: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(which)
    write_texts(project / "in.jsonl", 90)
    first = run_batch(job(project, model_dir, "eager.jsonl"))
    assert first.extra["trace"] == "stored"
    assert len(traces(project)) == 1
    second = run_batch(job(project, model_dir, "traced.jsonl"))
    assert second.extra["trace"] == "traced"
    assert_same_outputs(read(project / "traced.jsonl"), read(project / "eager.jsonl"))
    third = run_batch(job(project, model_dir, "again.jsonl"))
    assert third.extra["trace"] == "traced" and len(traces(project)) == 1  # reused, not traced again


def test_a_process_that_loads_a_trace_never_imports_transformers(project: Path, tiny_classifier_dir: Path) -> None:
    texts = write_texts(project / "in.jsonl", 40)
    assert run_batch(job(project, tiny_classifier_dir, "eager.jsonl")).extra["trace"] == "stored"
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from prodai_cli.runtime import load_runtime\n"
        f"runtime = load_runtime({str(tiny_classifier_dir)!r}, device='cpu', trace_dir=Path('.prodai/traces'))\n"
        f"predictions = runtime.predict({texts[:5]!r})\n"
        "print(json.dumps({'state': runtime.trace_state, 'labels': runtime.labels, 'max_length': runtime.max_length,"
        " 'transformers': 'transformers' in sys.modules, 'predictions': predictions}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    eager = load_runtime(tiny_classifier_dir, device="cpu")
    assert loaded["state"] == "traced"
    assert loaded["transformers"] is False  # the whole saving: no transformers, no model class to build
    assert (loaded["labels"], loaded["max_length"]) == (eager.labels, eager.max_length)
    assert_same_predictions(
        [{"id": i, **p} for i, p in enumerate(loaded["predictions"])],
        [{"id": i, **p} for i, p in enumerate(eager.predict(texts[:5]))],
    )


def test_a_damaged_trace_is_dropped_and_the_job_runs_the_model(
    project: Path, tiny_classifier_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_texts(project / "in.jsonl", 50)
    run_batch(job(project, tiny_classifier_dir, "eager.jsonl"))
    (trace,) = traces(project)
    body = bytearray(trace.read_bytes())
    body[len(body) // 2] ^= 0xFF  # one flipped byte inside the weights: the file still loads as TorchScript
    trace.write_bytes(bytes(body))
    summary = run_batch(job(project, tiny_classifier_dir, "after.jsonl"))
    assert summary.extra["trace"] == "stored"  # the damaged one was refused, the model ran, a good one is back
    assert "does not match its recorded SHA-256" in caplog.text
    assert_same_outputs(read(project / "after.jsonl"), read(project / "eager.jsonl"))
    assert run_batch(job(project, tiny_classifier_dir, "next.jsonl")).extra["trace"] == "traced"


@pytest.mark.parametrize(
    "sidecar",
    [
        b"\xff\xfe not UTF-8, not JSON",
        b'{"status": "ok", "sha256": "0", "tokenizer": "{}"}',  # a digest that cannot match
        None,  # filled in below: the real sidecar with damaged labels
    ],
)
def test_a_damaged_sidecar_never_fails_a_job(project: Path, tiny_classifier_dir: Path, sidecar: bytes | None) -> None:
    write_texts(project / "in.jsonl", 40)
    run_batch(job(project, tiny_classifier_dir, "eager.jsonl"))
    (trace,) = traces(project)
    meta_path = trace.with_suffix(".json")
    if sidecar is None:
        meta = json.loads(meta_path.read_text())
        meta["config"] = {"id2label": {"not a number": ["nested"]}}
        sidecar = json.dumps(meta).encode()
    meta_path.write_bytes(sidecar)
    summary = run_batch(job(project, tiny_classifier_dir, "after.jsonl"))
    assert summary.extra["trace"] == "stored"  # the model ran and a good trace replaced the damaged one
    assert_same_outputs(read(project / "after.jsonl"), read(project / "eager.jsonl"))
    assert run_batch(job(project, tiny_classifier_dir, "next.jsonl")).extra["trace"] == "traced"


def test_changed_model_files_get_a_new_trace(project: Path, tiny_classifier_dir: Path) -> None:
    import shutil

    model_dir = project / "model"
    shutil.copytree(tiny_classifier_dir, model_dir)
    write_texts(project / "in.jsonl", 30)
    assert run_batch(job(project, model_dir, "one.jsonl")).extra["trace"] == "stored"
    config = json.loads((model_dir / "config.json").read_text())
    config["id2label"] = {"0": "no", "1": "yes"}  # same weights, other labels: a stale trace would say LABEL_0
    (model_dir / "config.json").write_text(json.dumps(config))
    summary = run_batch(job(project, model_dir, "two.jsonl"))
    assert summary.extra["trace"] == "stored" and len(traces(project)) == 2
    assert {r["label"] for r in read(project / "two.jsonl")} <= {"no", "yes"}
    assert run_batch(job(project, model_dir, "three.jsonl")).extra["trace"] == "traced"
    assert_same_outputs(read(project / "three.jsonl"), read(project / "two.jsonl"))  # with the new labels


def test_an_unwritable_trace_directory_never_fails_the_job(project: Path, tiny_classifier_dir: Path) -> None:
    write_texts(project / "in.jsonl", 30)
    (project / ".prodai").mkdir()
    (project / ".prodai" / "traces").write_text("a file where the directory would go\n")
    summary = run_batch(job(project, tiny_classifier_dir, "out.jsonl"))
    assert summary.extra["trace"] == "failed"
    assert summary.items == 30


def test_trace_false_in_the_config_turns_it_off(registered_copy: Path) -> None:
    write_texts(registered_copy / "in.jsonl", 30)
    off = run_cli(
        "--json", "batch", "in.jsonl", "--model", "clf@production", "-o", "off.jsonl", "--device", "cpu",
        cwd=registered_copy, env={"PRODAI_BATCH__TRACE": "false", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert off.exit_code == 0, off.stderr
    assert json.loads(off.stdout)["trace"] == "off"
    assert not (registered_copy / ".prodai" / "traces").exists()
    on = run_cli(
        "--json", "batch", "in.jsonl", "--model", "clf@production", "-o", "on.jsonl", "--device", "cpu",
        cwd=registered_copy, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert on.exit_code == 0, on.stderr
    assert json.loads(on.stdout)["trace"] == "stored"  # a registered version, keyed by its files' manifest
    assert len(traces(registered_copy)) == 1
    again = run_cli(
        "-v", "batch", "in.jsonl", "--model", "clf@production", "-o", "again.jsonl", "--device", "cpu",
        cwd=registered_copy, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert "model trace: traced (loaded a stored trace" in again.stderr
