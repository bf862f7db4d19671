"""Where a ``prodai batch`` run spends its wall time, phase by phase (``-v`` and ``--json``'s ``phases``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASE_ORDER = (
    "checks",
    "fingerprint",
    "registry",
    "open_output",
    "device",
    "load",
    "calibrate",
    "read_tokenize",
    "forward",
    "write",
    "trace",
    "ray",
    "finish",
)


class PhaseTimer:
    """Accumulates seconds per named phase; phases never overlap on the timing thread, so they add up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to ``name`` (even if it raises)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begun)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def to_dict(self) -> dict[str, float]:
        """Phases in pipeline order, rounded to milliseconds (unknown names last)."""
        known = [name for name in PHASE_ORDER if name in self.seconds]
        rest = sorted(set(self.seconds) - set(PHASE_ORDER))
        return {name: round(self.seconds[name], 3) for name in known + rest}
