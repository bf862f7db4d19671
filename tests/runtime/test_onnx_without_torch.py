"""An ONNX version needs no torch: predict and `prodai batch` in an interpreter where torch is not installed.

The interpreter is this venv's, started with ``-S`` and a copy of site-packages made of links to everything but
torch (and its functorch/torchgen/nvidia parts): to Python and to transformers' probes torch is simply absent,
as in an ONNX-only install.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import run_without_torch, site_packages_without_torch

from prodai_cli.config import load_settings
from prodai_cli.runtime import load_runtime


def test_an_onnx_version_predicts_and_batches_without_torch_installed(onnx_project: Path, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    shutil.copytree(onnx_project, root)
    site = site_packages_without_torch(tmp_path / "site")
    probe = run_without_torch(site, root, "-c", "import torch")
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr

    texts = ["good movie", "the movie was very bad", "hello world " * 30]
    script = (
        "import json, sys\n"
        "from prodai_cli.runtime import load_runtime\n"
        "runtime = load_runtime('clf/3')\n"
        f"print(json.dumps([type(runtime).__name__, runtime.predict({texts!r}), 'torch' in sys.modules]))\n"
    )
    result = run_without_torch(site, root, "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    kind, predicted, torch_loaded = json.loads(result.stdout.strip().splitlines()[-1])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        expected = load_runtime("clf/3", load_settings()).predict(texts)
    finally:
        os.chdir(cwd)
    assert (kind, torch_loaded) == ("OnnxModelRuntime", False)
    assert [p["label"] for p in predicted] == [p["label"] for p in expected]
    assert [p["confidence"] for p in predicted] == pytest.approx([p["confidence"] for p in expected], abs=1e-6)

    source = root / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    job = run_without_torch(site, root, "-m", "prodai_cli", "batch", str(source), "--model", "clf/3", "--json")
    assert job.returncode == 0, job.stderr[-2000:]
    assert json.loads(job.stdout)["items"] == 3
    rows = [json.loads(line) for line in (root / "in.predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["label"], r["model_version"]) for r in rows] == [(p["label"], "3") for p in expected]
