"""The ONNX Runtime backend: the same runtime (tokenizing, token-budget batches, outputs) over an exported graph.

A version exported by ``prodai export --to onnx`` keeps the layout of a registered transformers version
(``model/`` with ``config.json``, ``components/tokenizer/``) but holds ``model/model.onnx`` and
``model/prodai_runtime.json`` instead of torch weights. :func:`prodai_cli.runtime.load_runtime` sees those
files and builds an :class:`OnnxModelRuntime`, so the server, ``prodai batch`` and the A/B router treat an
ONNX version like any other. Only this module imports ``onnxruntime``, and only when such a version loads;
nothing here imports torch.

The graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes) and returns
``logits`` (classification) or ``last_hidden_state`` (embedding); softmax and mean pooling run here in
numpy, the same arithmetic the torch backend does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import InvalidModelError, UsageError, first_line
from prodai_cli.runtime.model import BACKEND_LOADERS, ONNX_FILE, ModelRuntime, ModelSource, model_max_length

if TYPE_CHECKING:
    import numpy as np

RUNTIME_FILE = "prodai_runtime.json"
BACKENDS: tuple[str, ...] = ("torch", "onnx")
# Precisions an ONNX graph is stored in (int8: weights quantized dynamically, activations fp32).
ONNX_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = {"text-classification": "logits", "embedding": "last_hidden_state"}


def read_runtime_info(model_dir: Path) -> dict[str, Any]:
    """The ``prodai_runtime.json`` an export wrote beside its graph (backend, precision, task, exporter).

    Raises:
        InvalidModelError: The file is missing or not a JSON object.

    """
    path = model_dir / RUNTIME_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelError(
            f"{model_dir} holds {ONNX_FILE} but no {RUNTIME_FILE}",
            hint="Create ONNX versions with prodai export REF --to onnx",
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{path} is unreadable: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidModelError(f"{path} is not a JSON object")
    return data


@dataclass(frozen=True)
class OnnxModel:
    """What :class:`ModelRuntime` reads from its ``model``: the config (labels, sizes), plus the session."""

    session: Any
    config: Any


class OnnxModelRuntime(ModelRuntime):
    """A :class:`ModelRuntime` whose forward pass is an ONNX Runtime session on the CPU."""

    backend = "onnx"

    def __init__(self, *, output_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._output_name = output_name

    def _forward(self, rows: list[list[int]]) -> list[dict[str, Any]]:
        import numpy as np

        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        (output,) = self.model.session.run([self._output_name], {"input_ids": ids, "attention_mask": mask})
        output = np.asarray(output, dtype=np.float32)
        if self.task == "text-classification":
            probs = softmax(output)
            index = probs.argmax(axis=-1)
            confidence = probs[np.arange(len(rows)), index]
            if self.scores:
                return [
                    {"label": self._label(i), "confidence": c, "scores": row}
                    for i, c, row in zip(index.tolist(), confidence.tolist(), probs.tolist(), strict=True)
                ]
            return [
                {"label": self._label(i), "confidence": c}
                for i, c in zip(index.tolist(), confidence.tolist(), strict=True)
            ]
        return [{"embedding": v} for v in mean_pool(output, mask).tolist()]

    def compute_threads(self) -> int:
        """CPU threads ONNX Runtime's pool uses (its default: one per core this process may run on)."""
        import os

        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def describe(self) -> dict[str, Any]:
        """What was loaded (with ``backend``), for summaries and health endpoints."""
        return {**super().describe(), "backend": self.backend}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (max subtracted first, as torch does)."""
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the unmasked token vectors, L2-normalised (the torch backend's embedding)."""
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return np.asarray(pooled / norms, dtype=np.float32)


def load_onnx_runtime(
    located: ModelSource, task: str, *, device: str, precision: str, max_length: int | None
) -> OnnxModelRuntime:
    """Load an exported version's graph and tokenizer into a runtime.

    Args:
        located: Where the files are (``model_dir`` holds ``model.onnx``).
        task: ``text-classification`` or ``embedding``.
        device: The device asked for: ONNX versions run on the CPU, so only ``auto`` and ``cpu`` are accepted.
        precision: The precision asked for: the graph's own precision applies, so only the default ``fp32``
            is accepted (bf16/fp16 are torch casts; an int8 graph is its own version).
        max_length: Truncate inputs to this many tokens (default and ceiling: the model's own maximum).

    Raises:
        UsageError: A GPU device or a low precision asked for an ONNX version, or onnxruntime missing.
        InvalidModelError: Files that do not load.

    """
    name = f"{located.name}/{located.version}"
    if device.strip().lower() not in ("auto", "cpu"):
        raise UsageError(
            f"{name} is an ONNX version, which runs on the CPU; device {device!r} was asked for",
            hint="Use --device cpu (or auto), or serve the torch version on the GPU",
        )
    if precision != "fp32":
        raise UsageError(
            f"{name} is an ONNX version, stored at the precision it was exported in; precision {precision!r} "
            "applies to torch versions only",
            hint="Use precision fp32 for ONNX versions (an int8 export is its own version)",
        )
    info = read_runtime_info(located.model_dir)
    graph_precision = str(info.get("precision", "fp32"))
    if graph_precision not in ONNX_PRECISIONS:
        raise InvalidModelError(f"{located.model_dir / RUNTIME_FILE}: unknown precision {graph_precision!r}")
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(
            f"{name} is an ONNX version and onnxruntime is not installed",
            hint="pip install 'prodai[onnx]'",
        ) from None
    from prodai_cli.registry import quiet_offline_env

    quiet_offline_env()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(located.tokenizer_dir))
        config = transformers.AutoConfig.from_pretrained(str(located.model_dir))
    except Exception as exc:  # transformers raises many types for bad files
        raise InvalidModelError(
            f"{located.model_dir}: cannot load the tokenizer or config: {first_line(exc)}"
        ) from None
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers and the like are not the user's concern
    try:
        session = onnxruntime.InferenceSession(
            str(located.model_dir / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise InvalidModelError(f"{located.model_dir / ONNX_FILE}: cannot load the graph: {first_line(exc)}") from None
    output_name = OUTPUT_NAME[task]
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if not set(INPUT_NAMES) <= inputs or output_name not in outputs:
        raise InvalidModelError(
            f"{located.model_dir / ONNX_FILE} does not fit task {task}: inputs {sorted(inputs)}, outputs "
            f"{sorted(outputs)} (expected {', '.join(INPUT_NAMES)} -> {output_name})"
        )
    limit = model_max_length(tokenizer, config, located.model_dir)
    if max_length is not None:
        limit = min(limit, max_length)
    return OnnxModelRuntime(
        output_name=output_name,
        source=located,
        task=task,
        model=OnnxModel(session=session, config=config),
        tokenizer=tokenizer,
        device="cpu",
        precision=graph_precision,
        max_length=limit,
    )


BACKEND_LOADERS["onnx"] = load_onnx_runtime
