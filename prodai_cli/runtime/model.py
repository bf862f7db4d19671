"""The model runtime shared by ``prodai batch`` and the server: load once, predict batches of texts fast.

Speed comes from three habits (measured in ``bench/batch_throughput.py``): every text is tokenized once,
in one call to the Rust tokenizer; inputs are sorted by tokenized length and cut into batches by a budget
of *padded* tokens, so short texts travel in big batches and long ones in small ones, with little padding;
and the forward pass runs under ``torch.inference_mode`` on tensors built directly, without the
``transformers.pipeline`` machinery. Outputs come back in input order.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import InvalidModelError, UsageError, first_line
from prodai_cli.extras import require_torch
from prodai_cli.runtime.batching import plan_batches
from prodai_cli.runtime.device import check_precision, resolve_device, torch_dtype

if TYPE_CHECKING:
    from prodai_cli.config import Settings

TASKS: tuple[str, ...] = ("text-classification", "embedding")
# The version tag naming the backend a version runs on (absent: torch); set by ``prodai export``.
BACKEND_TAG = "prodai.runtime.backend"
# An exported ONNX graph in a model directory: its presence makes the version an ONNX one.
ONNX_FILE = "model.onnx"
# Padded tokens per forward pass when nobody calibrated: near the best measured for MiniLM-sized encoders
# on a 2-core CPU (bigger batches stop paying once the matrices leave the cache), and a safe start on GPU.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "gpu": 32768}
# Most texts per forward pass: beyond this, per-text work (pooling, building results) outweighs any gain.
MAX_BATCH_SIZE = {"cpu": 512, "gpu": 4096}
CALIBRATION_BUDGETS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass(frozen=True)
class Encoded:
    """Texts tokenized once: token ids (with special tokens, truncated) and which inputs were cut."""

    input_ids: list[list[int]]
    truncated: list[bool]

    @property
    def lengths(self) -> list[int]:
        """Tokens per input, special tokens included."""
        return [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    @staticmethod
    def concat(parts: Sequence[Encoded]) -> Encoded:
        """The inputs of ``parts`` one after another."""
        return Encoded(
            [ids for part in parts for ids in part.input_ids], [cut for part in parts for cut in part.truncated]
        )

    def select(self, indices: Sequence[int]) -> Encoded:
        """The subset at ``indices`` (in that order)."""
        return Encoded([self.input_ids[i] for i in indices], [self.truncated[i] for i in indices])


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and what the registry says about it."""

    name: str
    version: str
    task: str | None
    model_dir: Path
    tokenizer_dir: Path
    backend: str = "torch"


class ModelRuntime:
    """A loaded model ready to predict: classification (label + confidence) or embedding (unit vectors).

    Build one with :func:`load_runtime`. ``predict`` is thread-safe: forward passes are serialised by an
    internal lock (the server calls it from a worker thread while the event loop keeps accepting requests).

    Attributes:
        backend: ``torch`` here; ``onnx`` for :class:`~prodai_cli.runtime.onnx.OnnxModelRuntime`.
        name: Registered model name (the directory name for a local model).
        version: Registry version, or ``local`` for a directory.
        task: ``text-classification`` or ``embedding``.
        device: The torch device used (``cpu``, ``cuda:0``, ``mps``).
        precision: ``fp32``, ``bf16`` or ``fp16``.
        max_length: Inputs are truncated to this many tokens (special tokens included).
        max_batch_tokens: Default budget of padded tokens per forward pass.
        labels: Class names by index (classification), from the model's config.
        scores: Also return every label's probability as ``scores`` (index order); the server turns it on
            (per-label scores, Open Inference Protocol ``scores``), batch output stays as it was.

    """

    backend = "torch"

    def __init__(
        self,
        *,
        source: ModelSource,
        task: str,
        model: Any,
        tokenizer: Any,
        device: str,
        precision: str,
        max_length: int,
    ) -> None:
        self.name = source.name
        self.version = source.version
        self.task = task
        self.source = source
        self.device = device
        self.precision = precision
        self.max_length = max_length
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_tokens = DEFAULT_BATCH_TOKENS["cpu" if device == "cpu" else "gpu"]
        self.max_batch_size = MAX_BATCH_SIZE["cpu" if device == "cpu" else "gpu"]
        # Below this many padded tokens a batch takes inputs of any length (see plan_batches): GPUs need
        # big batches to be busy, CPUs are near full speed from a few hundred tokens on.
        self.min_batch_tokens = 256 if device == "cpu" else 8192
        self.oom_backoffs = 0
        self.scores = False
        # "traced": a stored trace runs (runtime.traced); "eager": the transformers model runs and
        # keep_trace may store one; "off": not asked to (the server, ONNX, an explicit opt-out).
        self.trace_state = "off"
        self._trace_ref: tuple[Path, str] | None = None
        config = model.config
        id2label = getattr(config, "id2label", None) or {}
        self.labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(len(id2label))]
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        self._backend = _truncating_backend(tokenizer, max_length)
        # tokenizers >= 0.21: the same ids without character offsets (nobody here reads them), ~25% faster.
        self._encode_batch: Callable[[list[str]], Any] | None = getattr(
            self._backend, "encode_batch_fast", None
        ) or getattr(self._backend, "encode_batch", None)
        self._lock = threading.Lock()
        if self.backend == "torch":  # an ONNX runtime never needs torch (it runs on the CPU only)
            import torch

            self._torch = torch

    # ------------------------------------------------------------------------------------ tokenizing
    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize texts in one call, truncating to ``max_length`` and recording who was cut."""
        texts = list(texts)
        if not texts:
            return Encoded([], [])
        if self._encode_batch is not None:
            encodings = self._encode_batch(texts)
            return Encoded([e.ids for e in encodings], [bool(e.overflowing) for e in encodings])
        # Slow (Python) tokenizers: one call for the ids, and the untruncated lengths to count truncation.
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        full = self.tokenizer(texts, truncation=False)["input_ids"]
        return Encoded([list(i) for i in ids], [len(f) > self.max_length for f in full])

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokenized length of each text, special tokens included, capped at ``max_length``."""
        return self.encode(texts).lengths

    # ------------------------------------------------------------------------------------ predicting
    def predict(self, texts: Sequence[str], *, max_batch_tokens: int | None = None) -> list[dict[str, Any]]:
        """Predict a list of texts, in input order.

        Args:
            texts: The inputs (any number; they are batched internally).
            max_batch_tokens: Budget of padded tokens per forward pass (default: ``self.max_batch_tokens``).

        Returns:
            One dict per text: ``{"label", "confidence"}`` for classification, ``{"embedding"}`` (a list of
            floats, L2-normalised) for embedding.

        """
        return self.predict_encoded(self.encode(texts), max_batch_tokens=max_batch_tokens)

    def predict_encoded(
        self, encoded: Encoded, *, max_batch_tokens: int | None = None, max_batch_size: int | None = None
    ) -> list[dict[str, Any]]:
        """Predict already tokenized inputs (see :meth:`encode`), in input order.

        Args:
            encoded: Token ids from :meth:`encode`.
            max_batch_tokens: Budget of padded tokens per forward pass; None uses ``self.max_batch_tokens``
                unless ``max_batch_size`` is given, in which case batches are cut by count only.
            max_batch_size: Most inputs per forward pass (default ``self.max_batch_size``).

        """
        if not len(encoded):
            return []
        if max_batch_tokens is None and max_batch_size is None:
            max_batch_tokens = self.max_batch_tokens
        batches = plan_batches(
            encoded.lengths,
            max_batch_tokens,
            max_batch_size or self.max_batch_size,
            min_batch_tokens=self.min_batch_tokens,
        )
        results: list[dict[str, Any] | None] = [None] * len(encoded)
        with self._lock:
            for batch in batches:
                for index, output in zip(batch, self._run_batch([encoded.input_ids[i] for i in batch]), strict=True):
                    results[index] = output
        return [r for r in results if r is not None]

    def warmup(self) -> None:
        """Run a short and a full-length input once so the first real request does not pay for setup."""
        self.predict(["warmup", "warmup " * self.max_length])
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)

    def calibrate(
        self, texts: Sequence[str], *, budgets: Sequence[int] = CALIBRATION_BUDGETS, max_probe_s: float = 1.0
    ) -> int:
        """Pick the token budget with the best measured throughput, and keep it as the default.

        Each candidate budget is probed with one forward pass over a batch of the sample's median-length
        input, as many rows as the budget allows. Budgets grow until throughput stops improving (twice
        in a row), a probe takes longer than ``max_probe_s``, or the GPU runs out of memory; the best
        budget that fit wins. On a CPU this takes a few seconds; on a GPU well under one.

        Args:
            texts: A sample of the real inputs (their lengths matter, not their number).
            budgets: Candidate budgets of padded tokens per forward pass, small to large.
            max_probe_s: Stop growing once one probe takes this long (larger ones only get slower).

        Returns:
            The chosen budget (also stored in ``self.max_batch_tokens``).

        """
        encoded = self.encode(texts)
        if not len(encoded):
            return self.max_batch_tokens
        row = sorted(encoded.input_ids, key=len)[len(encoded) // 2]
        best_budget, best_rate, worse = None, 0.0, 0
        with self._lock:
            try:
                self._forward([row])  # first call pays one-time setup; keep it out of the timings
            except _OutOfMemory:
                return self.max_batch_tokens
            for budget in budgets:
                count = max(1, budget // len(row))
                capped = count >= self.max_batch_size
                rows = [row] * min(count, self.max_batch_size)
                try:
                    start = time.perf_counter()
                    self._forward(rows)
                    if self.device.startswith("cuda"):
                        self._torch.cuda.synchronize(self.device)
                    elapsed = max(time.perf_counter() - start, 1e-9)
                except _OutOfMemory:
                    if self.device.startswith("cuda"):
                        self._torch.cuda.empty_cache()
                    break
                rate = len(rows) * len(row) / elapsed
                if best_budget is None or rate > best_rate * 1.03:
                    best_budget, best_rate, worse = budget, rate, 0
                else:
                    worse += 1
                    if worse >= 2:
                        break
                if elapsed > max_probe_s or capped:  # larger budgets would only be slower, or the same
                    break
        if best_budget is not None:
            self.max_batch_tokens = best_budget
        return self.max_batch_tokens

    def keep_trace(self, texts: Sequence[str]) -> str:
        """Store a trace of the eager model for later loads, checked against it on ``texts``.

        Returns:
            ``stored``, ``refused``, ``failed`` (see :func:`prodai_cli.runtime.traced.store`), ``known``
            (tried before) or the :attr:`trace_state` when there is nothing to do (``traced``, ``off``).

        """
        if self.trace_state != "eager" or self._trace_ref is None:
            return self.trace_state
        from prodai_cli.runtime import traced

        trace_dir, key = self._trace_ref
        if traced.known(trace_dir, key):
            return "known"
        rows = self.encode(texts).input_ids
        with self._lock:
            return traced.store(trace_dir, key, self.model, self.tokenizer, self.task, self.precision, rows)

    def adopt_trace(self, texts: Sequence[str]) -> str:
        """Run from a trace from now on: keep one checked on ``texts`` if none is stored, then load it.

        For a long-lived process (the server) that loaded the eager model: its forward passes then run as
        one TorchScript call that releases Python's GIL for the whole pass, so the event loop and the
        compute thread no longer take turns at every layer (see docs/performance.md).

        Returns:
            ``traced`` when the runtime now runs a trace; else why not: ``refused`` (it did not match the
            model), ``failed`` (could not trace, store or load it), ``known`` (refused before), ``off`` (no
            trace directory, or not a torch model).

        """
        state = self.keep_trace(texts)
        if self.trace_state != "eager" or self._trace_ref is None or state not in ("stored", "known"):
            return self.trace_state if self.trace_state != "eager" else state
        from prodai_cli.runtime import traced

        trace_dir, key = self._trace_ref
        loaded = traced.load(trace_dir, key, self.task, self.device)
        if loaded is None:  # "known": a refusal marker is stored (or a damaged trace, now removed)
            return "known" if state == "known" else "failed"
        with self._lock:
            self.model = loaded[0]
            self.trace_state = "traced"
        return "traced"

    def compute_threads(self) -> int:
        """CPU threads a forward pass uses (part of a calibration's identity)."""
        return int(self._torch.get_num_threads())

    def describe(self) -> dict[str, Any]:
        """What was loaded, for summaries and health endpoints."""
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "device": self.device,
            "precision": self.precision,
            "max_length": self.max_length,
            "max_batch_tokens": self.max_batch_tokens,
        }

    # ------------------------------------------------------------------------------------ internals
    def _run_batch(self, rows: list[list[int]]) -> list[dict[str, Any]]:
        """Forward one batch; on GPU out-of-memory split it in two and lower the budget instead of failing."""
        try:
            return self._forward(rows)
        except _OutOfMemory:
            if len(rows) == 1:
                raise
            self.oom_backoffs += 1
            if self.device.startswith("cuda"):
                self._torch.cuda.empty_cache()
            padded = len(rows) * max(len(r) for r in rows)
            self.max_batch_tokens = max(64, min(self.max_batch_tokens, padded // 2))
            half = len(rows) // 2
            return self._run_batch(rows[:half]) + self._run_batch(rows[half:])

    def _forward(self, rows: list[list[int]]) -> list[dict[str, Any]]:
        import numpy as np

        torch = self._torch
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        input_ids = torch.from_numpy(ids)
        attention_mask = torch.from_numpy(mask)
        if self.device != "cpu":
            input_ids = input_ids.to(self.device, non_blocking=True)
            attention_mask = attention_mask.to(self.device, non_blocking=True)
        try:
            with torch.inference_mode():
                output = self.model(input_ids=input_ids, attention_mask=attention_mask)
                if self.task == "text-classification":
                    probs = output.logits.float().softmax(dim=-1)
                    confidence, index = probs.max(dim=-1)
                    if self.scores:
                        return [
                            {"label": self._label(i), "confidence": c, "scores": row}
                            for i, c, row in zip(index.tolist(), confidence.tolist(), probs.tolist(), strict=True)
                        ]
                    return [
                        {"label": self._label(i), "confidence": c}
                        for i, c in zip(index.tolist(), confidence.tolist(), strict=True)
                    ]
                hidden = output.last_hidden_state.float()
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
                return [{"embedding": v} for v in vectors.cpu().tolist()]
        except RuntimeError as exc:
            if _is_oom(exc):
                raise _OutOfMemory(str(exc)) from exc
            raise

    def _label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else f"LABEL_{index}"


class _OutOfMemory(Exception):
    """A forward pass ran out of accelerator memory."""


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _truncating_backend(tokenizer: Any, max_length: int) -> Any:
    """A private copy of the fast tokenizer's Rust backend that truncates and never pads (None if slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length=max_length)
    return copy


# -------------------------------------------------------------------------------------------- loading


def detect_backend(model_dir: Path) -> str:
    """``onnx`` when the directory holds an exported graph (``model.onnx``), else ``torch``."""
    return "onnx" if (model_dir / ONNX_FILE).is_file() else "torch"


# Loaders of the backends other than torch, by name. ``prodai_cli.runtime`` imports each backend's module,
# which adds its loader here: a backend depends on this module, never the reverse.
BACKEND_LOADERS: dict[str, Callable[..., ModelRuntime]] = {}


def locate_model(source: str | os.PathLike[str], settings: Settings | None = None) -> ModelSource:
    """Find a model's files: a local Hugging Face directory, a downloaded MLflow model, or a registry ref.

    Args:
        source: A directory, or ``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``, ``models:/NAME@ALIAS``.
        settings: Settings for the registry (loaded from the usual places when None).

    Raises:
        InvalidModelError: A directory that holds no model.
        ModelNotFoundError: An unknown registry reference.

    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(path.resolve().name, "local", None, path, path, detect_backend(path))
        if (path / "model" / "config.json").is_file():
            tokenizer = path / "components" / "tokenizer"
            return ModelSource(
                path.resolve().name,
                "local",
                None,
                path / "model",
                tokenizer if tokenizer.is_dir() else path / "model",
                detect_backend(path / "model"),
            )
        raise InvalidModelError(
            f"{path} is not a model directory: it has neither config.json nor model/config.json",
            hint="Pass a Hugging Face model directory, a downloaded MLflow model, or NAME@ALIAS",
        )
    from prodai_cli.refs import looks_like_model_ref

    text = os.fspath(source)
    if not looks_like_model_ref(text):
        raise UsageError(
            f"{text!r} is neither a model directory nor a model reference",
            hint="Use NAME, NAME@ALIAS, NAME/VERSION, models:/NAME@ALIAS or a directory",
        )
    from prodai_cli.registry import Registry

    if settings is None:
        from prodai_cli.config import load_settings

        settings = load_settings()
    resolved = Registry(settings).resolve(text)
    info = resolved.info
    # The files decide (they are checked against their manifest); the registry's tag must agree with them.
    backend = detect_backend(resolved.model_dir)
    tagged = info.tags.get(BACKEND_TAG, "torch")
    if tagged != backend:
        raise InvalidModelError(
            f"{info.name}/{info.version} is tagged {BACKEND_TAG}={tagged} but its files are a {backend} model",
            hint="Export ONNX versions with prodai export REF --to onnx, which tags and stores them together",
        )
    return ModelSource(info.name, str(info.version), info.task, resolved.model_dir, resolved.tokenizer_dir, backend)


def model_max_length(tokenizer: Any, config: Any, model_dir: Path) -> int:
    """The most tokens an input may have: the smallest of what the model directory, tokenizer and config allow."""
    limits = []
    # A sentence-transformers export states the length it was trained and evaluated at; honour it so
    # embeddings match SentenceTransformer.encode on long inputs too.
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        import json

        try:
            st_max = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        except (OSError, ValueError):
            st_max = None
        if isinstance(st_max, int) and st_max > 0:
            limits.append(st_max)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models reserve the first positions for padding (514 positions, 512 usable).
        offset = 2 if "roberta" in str(getattr(config, "model_type", "")) else 0
        limits.append(positions - offset)
    return min(limits) if limits else 512


def load_runtime(
    source: str | os.PathLike[str],
    settings: Settings | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    max_length: int | None = None,
    task: str | None = None,
    trace_dir: Path | None = None,
) -> ModelRuntime:
    """Load a model for prediction.

    Args:
        source: A registry reference (``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``, ``models:/...``), a local
            Hugging Face model directory, or a downloaded MLflow model directory.
        settings: Settings for registry access (default: the usual config lookup).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (fp16 on GPU only).
        max_length: Truncate inputs to this many tokens (default and ceiling: the model's own maximum).
        task: Force a task; default is the registry's tag, else detected from the model's config.
        trace_dir: Load a torch model's stored trace from here when one matches (much faster to load, see
            :mod:`prodai_cli.runtime.traced`); without one the runtime can store it (``keep_trace``).

    Returns:
        The runtime, in eval mode on its device.

    Raises:
        UsageError: Bad device, precision, task or max_length.
        InvalidModelError: Files that do not load as a model and tokenizer.

    """
    if max_length is not None and max_length < 2:
        raise UsageError(f"max_length must be at least 2 tokens, got {max_length}")
    resolved_device = resolve_device(device)
    check_precision(precision, resolved_device)
    located = locate_model(source, settings)
    from prodai_cli.registry import detect_task, quiet_offline_env

    chosen_task = task or located.task or detect_task(located.model_dir)
    if chosen_task not in TASKS:
        raise UsageError(f"Unknown task {chosen_task!r}; choose one of {', '.join(TASKS)}")
    if located.backend != "torch":
        loader = BACKEND_LOADERS.get(located.backend)
        if loader is None:
            raise InvalidModelError(f"{located.model_dir}: no loader for backend {located.backend!r}")
        return loader(located, chosen_task, device=device, precision=precision, max_length=max_length)
    name = located.name if located.version == "local" else f"{located.name}/{located.version}"
    require_torch(
        f"{name} is a torch version: running it",
        hint="pip install 'prodai[torch]', or serve its ONNX export (prodai export REF --to onnx, where torch is)",
    )
    model: Any = None
    tokenizer: Any = None
    trace_ref: tuple[Path, str] | None = None
    if trace_dir is not None:
        from prodai_cli.runtime import traced

        key = traced.trace_key(located.model_dir, located.tokenizer_dir, chosen_task, precision, resolved_device)
        trace_ref = (trace_dir, key)
        loaded = traced.load(trace_dir, key, chosen_task, resolved_device)
        if loaded is not None:
            model, tokenizer = loaded  # no transformers import at all
    if model is None:
        quiet_offline_env()
        import transformers

        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(located.tokenizer_dir))
        except Exception as exc:  # transformers raises many types for a bad tokenizer
            raise InvalidModelError(f"{located.tokenizer_dir}: cannot load a tokenizer: {first_line(exc)}") from None
        model = _load_eager(transformers, located.model_dir, chosen_task, resolved_device, precision)
    limit = model_max_length(tokenizer, model.config, located.model_dir)
    if max_length is not None:
        limit = min(limit, max_length)
    runtime = ModelRuntime(
        source=located,
        task=chosen_task,
        model=model,
        tokenizer=tokenizer,
        device=resolved_device,
        precision=precision,
        max_length=limit,
    )
    if trace_ref is not None:
        from prodai_cli.runtime import traced

        runtime.trace_state = "traced" if isinstance(model, traced.TracedModel) else "eager"
        runtime._trace_ref = trace_ref
    return runtime


def _load_eager(transformers: Any, model_dir: Path, task: str, device: str, precision: str) -> Any:
    auto = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    try:
        model = auto.from_pretrained(str(model_dir))
    except Exception as exc:
        raise InvalidModelError(f"{model_dir}: cannot load the model: {first_line(exc)}") from None
    # Low precision casts the weights once rather than autocasting every call: on a CPU with AMX that
    # measured 1.6x faster than autocast (3.3x fp32), with embeddings still at cosine 0.9999 to fp32.
    if device != "cpu" or precision != "fp32":
        model = model.to(device, dtype=torch_dtype(precision))
    return model.eval()
