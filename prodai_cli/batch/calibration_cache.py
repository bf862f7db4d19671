"""Calibrated token budgets remembered per model version, precision and machine.

Calibration costs seconds per job and, on a CPU, picks budgets whose throughput differs by a few percent,
so a job whose model version, precision, device, threads and input lengths match an earlier one reuses
its budget instead of probing again.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_ENTRIES = 256  # the file stays small however many models and machines a project sees


def cache_key(model: dict[str, Any], precision: str, device: str, threads: int, lengths: Sequence[int]) -> str:
    """What a calibrated budget depends on: model version, precision, device, machine and input length class."""
    median = int(statistics.median(lengths)) if lengths else 0
    length_class = max(1, median).bit_length()  # power-of-two bucket: similar inputs share a budget
    version = model.get("fingerprint") or model.get("version")
    machine = f"{platform.node()}|{platform.machine()}|{os.cpu_count()}"
    return f"{model.get('name')}|{version}|{precision}|{device}|t{threads}|{machine}|L{length_class}"


def _load(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: calibrate again, never fail the job over a cache
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v > 0}


def lookup(path: Path, key: str) -> int | None:
    """The remembered budget for ``key``, or None."""
    return _load(path).get(key)


def store(path: Path, key: str, budget: int) -> None:
    """Remember ``budget`` for ``key`` (atomic replace; failures to write are ignored)."""
    data = _load(path)
    data.pop(key, None)
    data[key] = budget
    while len(data) > MAX_ENTRIES:
        data.pop(next(iter(data)))  # oldest first: dicts keep insertion order
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
