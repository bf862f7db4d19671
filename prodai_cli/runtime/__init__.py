"""The inference runtime shared by ``prodai batch`` and the server.

``load_runtime(source)`` loads a registered version or a local model directory; ``ModelRuntime.predict``
runs length-sorted, token-budget batches and returns predictions in input order.
"""

from __future__ import annotations

from prodai_cli.runtime.batching import plan_batches
from prodai_cli.runtime.device import PRECISIONS, check_precision, resolve_device
from prodai_cli.runtime.model import (
    BACKEND_TAG,
    TASKS,
    Encoded,
    ModelRuntime,
    ModelSource,
    detect_backend,
    load_runtime,
    locate_model,
)
from prodai_cli.runtime.onnx import OnnxModelRuntime  # registers the onnx backend's loader

__all__ = [
    "BACKEND_TAG",
    "PRECISIONS",
    "TASKS",
    "Encoded",
    "ModelRuntime",
    "ModelSource",
    "OnnxModelRuntime",
    "check_precision",
    "detect_backend",
    "load_runtime",
    "locate_model",
    "plan_batches",
    "resolve_device",
]
