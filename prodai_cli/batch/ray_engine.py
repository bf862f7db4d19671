"""``prodai batch --engine ray``: the same runtime inside Ray Data ``map_batches`` actors.

The driver (this process) reads and validates the input with the same reader as the local engine and
writes through the same crash-safe writer; only the model work moves into a pool of Ray actors (one GPU
each on a GPU machine). Valid pending records are staged in a JSONL file beside the output so that Ray's
read tasks stream them (nothing is held in driver memory), and results come back in input order
(``preserve_order``), so chunks are committed exactly as the local engine commits them.

Ray connects to ``RAY_ADDRESS`` when set (an existing cluster, where the model directory and the
output's directory must be on shared storage), else starts a local instance.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.batch.job import EngineRun, calibration_sample, iter_chunks, set_threads
from prodai_cli.errors import UsageError

if TYPE_CHECKING:
    pass

ROWS_PER_CALL = 512


class RayPredictor:
    """A Ray Data actor: loads the runtime once, then predicts each batch of rows it is handed."""

    def __init__(
        self,
        source: str,
        task: str | None,
        device: str,
        precision: str,
        max_length: int | None,
        batch_size: int | str,
        calibration: list[str],
        threads: int | None = None,
    ) -> None:
        from prodai_cli.runtime import load_runtime

        set_threads(threads)

        self.runtime = load_runtime(source, device=device, precision=precision, max_length=max_length, task=task)
        self.batch_size = batch_size
        if batch_size == "auto":
            self.runtime.calibrate(calibration)
        else:
            self.runtime.warmup()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Predict one batch of ``{"line", "text"}`` rows."""
        import numpy as np

        texts = [str(t) for t in batch["text"]]
        encoded = self.runtime.encode(texts)
        if isinstance(self.batch_size, int):
            predictions = self.runtime.predict_encoded(encoded, max_batch_size=self.batch_size)
        else:
            predictions = self.runtime.predict_encoded(encoded)
        return {
            "line": batch["line"],
            "prediction": np.array([json.dumps(p) for p in predictions], dtype=object),
            "truncated": np.array(encoded.truncated, dtype=bool),
            "tokens": np.array(encoded.lengths, dtype=np.int64),
        }


def _model_source(run: EngineRun) -> tuple[str, str]:
    """A local directory the actors can load (registry versions are downloaded first), and its task."""
    from prodai_cli.registry import detect_task
    from prodai_cli.runtime import locate_model

    located = locate_model(run.pinned, run.settings)
    directory = located.model_dir
    # Hand the actors the MLflow directory (model/ + components/tokenizer/) when there is one.
    if directory.name == "model" and located.tokenizer_dir != directory:
        directory = directory.parent
    return str(directory.resolve()), located.task or detect_task(located.model_dir)


def _start_ray(status: Callable[[str], None]) -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray, which is not installed", hint="pip install 'prodai[ray]'") from None
    if not ray.is_initialized():
        status("Connecting to Ray" if os.environ.get("RAY_ADDRESS") else "Starting a local Ray instance")
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def _read_staging(ray: Any, staging: Path) -> Any:
    import inspect

    # Newer Ray takes resources as named arguments and deprecates ray_remote_args; older Ray has only the latter.
    if "num_cpus" in inspect.signature(ray.data.read_json).parameters:
        return ray.data.read_json(str(staging), lines=True, num_cpus=0)
    return ray.data.read_json(str(staging), lines=True, ray_remote_args={"num_cpus": 0})


def _check_capacity(ray: Any, actors: int, on_gpu: bool) -> None:
    """Refuse a pool the cluster cannot place (Ray would wait for it forever)."""
    resource = "GPU" if on_gpu else "CPU"
    available = float(ray.cluster_resources().get(resource, 0))
    if actors > available:
        raise UsageError(
            f"--ray-actors {actors} needs {actors} {resource}s but the Ray cluster has {available:g}",
            hint="Lower --ray-actors, or add nodes to the cluster",
        )


def run_chunks_on_ray(run: EngineRun) -> dict[str, Any]:
    """Predict every pending chunk in Ray actors and commit each through the run."""
    job, device, batch_size = run.job, run.device, run.batch_size
    ray = _start_ray(run.status)
    source, task = _model_source(run)
    skip = run.writer.progress.lines_done
    staging = run.writer.output.with_name(f".{run.writer.output.name}.ray-input.jsonl")
    pending = 0
    with open(staging, "w", encoding="utf-8") as handle:
        for chunk in iter_chunks(job, skip):
            for record in chunk.records:
                handle.write(json.dumps({"line": record.line, "text": record.text}, ensure_ascii=False) + "\n")
                pending += 1
    on_gpu = device.startswith("cuda")
    try:
        results: Iterator[dict[str, Any]] = iter(())
        if pending:
            run.status(f"Predicting on Ray with {job.ray_actors} actor(s)")
            _check_capacity(ray, job.ray_actors, on_gpu)
            # Read tasks take no CPU slot: with every CPU held by a model actor they would otherwise wait
            # forever for one (a local 2-CPU machine with 2 actors deadlocks).
            dataset = _read_staging(ray, staging).map_batches(
                RayPredictor,
                fn_constructor_kwargs={
                    "source": source,
                    "task": task,
                    # Ray sets CUDA_VISIBLE_DEVICES per actor: each sees its one GPU as cuda:0.
                    "device": "cuda" if on_gpu else "cpu",
                    "precision": job.precision,
                    "max_length": job.max_tokens,
                    "batch_size": batch_size,
                    "calibration": calibration_sample(job, skip),
                    "threads": job.threads,
                },
                batch_size=ROWS_PER_CALL,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=job.ray_actors),
                num_gpus=1 if on_gpu else 0,
            )
            results = iter(dataset.iter_rows())
        for chunk in iter_chunks(job, skip):
            outputs: list[str] = []
            truncated = 0
            tokens = 0
            for record in chunk.records:
                row = next(results)
                if int(row["line"]) != record.line:
                    raise RuntimeError(f"Ray returned line {row['line']} where line {record.line} was expected")
                cut = bool(row["truncated"])
                outputs.append(run.output_line(record, json.loads(str(row["prediction"])), cut))
                truncated += cut
                tokens += int(row["tokens"])
            run.commit(chunk, outputs, truncated=truncated, tokens=tokens)
    finally:
        staging.unlink(missing_ok=True)
    return {
        "task": task,
        "device": device,
        "tokens_this_run": run.tokens_this_run,
        "max_batch_tokens": None,
        "ray_actors": job.ray_actors,
    }
