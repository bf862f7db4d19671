"""torch is the `torch` extra: where it is needed and absent, prodai says which extra to install (exit 2).

Run in an interpreter where torch is not installed (tests/helpers.py: ``site_packages_without_torch``);
tests/integration/test_core_install.py checks the same in a real core install.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import run_without_torch, site_packages_without_torch

HINT = "pip install 'prodai[torch]'"


def test_without_torch_a_torch_version_a_gpu_and_register_name_the_torch_extra(
    onnx_project: Path, tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    root = tmp_path / "proj"
    shutil.copytree(onnx_project, root)
    site = site_packages_without_torch(tmp_path / "site")
    source = root / "in.jsonl"
    source.write_text(json.dumps({"text": "good movie"}) + "\n", encoding="utf-8")

    batch = run_without_torch(site, root, "-m", "prodai_cli", "batch", str(source), "--model", "clf/1")
    assert batch.returncode == 2, batch.stderr[-2000:]
    assert "clf/1 is a torch version: running it needs torch, which is not installed" in batch.stderr
    assert "prodai export REF --to onnx" in batch.stderr and "Traceback" not in batch.stderr

    register = run_without_torch(site, root, "-m", "prodai_cli", "register", str(tiny_classifier_dir), "--name", "new")
    assert register.returncode == 2, register.stderr[-2000:]
    assert "Registering a model directory" in register.stderr and HINT in register.stderr

    device = run_without_torch(
        site,
        root,
        "-c",
        "from prodai_cli.errors import MissingExtraError\n"
        "from prodai_cli.runtime import resolve_device\n"
        "try:\n"
        "    resolve_device('cuda')\n"
        "except MissingExtraError as exc:\n"
        "    print(exc.extra, exc.hint, exc, sep='|')\n",
    )
    assert device.returncode == 0, device.stderr[-2000:]
    assert device.stdout.strip() == f"torch|{HINT}|Device cuda needs torch, which is not installed"

    # An ONNX version with --threads: nothing of torch's to pin, and the job runs.
    other = root / "onnx.jsonl"
    shutil.copy(source, other)
    onnx = run_without_torch(
        site, root, "-m", "prodai_cli", "batch", str(other), "--model", "clf/3", "--threads", "1", "--json"
    )
    assert onnx.returncode == 0, onnx.stderr[-2000:]
    assert json.loads(onnx.stdout)["items"] == 1
