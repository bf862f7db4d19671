"""Optional parts of the install: is a library there, and the error that names the extra when it is not.

torch is an extra (``prodai[torch]``). Without it prodai still keeps the registry and serves and batch-predicts
ONNX versions (onnxruntime comes with ``prodai[onnx]``); registering a model directory, exporting, and running
a torch version need torch. Each of those places asks :func:`require_torch` first, so a torch-free install
answers with the command that fixes it instead of a ``ModuleNotFoundError`` or a transformers message about
PyTorch.
"""

from __future__ import annotations

import importlib.util
import sys

from prodai_cli.errors import MissingExtraError

TORCH_EXTRA = "torch"


def installed(module: str) -> bool:
    """True when ``module`` can be imported here, found without importing it (torch takes seconds to import)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
        return False


def require_torch(needed_for: str, *, hint: str | None = None) -> None:
    """Raise :class:`MissingExtraError` naming ``prodai[torch]`` when torch is not installed.

    Args:
        needed_for: What needs torch, as the start of the message (``"Registering a model"``).
        hint: A next step instead of the plain ``pip install 'prodai[torch]'``.

    Raises:
        MissingExtraError: torch is not installed.

    """
    if not installed("torch"):
        raise MissingExtraError(
            f"{needed_for} needs torch, which is not installed",
            extra=TORCH_EXTRA,
            hint=hint,
        )
