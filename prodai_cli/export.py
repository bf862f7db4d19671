"""``prodai export``: turn a registered torch version into an ONNX version (fp32 or int8), proven equivalent first.

The flow is one way: resolve the source version, export its graph with ``torch.onnx.export`` (the
torch.export-based "dynamo" exporter, torch's supported path since 2.9; dynamic batch and sequence axes),
optionally quantize the weights to int8 with ONNX Runtime's dynamic quantization, then run the torch model and
the new graph on the same padded batches of a sample and compare:

- fp32: the largest absolute difference of the raw outputs (logits, or the last hidden state of the real
  tokens for an embedder) must stay within :data:`FP32_MAX_ABS_DIFF`, and every label must agree;
- int8: labels must agree on at least :data:`INT8_MIN_LABEL_AGREEMENT` of the sample, and embeddings must keep
  a mean cosine of at least :data:`INT8_MIN_MEAN_COSINE` to torch's, none below :data:`INT8_MIN_LOWEST_COSINE`
  (measured on all-MiniLM-L6-v2: mean 0.992, lowest 0.95-0.97 depending on the sample; short texts are lowest).

int8 tries the schemes of :data:`INT8_SCHEMES` in order, fastest first, and keeps the first that passes (the
accuracy-driven fallback of Intel Neural Compressor and Optimum's tuning loops, with whole schemes instead of
single nodes: on all-MiniLM-L6-v2 every encoder MatMul contributes, so excluding nodes one by one gives up the
speed long before the figures pass; see :func:`quantize_int8`).

A result outside tolerance is refused (:class:`~prodai_cli.errors.ExportRejectedError`) and nothing is
registered. A result inside is registered as a new version of the same model, with the figures as version
tags (``prodai.export.*``) and the backend as ``prodai.runtime.backend=onnx``, so serving, batch and the A/B
router load it without being told.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ExportRejectedError, UsageError, first_line
from prodai_cli.refs import parse_model_ref
from prodai_cli.registry import Registry
from prodai_cli.runtime.model import BACKEND_TAG, ONNX_FILE
from prodai_cli.runtime.onnx import OUTPUT_NAME, RUNTIME_FILE, mean_pool

if TYPE_CHECKING:
    import numpy as np

    from prodai_cli.config import Settings
    from prodai_cli.registry import ModelVersionInfo
    from prodai_cli.runtime import ModelRuntime

FORMATS: tuple[str, ...] = ("onnx",)
QUANTIZATIONS: tuple[str, ...] = ("int8",)
# int8 schemes, fastest first (see quantize_int8); export keeps the first whose figures pass.
INT8_SCHEMES: tuple[str, ...] = ("dynamic", "blockwise")
# MatMulNBits block along the input dimension (weights and, at run time, activations get one scale per block).
BLOCKWISE_BLOCK_SIZE = 32
FP32_MAX_ABS_DIFF = 1e-4
INT8_MIN_LABEL_AGREEMENT = 0.99
INT8_MIN_MEAN_COSINE = 0.99
# A guard against a broken graph, not a quality bar: on all-MiniLM-L6-v2 the lowest of 1,000 texts was 0.95.
INT8_MIN_LOWEST_COSINE = 0.9
DEFAULT_SAMPLE_SIZE = 2000
PRECISION_TAG = "prodai.runtime.precision"
OPSET = 18
# Rows per forward pass of the comparison (both sides see the same padded batches).
_COMPARE_BATCH = 32
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack"})


@dataclass(frozen=True)
class Equivalence:
    """How closely an exported graph follows torch on a sample (the figures ``export`` prints and tags)."""

    precision: str
    task: str
    sample_size: int
    max_abs_diff: float
    label_agreement: float | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None
    failures: list[str] = field(default_factory=list)
    int8_scheme: str | None = None

    @property
    def passed(self) -> bool:
        """True when every figure is within its tolerance."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (None for figures that do not apply to the task)."""
        return {
            "precision": self.precision,
            "sample_size": self.sample_size,
            "max_abs_diff": self.max_abs_diff,
            "label_agreement": self.label_agreement,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "int8_scheme": self.int8_scheme,
            "passed": self.passed,
            "failures": list(self.failures),
        }

    def tags(self) -> dict[str, str]:
        """The figures as version tags."""
        tags = {
            "prodai.export.sample_size": str(self.sample_size),
            "prodai.export.max_abs_diff": f"{self.max_abs_diff:.3g}",
        }
        if self.label_agreement is not None:
            tags["prodai.export.label_agreement"] = f"{self.label_agreement:.6f}"
        if self.min_cosine is not None:
            tags["prodai.export.min_cosine"] = f"{self.min_cosine:.6f}"
        if self.mean_cosine is not None:
            tags["prodai.export.mean_cosine"] = f"{self.mean_cosine:.6f}"
        if self.int8_scheme is not None:
            tags["prodai.export.int8_scheme"] = self.int8_scheme
        return tags


@dataclass(frozen=True)
class ExportResult:
    """A registered export: where it came from, what it is, and how equivalent it proved."""

    source: str
    version: ModelVersionInfo
    precision: str
    equivalence: Equivalence
    exporter: str
    onnx_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``prodai export --json``)."""
        return {
            "source": self.source,
            "name": self.version.name,
            "version": self.version.version,
            "uri": self.version.uri,
            "aliases": self.version.aliases,
            "task": self.version.task,
            "backend": "onnx",
            "precision": self.precision,
            "exporter": self.exporter,
            "onnx_bytes": self.onnx_bytes,
            "seconds": round(self.seconds, 2),
            "equivalence": self.equivalence.to_dict(),
        }


def sample_texts(count: int = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> list[str]:
    """A fixed, varied English sample: reviews, questions and statements of 2 to ~120 words, plus edge cases.

    The same texts every run (seeded), so export figures are comparable between versions and machines. Mixed
    sentiment and lengths exercise both the labels and the padding/truncation paths of the graph.
    """
    rng = random.Random(seed)
    subjects = [
        "the movie",
        "this phone",
        "our hotel",
        "the service",
        "my order",
        "the update",
        "this book",
        "the staff",
        "the battery",
        "the food",
        "the app",
        "customer support",
        "the delivery",
        "the plot",
    ]
    verbs = ["was", "is", "seemed", "felt", "turned out", "has been", "became", "looked"]
    adjectives = [
        "great",
        "terrible",
        "fine",
        "slow",
        "excellent",
        "awful",
        "okay",
        "surprisingly good",
        "not very good",
        "really bad",
        "wonderful",
        "disappointing",
        "average",
        "broken",
        "perfect",
    ]
    tails = [
        "",
        " and I would buy it again",
        " but the price is too high",
        " so I asked for a refund",
        " and everyone loved it",
        " although it took three weeks",
        " which nobody expected",
        "!",
        "?",
        " - 2 stars",
        " 10/10",
        " for the second time in a row",
    ]
    questions = [
        "is it worth it",
        "does it work offline",
        "why is it so slow",
        "where is my package",
        "can I return it",
        "how long does the battery last",
    ]
    texts = [
        "",
        "ok",
        "a",
        "good",
        "bad",
        "hello world",
        "¿Dónde está la biblioteca? Ünïcödé façade naïve café",
        "The delivery arrived late but the product quality made up for it. " * 40,
    ]
    while len(texts) < count:
        kind = rng.random()
        if kind < 0.15:
            texts.append(rng.choice(questions) + "?")
            continue
        clauses = rng.choice((1, 1, 1, 2, 2, 3, 5, 8))
        parts = [
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(adjectives)}{rng.choice(tails)}"
            for _ in range(clauses)
        ]
        text = ". ".join(parts)
        texts.append(text[0].upper() + text[1:] if rng.random() < 0.5 else text)
    return texts[:count]


def export_onnx(
    settings: Settings,
    ref: str,
    *,
    quantize: str | None = None,
    aliases: Sequence[str] = (),
    texts: Sequence[str] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a registered torch version to ONNX, check it against torch, and register it as a new version.

    Args:
        settings: Project settings (the registry).
        ref: The source version (``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``).
        quantize: None for fp32, ``int8`` for dynamically quantized weights.
        aliases: Aliases to point at the new version.
        texts: The comparison sample (default: :func:`sample_texts`).
        on_status: Called with a short line per step.

    Returns:
        The new version and its equivalence figures.

    Raises:
        UsageError: An unknown quantization, an ONNX source, or onnx/onnxruntime missing.
        ExportRejectedError: The graph differs from torch beyond tolerance (nothing is registered).

    """
    status = on_status or (lambda _line: None)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(f"Unknown quantization {quantize!r}", hint=f"Use one of {', '.join(QUANTIZATIONS)}")
    for alias in aliases:
        from prodai_cli.registry import validate_alias

        validate_alias(alias)
    started = time.perf_counter()
    precision = quantize or "fp32"
    registry = Registry(settings)
    parsed = parse_model_ref(ref)
    info = registry.get_version(parsed)
    source = f"{info.name}/{info.version}"
    if info.tags.get(BACKEND_TAG, "torch") != "torch":
        raise UsageError(
            f"{source} is already an {info.tags[BACKEND_TAG]} version; export its torch source instead",
            hint=f"Its source: {info.tags.get('prodai.export.source', 'unknown')}",
        )
    _require_onnx_tools(quantize)
    from prodai_cli.runtime import load_runtime

    status(f"Loading {source}")
    torch_runtime = load_runtime(source, settings, device="cpu", precision="fp32")
    resolved = registry.resolve(source)
    sample = list(texts) if texts is not None else sample_texts()
    if not sample:
        raise UsageError("The comparison sample is empty")
    work = Path(tempfile.mkdtemp(prefix="prodai-export-"))
    staging = work / "version"
    try:
        status(f"Exporting {source} to ONNX (torch.onnx dynamo exporter, opset {OPSET})")
        exporter = write_onnx_version(torch_runtime, resolved.path, staging, source=source, on_status=status)
        model_dir = staging / "model"
        fp32_graph = work / "fp32.onnx"
        if quantize is not None:
            shutil.copyfile(model_dir / ONNX_FILE, fp32_graph)
        refusals: list[str] = []
        for scheme in INT8_SCHEMES if quantize is not None else (None,):
            if scheme is not None:
                shutil.copyfile(fp32_graph, model_dir / ONNX_FILE)
                status(f"Quantizing to int8 ({scheme}: {_SCHEME_LINES[scheme]})")
                quantize_version(model_dir, scheme)
            status(f"Comparing with torch on {len(sample):,} texts")
            onnx_runtime = load_runtime(staging, device="cpu", precision="fp32", task=torch_runtime.task)
            equivalence = compare(torch_runtime, onnx_runtime, sample, precision, int8_scheme=scheme)
            if equivalence.passed:
                break
            failure = "; ".join(equivalence.failures)
            refusals.append(failure if scheme is None else f"{scheme} int8: {failure}")
            if scheme is not None and scheme != INT8_SCHEMES[-1]:
                status(f"{scheme} int8 is outside tolerance ({failure}); trying the next scheme")
        if not equivalence.passed:
            raise ExportRejectedError(
                f"The {precision} ONNX export of {source} differs from torch beyond tolerance: " + " | ".join(refusals),
                figures=equivalence.to_dict(),
                hint="Nothing was registered. fp32 usually passes where int8 does not; else keep the torch version",
            )
        onnx_bytes = (model_dir / ONNX_FILE).stat().st_size
        status(f"Registering the {precision} ONNX version of {info.name}")
        tags = {
            BACKEND_TAG: "onnx",
            PRECISION_TAG: precision,
            "prodai.export.source": source,
            "prodai.export.exporter": exporter,
            **equivalence.tags(),
        }
        version = registry.register_files(
            staging,
            info.name,
            task=torch_runtime.task,
            aliases=list(aliases),
            description=f"ONNX {precision} export of {source}",
            tags=tags,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        source=source,
        version=version,
        precision=precision,
        equivalence=equivalence,
        exporter=exporter,
        onnx_bytes=onnx_bytes,
        seconds=time.perf_counter() - started,
    )


def write_onnx_version(
    runtime: ModelRuntime,
    source_dir: Path,
    target: Path,
    *,
    quantize: str | None = None,
    int8_scheme: str = INT8_SCHEMES[0],
    source: str = "",
    on_status: Callable[[str], None] | None = None,
) -> str:
    """Write an ONNX version's files (the layout the runtime loads) from a loaded torch runtime; name the exporter.

    Args:
        runtime: The torch runtime of the source (its model is exported, its tokenizer settings kept).
        source_dir: The source's files: a cached version (``model/``, ``components/``) or a model directory.
        target: An empty directory: gets ``model/`` (config, ``model.onnx``, ``prodai_runtime.json``) and
            ``components/tokenizer/``.
        quantize: None for fp32, ``int8``.
        int8_scheme: With ``int8``: one of :data:`INT8_SCHEMES` (see :func:`quantize_int8`).
        source: What the files came from, recorded in ``prodai_runtime.json``.
        on_status: Called with a short line per step.

    """
    status = on_status or (lambda _line: None)
    model_src = source_dir / "model" if (source_dir / "model" / "config.json").is_file() else source_dir
    model_dir = target / "model"
    model_dir.mkdir(parents=True)
    for path in model_src.iterdir():
        if path.is_file() and path.suffix not in _WEIGHT_SUFFIXES:
            shutil.copy2(path, model_dir / path.name)
    components = source_dir / "components"
    if components.is_dir():
        shutil.copytree(components, target / "components")
    exporter = _export_graph(runtime, model_dir / ONNX_FILE)
    info: dict[str, Any] = {
        "format": 1,
        "backend": "onnx",
        "precision": "fp32",
        "task": runtime.task,
        "exporter": exporter,
        "opset": OPSET,
        "source": source,
    }
    (model_dir / RUNTIME_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    if quantize == "int8":
        status(f"Quantizing to int8 ({int8_scheme}: {_SCHEME_LINES[int8_scheme]})")
        quantize_version(model_dir, int8_scheme)
    return exporter


def quantize_version(model_dir: Path, scheme: str) -> None:
    """Quantize an fp32 ONNX version's graph to int8 in place and record the precision and scheme beside it."""
    quantize_int8(model_dir / ONNX_FILE, scheme)
    path = model_dir / RUNTIME_FILE
    info = json.loads(path.read_text(encoding="utf-8"))
    info.update(precision="int8", int8_scheme=scheme)
    path.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def _require_onnx_tools(quantize: str | None) -> None:
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(
            f"Exporting to ONNX needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            hint="pip install 'prodai[onnx]'",
        )


def _export_graph(runtime: ModelRuntime, target: Path) -> str:
    """Write the runtime's torch model as an ONNX graph with dynamic batch and sequence axes; name the exporter."""
    import torch

    output_name = OUTPUT_NAME[runtime.task]

    class Graph(torch.nn.Module):  # type: ignore[misc]
        """The model as the runtime calls it: ids and mask in, logits or the last hidden state out."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return output.logits if output_name == "logits" else output.last_hidden_state

    # Two rows of different lengths, so neither axis is traced as a constant (torch.export specialises 0 and 1).
    rows = runtime.encode(["an example input for tracing the graph", "short"]).input_ids
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), runtime.pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    graph = Graph(runtime.model).eval()  # a fresh Module starts in training mode: dropout would be exported
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        # The exporter reports its steps on stdout; prodai's stdout carries only --json.
        with contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (ids, mask),
                input_names=["input_ids", "attention_mask"],
                output_names=[output_name],
                dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
            if program is None:  # pragma: no cover - dynamo=True always returns a program
                raise RuntimeError("the exporter returned no program")
            program.save(str(target), external_data=False)
    except Exception as exc:  # the exporter raises many types (torch.export, onnxscript, onnx)
        raise UsageError(f"torch.onnx could not export this model: {first_line(exc)}") from None
    return f"torch.onnx-dynamo-{torch.__version__.split('+')[0]}"


_SCHEME_LINES = {
    "dynamic": "per-channel int8 weights, activations quantized per call with one scale per tensor",
    "blockwise": f"8-bit weights and activations with one scale per block of {BLOCKWISE_BLOCK_SIZE} inputs",
}


def quantize_int8(path: Path, scheme: str = INT8_SCHEMES[0]) -> None:
    """Quantize the encoder's matrix multiplications to int8 in place; the head and embeddings stay fp32.

    Only MatMuls with a constant weight are quantized: the encoder's projections and feed-forward layers. The
    exporter writes a linear layer on a 2-D input (BERT's pooler, a classification head) as ``Gemm``, which is
    excluded by name (``quantize_dynamic`` would otherwise rewrite it as a MatMul and quantize it; the head
    reads the small margins a label depends on), and the embedding tables are ``Gather`` s: those stay fp32.

    Schemes (measured on all-MiniLM-L6-v2 with a seeded random 2-label head, 2,000 gate texts, 2026-12-07):

    - ``dynamic``: ONNX Runtime's dynamic quantization (``quantize_dynamic``: per-channel int8 weights; each
      activation tensor quantized to uint8 per call with one scale for the whole batch; VNNI kernels). The
      fastest, 2.0-2.2x ONNX fp32 per CPU-second, but the per-tensor activation scale moved the logit margin
      by 0.0027 on average and flipped 2.55% of the labels. Per-node sensitivity (one MatMul quantized at a
      time; the squared errors added up to the whole) put 80% of the error variance in the 12 feed-forward
      MatMuls and the rest spread over the 24 attention projections: even with every feed-forward MatMul
      excluded (``nodes_to_exclude``) about 1.1% of the labels would flip, with two thirds of the int8 work
      gone. Per-tensor weights were worse (3.5% flipped); ``reduce_range`` (7-bit weights) was not used, as
      ONNX Runtime documents it for CPUs without VNNI.
    - ``blockwise``: ``MatMulNBits`` with 8-bit symmetric weights in blocks of :data:`BLOCKWISE_BLOCK_SIZE`
      along the input dimension and ``accuracy_level`` 4 (activations quantized to int8 per row and block at
      run time, int8 dot products): the margin moved 0.0007 on average, 0.85% of labels flipped, at 1.3-1.4x
      ONNX fp32 per CPU-second.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if scheme not in INT8_SCHEMES:
        raise UsageError(f"Unknown int8 scheme {scheme!r}", hint=f"Use one of {', '.join(INT8_SCHEMES)}")
    quantized = path.with_name("model.int8.onnx")
    # onnxruntime logs hints (pre-processing, skipped nodes) on the root logger; prodai's output stays its own.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        if scheme == "dynamic":
            # quantize_dynamic rewrites each Gemm as "<name>_MatMul" + Add before quantizing: name both forms.
            gemms = [
                node.name
                for node in onnx.load(str(path), load_external_data=False).graph.node
                if node.op_type == "Gemm"
            ]
            quantize_dynamic(
                str(path),
                str(quantized),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=[*gemms, *(f"{name}_MatMul" for name in gemms)],
            )
        else:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(
                str(path),
                bits=8,
                block_size=BLOCKWISE_BLOCK_SIZE,
                is_symmetric=True,
                accuracy_level=4,
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(quantized), False)
    finally:
        root.setLevel(level)
    quantized.replace(path)


def compare(
    reference: ModelRuntime,
    exported: ModelRuntime,
    texts: Sequence[str],
    precision: str,
    *,
    int8_scheme: str | None = None,
) -> Equivalence:
    """Run both runtimes' raw forward passes on the same padded batches and measure how far apart they are.

    Args:
        reference: The torch runtime.
        exported: The ONNX runtime (same tokenizer and ``max_length``).
        texts: The sample.
        precision: ``fp32`` or ``int8``: which tolerances apply.
        int8_scheme: The int8 scheme of the exported graph, recorded with the figures.

    """
    import numpy as np

    encoded = reference.encode(texts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded.input_ids[i]))
    max_diff = 0.0
    agree = 0
    cosines: list[float] = []
    for start in range(0, len(order), _COMPARE_BATCH):
        rows = [encoded.input_ids[i] for i in order[start : start + _COMPARE_BATCH]]
        ids, mask = _pad(rows, reference.pad_token_id)
        ours = _torch_raw(reference, ids, mask)
        theirs = _onnx_raw(exported, ids, mask)
        if reference.task == "text-classification":
            max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
            agree += int((ours.argmax(axis=-1) == theirs.argmax(axis=-1)).sum())
        else:
            real = mask.astype(bool)  # padding positions are never read; only real tokens count
            max_diff = max(max_diff, float(np.abs(ours[real] - theirs[real]).max()))
            cosines.extend((mean_pool(ours, mask) * mean_pool(theirs, mask)).sum(axis=1).tolist())
    failures: list[str] = []
    agreement = agree / len(order) if reference.task == "text-classification" else None
    min_cos = min(cosines) if cosines else None
    mean_cos = math.fsum(cosines) / len(cosines) if cosines else None
    if precision == "fp32":
        if not max_diff <= FP32_MAX_ABS_DIFF:
            failures.append(f"max abs difference {max_diff:.3g} > {FP32_MAX_ABS_DIFF:g}")
        if agreement is not None and agreement < 1.0:
            failures.append(f"labels agree on {agreement:.2%} of the sample, not all of it")
    else:
        if agreement is not None and agreement < INT8_MIN_LABEL_AGREEMENT:
            failures.append(f"labels agree on {agreement:.2%} < {INT8_MIN_LABEL_AGREEMENT:.0%} of the sample")
        if mean_cos is not None and mean_cos < INT8_MIN_MEAN_COSINE:
            failures.append(f"mean embedding cosine {mean_cos:.4f} < {INT8_MIN_MEAN_COSINE}")
        if min_cos is not None and min_cos < INT8_MIN_LOWEST_COSINE:
            failures.append(f"lowest embedding cosine {min_cos:.4f} < {INT8_MIN_LOWEST_COSINE}")
    return Equivalence(
        precision=precision,
        task=reference.task,
        sample_size=len(order),
        max_abs_diff=max_diff,
        label_agreement=agreement,
        min_cosine=min_cos,
        mean_cosine=mean_cos,
        failures=failures,
        int8_scheme=int8_scheme,
    )


def _pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def _torch_raw(runtime: ModelRuntime, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import numpy as np
    import torch

    with torch.inference_mode():
        output = runtime.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        raw = output.logits if runtime.task == "text-classification" else output.last_hidden_state
        return np.asarray(raw.float().numpy(), dtype=np.float32)


def _onnx_raw(runtime: ModelRuntime, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import numpy as np

    (output,) = runtime.model.session.run([OUTPUT_NAME[runtime.task]], {"input_ids": ids, "attention_mask": mask})
    return np.asarray(output, dtype=np.float32)
