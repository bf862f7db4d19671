"""Device and precision choice: turn ``auto|cpu|cuda[:N]|mps`` and ``fp32|bf16|fp16`` into torch objects.

Errors are usage errors with the reason, raised before any model is loaded.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prodai_cli.errors import UsageError
from prodai_cli.extras import installed, require_torch

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(?::(\d+))?)$")


def resolve_device(device: str = "auto") -> str:
    """Resolve a device name to one this machine has.

    Args:
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        A concrete torch device string (``cpu``, ``cuda:0``, ``mps``).

    Raises:
        UsageError: An unknown name, or a device this machine does not have.

    """
    match = _DEVICE.match(device.strip().lower())
    if not match:
        raise UsageError(f"Unknown device {device!r}", hint="Use auto, cpu, cuda, cuda:N or mps")
    name = match.group(1)
    if name == "cpu" or (name == "auto" and not accelerator_possible()):
        return "cpu"  # without importing torch or probing CUDA (over a second on a CPU-only machine)
    if not installed("torch"):
        if name == "auto":
            return "cpu"  # a torch-free install runs ONNX versions, on the CPU, whatever GPU the machine has
        require_torch(f"Device {device}")
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda:0" if cuda else "mps" if mps else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "mps":
        if not mps:
            raise UsageError("Device mps was requested but this machine has no Apple GPU", hint="Use --device cpu")
        return "mps"
    if not cuda:
        raise UsageError(f"Device {device} was requested but no CUDA GPU is visible", hint="Use --device cpu")
    index = int(match.group(2) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"Device {device} does not exist: this machine has {count} CUDA GPU(s)")
    return f"cuda:{index}"


def accelerator_possible() -> bool:
    """False when this machine certainly has no GPU torch could use: no NVIDIA or AMD driver, not a Mac.

    Cheap checks of device files only; when any says "maybe", torch is asked (``resolve_device``).
    """
    import sys

    if sys.platform == "darwin":
        return True  # Apple GPUs (mps) have no device file to look for
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False  # the user hid every GPU from this process
    # /proc/driver/nvidia exists once the NVIDIA kernel driver is loaded; containers given a GPU see
    # /dev/nvidia0 (or /dev/nvidiactl); /dev/kfd is AMD's ROCm driver, which torch also calls cuda.
    markers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
    return any(os.path.exists(path) for path in markers)


def check_precision(precision: str, device: str) -> None:
    """Refuse precisions the device cannot run.

    Raises:
        UsageError: Unknown precision, or fp16 on a CPU (half-precision kernels there are slow or missing).

    """
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}", hint=f"Use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device == "cpu":
        raise UsageError(
            "Precision fp16 needs a GPU; this run is on the CPU",
            hint="Use --precision bf16 (fast on CPUs with AVX512-BF16/AMX) or fp32",
        )


def torch_dtype(precision: str) -> Any:
    """The torch dtype of a precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
