"""Issue 15.5: `register` validates a model directory before it stores anything (tokenizer files, one
forward pass); a refusal names what is wrong. Real tiny models, the real CLI, a real SQLite registry."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def _model_versions(root: Path) -> int:
    db = root / ".prodai" / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("select count(*) from model_versions").fetchone()[0])


def _copy(source: Path, target: Path, keep: tuple[str, ...] | None = None) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if keep is None or path.name in keep:
            shutil.copy2(path, target / path.name)
    return target


def test_weights_without_a_tokenizer_are_refused(project: Path, tiny_classifier_dir: Path) -> None:
    """The reproduction: only config.json and model.safetensors used to register with a 5-token tokenizer."""
    broken = _copy(tiny_classifier_dir, project / "broken", keep=("config.json", "model.safetensors"))
    result = run_cli("register", str(broken), "--name", "clf", cwd=project)
    assert result.exit_code == 1, result.stdout
    assert "has no tokenizer files" in result.stderr and "tokenizer.save_pretrained" in result.stderr
    assert _model_versions(project) == 0


def test_weights_that_give_nan_are_refused(project: Path, tiny_classifier_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    nan = _copy(tiny_classifier_dir, project / "nan")
    weights = load_file(str(nan / "model.safetensors"))
    weights = {k: torch.full_like(v, float("nan")) if "classifier" in k else v for k, v in weights.items()}
    save_file(weights, str(nan / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("register", str(nan), "--name", "clf", cwd=project)
    assert result.exit_code == 1
    assert "a forward pass on a sample text returned NaN" in result.stderr
    assert _model_versions(project) == 0


def test_a_complete_model_still_registers(project: Path, tiny_embedder_dir: Path) -> None:
    result = run_cli("register", str(tiny_embedder_dir), "--name", "emb", "--json", cwd=project)
    assert result.exit_code == 0, result.stderr
    assert _model_versions(project) == 1
