"""Install size of prodai's core against the full install it replaced (issue 20: at least 450 MiB less).

Builds one clean virtualenv and grows it the way users choose, measuring ``du`` of its site-packages at each
step:

1. ``pip install prodai`` (the core: mlflow-skinny, the SQLite registry's sqlalchemy/alembic, pandas,
   transformers, the server; no torch, no full mlflow);
2. ``prodai[torch]`` (what registering and serving torch versions need);
3. ``prodai[torch,mlflow]``: the dependencies of the full install before the split (full mlflow and torch
   were core dependencies), the baseline.

Every step installs from this project directory with ``constraints/ci.txt`` (the CPU build of torch) and this
interpreter's versions as constraints, so the sizes are of the versions the tests ran. It then lists what
full mlflow adds, largest first. Pip's cache makes a second run a matter of unpacking (a minute or two).

Usage: .venv/bin/python bench/install_size.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
TARGET_MIB = 450

# Run inside the venv: every distribution with the bytes of the files its RECORD lists.
DIST_SIZES = """
import importlib.metadata as m, json, os
sizes = {}
for dist in m.distributions():
    total = 0
    for f in dist.files or []:
        path = dist.locate_file(f)
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    sizes[dist.metadata["Name"]] = total
print(json.dumps(sizes))
"""


def interpreter_pins(path: Path) -> Path:
    pins = set()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if name and name.lower() != "prodai" and "+" not in dist.version:
            pins.add(f"{name}=={dist.version}")
    path.write_text("\n".join(sorted(pins, key=str.lower)) + "\n", encoding="utf-8")
    return path


def du_mib(path: Path) -> float:
    """``du -s`` of ``path`` in MiB (disk usage, as the issue measured it)."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="Build the venv here and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="prodai-bench-install-"))
    venv = work / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    pins = interpreter_pins(work / "pins.txt")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    constraints = ["-c", str(REPO_ROOT / "constraints" / "ci.txt"), "-c", str(pins)]
    steps = [
        ("core (pip install prodai)", str(REPO_ROOT)),
        ("core + torch (prodai[torch])", f"{REPO_ROOT}[torch]"),
        ("before the split (prodai[torch,mlflow])", f"{REPO_ROOT}[torch,mlflow]"),
    ]
    results: list[tuple[str, float, dict[str, int], float]] = []
    for label, requirement in steps:
        started = time.perf_counter()
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *constraints, requirement],
            env=env,
            check=True,
        )
        seconds = time.perf_counter() - started
        sizes = json.loads(
            subprocess.run([python, "-c", DIST_SIZES], capture_output=True, text=True, check=True, env=env).stdout
        )
        results.append((label, du_mib(site), sizes, seconds))
    print(f"site-packages of one venv, grown step by step (Python {sys.version.split()[0]}, {site}):")
    print(f"  {'install':<42} {'du MiB':>8} {'dists':>6} {'pip s':>6}")
    for label, size, sizes, seconds in results:
        print(f"  {label:<42} {size:>8,.0f} {len(sizes):>6} {seconds:>6.0f}")
    core, with_torch, full = results
    saved = full[1] - with_torch[1]
    verdict = "OK" if saved >= TARGET_MIB else "SHORT"
    print(f"  core + torch vs before the split: {saved:,.0f} MiB less (target >= {TARGET_MIB} MiB: {verdict})")
    print(f"  core without torch vs before the split: {full[1] - core[1]:,.0f} MiB less")
    added = {name: size for name, size in full[2].items() if name not in with_torch[2]}
    print(f"what full mlflow adds ({len(added)} distributions, largest first):")
    for name, size in sorted(added.items(), key=lambda item: -item[1])[:15]:
        print(f"  {name:<30} {size / MIB:>8,.1f} MiB")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
