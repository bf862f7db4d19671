"""TorchScript traces of torch model versions: made and checked by one ``prodai batch`` job, loaded by the next.

Why: on a CPU most of a job's fixed cost before its first forward pass was building the transformers model
class. ``from_pretrained`` imports transformers' whole modelling stack (``torch.distributed``,
``torch._dynamo``, and SciPy's optimizers where SciPy is installed): about 2 s of the 4.3-5.7 s a job spent
before its first forward pass on a 2-core machine, while reading the weights took 5 ms. A trace of the same
model loads with ``torch.jit.load`` in about 0.1 s and needs no modelling code at all, and it replays the
same aten operations, so its outputs equal the eager model's; that is checked on the job's own inputs before
a trace is kept. ``torch.export`` was measured too and not used: ``torch.export.load`` alone costs ~2.4 s of
imports.

Beside the trace the job keeps what the runtime reads from the tokenizer and config (the Rust tokenizer's
own JSON, the pad id, the length limits, the labels), so a job that loads a trace imports neither
transformers (0.6 s) nor its tokenizer classes (0.35 s): only torch and the ``tokenizers`` library.

A trace is keyed by the model and tokenizer files (the version's SHA-256 manifest, or a local directory's
file sizes and times), the task, precision and device, and the torch, transformers and trace-format versions;
anything else is a different file. It is stored with its own SHA-256, checked at load like the model files
themselves. A model whose trace does not reproduce the eager outputs gets a marker instead, so later jobs do
not trace it again. Any failure here falls back to the eager model: a trace only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodai_cli.model_cache import MANIFEST_FILE

_log = logging.getLogger(__name__)

TRACE_FORMAT = 1
# Traces are as big as the weights; the oldest beyond this many are removed when a new one is stored.
MAX_TRACES = 8
# How far a trace's outputs may be from the eager model's (the same kernels run, so fp32 agrees to rounding).
TOLERANCE = {"fp32": (1e-4, 1e-5), "bf16": (2e-2, 2e-2), "fp16": (1e-2, 1e-2)}  # (rtol, atol)
# Rows checked against the eager model when a trace is made: short and long inputs, padded and not.
CHECK_ROWS = 16


@dataclass
class TraceOutput:
    """What the runtime reads from a forward pass (the eager model's output has the same attribute)."""

    logits: Any = None
    last_hidden_state: Any = None


class StoredConfig:
    """The parts of a transformers config the runtime and server read, as stored beside a trace."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.id2label = {int(k): str(v) for k, v in (fields.get("id2label") or {}).items()}
        self.max_position_embeddings = fields.get("max_position_embeddings")
        self.model_type = fields.get("model_type")
        self.hidden_size = fields.get("hidden_size")

    @staticmethod
    def fields(config: Any) -> dict[str, Any]:
        """What to store of a transformers config."""
        id2label = getattr(config, "id2label", None) or {}
        return {
            "id2label": {str(k): str(v) for k, v in id2label.items()},
            "max_position_embeddings": getattr(config, "max_position_embeddings", None),
            "model_type": getattr(config, "model_type", None),
            "hidden_size": getattr(config, "hidden_size", None),
        }


class StoredTokenizer:
    """A fast tokenizer rebuilt from its Rust backend's JSON: all the runtime uses of a tokenizer."""

    is_fast = True

    def __init__(self, backend_json: str, pad_token_id: int | None, model_max_length: int | None) -> None:
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_str(backend_json)
        self.pad_token_id = pad_token_id
        self.model_max_length = model_max_length


class TracedModel:
    """A loaded trace, called like the transformers model it was made from.

    Attributes:
        config: The parts of the model's config the runtime reads (labels, limits, hidden size).
        path: The trace file.

    """

    def __init__(self, module: Any, config: Any, task: str, path: Path) -> None:
        self.module = module
        self.config = config
        self.path = path
        self._field = "logits" if task == "text-classification" else "last_hidden_state"

    def __call__(self, *, input_ids: Any, attention_mask: Any) -> TraceOutput:
        """One forward pass, its output under the eager model's attribute name."""
        import torch

        # The profiling executor would re-specialise the graph for every new input shape (batches vary in
        # both dimensions here); the plain executor ran at the eager model's speed or better, measured.
        with torch.jit.optimized_execution(False):
            return TraceOutput(**{self._field: self.module(input_ids, attention_mask)})


def trace_key(model_dir: Path, tokenizer_dir: Path, task: str, precision: str, device: str) -> str:
    """The identity of a trace: model files, task, precision, device and the library versions that made it."""
    from importlib.metadata import version

    import torch

    try:
        transformers_version = version("transformers")
    except Exception:  # a broken install fails later, at load, with a clear error
        transformers_version = "?"
    parts = [
        f"format={TRACE_FORMAT}",
        f"files={_files_digest(model_dir, tokenizer_dir)}",
        f"task={task}",
        f"precision={precision}",
        f"device={device}",
        f"torch={torch.__version__}",
        f"transformers={transformers_version}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _files_digest(model_dir: Path, tokenizer_dir: Path) -> str:
    # A registry version's files (model and tokenizer) were checked against its manifest when they were
    # located; a local directory has no manifest, so its files' names, sizes and modification times stand in
    # (an edit makes a new key).
    for folder in (model_dir, model_dir.parent):
        manifest = folder / MANIFEST_FILE
        if manifest.is_file():
            return hashlib.sha256(manifest.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for folder in dict.fromkeys((model_dir.resolve(), tokenizer_dir.resolve())):
        digest.update(f"{folder}\n".encode())
        for item in sorted(folder.iterdir()):
            if item.is_file():
                stat = item.stat()
                digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def trace_file(trace_dir: Path, key: str) -> Path:
    """Where the trace for ``key`` lives (its sidecar is the same name with ``.json``)."""
    return trace_dir / f"{key}.pt"


def load(trace_dir: Path, key: str, task: str, device: str) -> tuple[TracedModel, StoredTokenizer] | None:
    """The stored trace for ``key`` and its tokenizer, or None (none stored, refused, or it fails to check or load)."""
    path = trace_file(trace_dir, key)
    meta = _read_meta(path)
    if meta is None or meta.get("status") != "ok" or not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if digest != meta.get("sha256"):
            _log.warning("The trace %s does not match its recorded SHA-256: removing it", path)
            _remove(path)
            return None
        tokenizer = StoredTokenizer(meta["tokenizer"], meta.get("pad_token_id"), meta.get("model_max_length"))
        config = StoredConfig(meta.get("config") or {})  # a damaged sidecar fails here, not in the job
        import torch

        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # a damaged or foreign file: the eager model still works
        _log.warning("Cannot load the trace %s (%s): using the model itself", path, exc)
        _remove(path)
        return None
    os.utime(path)  # recently used: evicted last
    return TracedModel(module, config, task, path), tokenizer


def store(
    trace_dir: Path,
    key: str,
    model: Any,
    tokenizer: Any,
    task: str,
    precision: str,
    rows: Sequence[Sequence[int]],
) -> str:
    """Trace ``model`` on ``rows``, check it against the model on them, and keep it under ``key``.

    Args:
        trace_dir: Where traces are kept.
        key: From :func:`trace_key`.
        model: The eager transformers model (in eval mode, on its device and dtype).
        tokenizer: Its transformers tokenizer (a fast one; a slow one is refused: its Python code cannot be kept).
        task: ``text-classification`` or ``embedding``.
        precision: Sets the tolerance of the check.
        rows: Token ids of real inputs (the job's sample); the check runs them short and long, padded.

    Returns:
        ``stored``, ``refused`` (outputs differ: a marker stops later attempts) or ``failed`` (could not
        trace or write; tried again next time).

    """
    import warnings

    import torch

    path = trace_file(trace_dir, key)
    field = "logits" if task == "text-classification" else "last_hidden_state"
    device = next(model.parameters()).device
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        _write_meta(path, {"status": "refused", "reason": "slow tokenizer"})
        return "refused"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limit = getattr(tokenizer, "model_max_length", None)
    saved = {
        "tokenizer": backend.to_str(),
        "pad_token_id": tokenizer.pad_token_id,
        "model_max_length": limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None,
        "config": StoredConfig.fields(model.config),
    }

    class _Wrapper(torch.nn.Module):  # type: ignore[misc]  # torch is untyped where it is optional
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), field)

    ordered = sorted((list(r) for r in rows if r), key=len)
    if len(ordered) < 2 or not _writable(trace_dir):  # e.g. a read-only container: do not trace in vain
        return "failed"
    step = max(1, len(ordered) // CHECK_ROWS)
    picked = ordered[::step][:CHECK_ROWS]
    example = _tensors(picked[: len(picked) // 2 + 1], pad, device)  # traced on some rows...
    checks = [_tensors(picked, pad, device), _tensors(picked[-1:], pad, device)]  # ...checked on others too
    started = time.perf_counter()
    try:
        wrapper = _Wrapper(model).eval()
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")  # TracerWarnings and torch.jit's deprecation notice
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            for ids, mask in (example, *checks):
                expected = wrapper(ids, mask).float()
                got = traced(ids, mask).float()
                rtol, atol = TOLERANCE.get(precision, TOLERANCE["fp32"])
                if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=atol):
                    worst = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
                    _log.info("The trace of %s differs from the model by %g: not kept", key, worst)
                    _write_meta(path, {"status": "refused", "max_abs_diff": worst})
                    return "refused"
        trace_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.jit.save(traced, str(tmp))
        with open(tmp, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        os.replace(tmp, path)
        seconds = round(time.perf_counter() - started, 3)
        _write_meta(path, {"status": "ok", "sha256": digest, "seconds": seconds, **saved})
    except Exception as exc:  # tracing is an optimisation: never fail a job over it
        _log.info("Could not trace %s: %s", key, exc)
        for leftover in trace_dir.glob(f".{path.name}.tmp*"):
            _remove(leftover)
        return "failed"
    _evict(trace_dir, keep=path)
    return "stored"


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """Hold transformers' own log lines while tracing (it reads every model attribute, some of which log).

    Its handler writes plain text to stderr, which would break a server's JSON log lines.
    """
    logger = logging.getLogger("transformers")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def known(trace_dir: Path, key: str) -> bool:
    """Whether a trace was stored or refused for ``key`` (either way, no need to trace it again)."""
    return _read_meta(trace_file(trace_dir, key)) is not None


def _writable(folder: Path) -> bool:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return os.access(existing, os.W_OK)


def _tensors(rows: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    target = _meta_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"format": TRACE_FORMAT, **meta}), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        pass


def _remove(path: Path) -> None:
    for item in (path, _meta_path(path)):
        with contextlib.suppress(OSError):
            item.unlink()


def _evict(trace_dir: Path, keep: Path) -> None:
    traces = sorted(trace_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    for old in traces[: max(0, len(traces) - MAX_TRACES)]:
        if old != keep:
            _remove(old)
