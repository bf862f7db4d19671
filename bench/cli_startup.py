"""How fast `prodai --help` answers, against `mlflow --help`, measured in the same run.

    python bench/cli_startup.py [--runs 7]

Prints the median wall time of each (interleaved runs, one warm-up each) and the ratio. The goal is
`prodai --help` under 0.5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    commands = {"prodai --help": [str(BIN / "prodai"), "--help"], "mlflow --help": [str(BIN / "mlflow"), "--help"]}
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():
        _time(cmd)  # warm the page cache
    for _ in range(args.runs):
        for name, cmd in commands.items():  # interleaved, so machine noise hits both alike
            samples[name].append(_time(cmd))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in medians.items():
        print(f"{name:16s} median {value * 1000:7.1f} ms  (min {min(samples[name]) * 1000:.1f} ms, n={args.runs})")
    ratio = medians["mlflow --help"] / medians["prodai --help"]
    print(
        f"prodai --help is {ratio:.1f}x faster than mlflow --help; goal < 500 ms: "
        f"{'met' if medians['prodai --help'] < 0.5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
