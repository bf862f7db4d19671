"""How busy this machine is while a load test runs: the factor latency SLOs are scaled by.

An absolute latency SLO (``p95 < 1s``) judges a server on a quiet machine. On a machine shared with other
work (a first install, an indexer, CI neighbours) every process gets a fraction of a CPU, so every request
takes longer for reasons that have nothing to do with the server. :class:`ContentionSampler` measures that
fraction: a thread spins for a few milliseconds of *its own* CPU time, twice a second, and records how much
wall time that took. On an idle core the ratio is ~1; with ten runnable processes on two cores it is ~5.
The median ratio over the run is the *latency scale*: a scaled SLO allows ``threshold x scale``.

It is a scale of the machine, not of the server: a server that is slow on its own (a slower model, a
sleep, a lock) is as slow against the scaled threshold as against the plain one, so a real regression
still fails. The scale is capped (``loadtest.max_latency_scale``) so that a machine too busy to judge
anything cannot turn every latency SLO into a pass.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

# CPU time each sample burns (thread time); short enough to cost ~2% of a core at two samples a second.
SPIN_CPU_S = 0.01
SAMPLE_EVERY_S = 0.5


@dataclass(frozen=True)
class LatencyScale:
    """The measured contention of a run.

    Attributes:
        factor: The scale applied to latency thresholds (median ratio, at least 1, at most ``limit``).
        measured: The median wall/CPU ratio before the cap (None when nothing was sampled).
        samples: How many samples the median is over.
        limit: The cap.

    """

    factor: float
    measured: float | None
    samples: int
    limit: float

    @property
    def capped(self) -> bool:
        """True when the machine was busier than the cap allows for."""
        return self.measured is not None and self.measured > self.limit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (summary.json's ``latency_scale``)."""
        return {
            "factor": self.factor,
            "measured": self.measured,
            "samples": self.samples,
            "limit": self.limit,
            "capped": self.capped,
        }


def spin_ratio(cpu_s: float = SPIN_CPU_S) -> float:
    """Wall time over this thread's CPU time for ``cpu_s`` seconds of busy work (1.0 on an idle core)."""
    wall0 = time.perf_counter()
    cpu0 = time.thread_time()
    while time.thread_time() - cpu0 < cpu_s:
        pass
    cpu = time.thread_time() - cpu0
    return (time.perf_counter() - wall0) / cpu if cpu > 0 else 1.0


class ContentionSampler:
    """Samples :func:`spin_ratio` on a background thread between :meth:`start` and :meth:`stop`.

    Args:
        limit: The cap of the resulting factor.
        every_s: Seconds between samples.

    """

    def __init__(self, limit: float, every_s: float = SAMPLE_EVERY_S) -> None:
        self.limit = limit
        self.every_s = every_s
        self.ratios: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin sampling (one sample right away)."""
        self._thread = threading.Thread(target=self._run, name="prodai-contention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ratios.append(spin_ratio())
            self._stop.wait(self.every_s)

    def stop(self) -> LatencyScale:
        """Stop sampling and return the scale."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return scale_from(list(self.ratios), self.limit)


def scale_from(ratios: list[float], limit: float) -> LatencyScale:
    """The latency scale of some samples: their median, clipped to [1, ``limit``]."""
    if not ratios:
        return LatencyScale(factor=1.0, measured=None, samples=0, limit=limit)
    measured = statistics.median(ratios)
    return LatencyScale(factor=min(max(measured, 1.0), limit), measured=measured, samples=len(ratios), limit=limit)
