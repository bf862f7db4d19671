"""The inference runtime shared by ``prodai batch`` and the server.

``load_runtime(source)`` loads a registered version or a local model directory; ``ModelRuntime.predict``
runs length-sorted, token-budget batches and returns predictions in input order.
"""

from __future__ import annotations

from prodai_cli.runtime.batching import plan_batches
from prodai_cli.runtime.device import PRECISIONS, check_precision, resolve_device
from prodai_cli.runtime.model import TASKS, Encoded, ModelRuntime, ModelSource, load_runtime, locate_model

__all__ = [
    "PRECISIONS",
    "TASKS",
    "Encoded",
    "ModelRuntime",
    "ModelSource",
    "check_precision",
    "load_runtime",
    "locate_model",
    "plan_batches",
    "resolve_device",
]
