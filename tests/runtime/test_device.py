"""Device choice is cheap when it can be: no torch import for ``cpu``, nor for ``auto`` without a GPU driver."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prodai_cli.errors import UsageError
from prodai_cli.runtime.device import accelerator_possible, resolve_device


def _in_fresh_process(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_cpu_never_imports_torch() -> None:
    code = (
        "import sys\nfrom prodai_cli.runtime.device import resolve_device\n"
        "print(resolve_device('cpu'), 'torch' in sys.modules)"
    )
    assert _in_fresh_process(code) == "cpu False"


def test_auto_asks_torch_only_when_a_gpu_driver_is_present() -> None:
    code = (
        "import sys\nfrom prodai_cli.runtime.device import resolve_device, accelerator_possible\n"
        "print(accelerator_possible(), resolve_device('auto'), 'torch' in sys.modules)"
    )
    possible, device, imported = _in_fresh_process(code).split()
    if possible == "False":
        assert (device, imported) == ("cpu", "False")
    else:  # a GPU machine: torch decides, and agrees with itself
        import torch

        assert imported == "True"
        assert device == ("cuda:0" if torch.cuda.is_available() else device)


def test_hidden_gpus_mean_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not accelerator_possible()
    assert resolve_device("auto") == "cpu"


def test_unknown_or_missing_devices_are_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="Unknown device"):
        resolve_device("tpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")
