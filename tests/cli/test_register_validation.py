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


def test_the_tiny_models_tokenizer_has_its_vocabulary(tiny_classifier_dir: Path) -> None:
    """The fixture itself: transformers 5 ignored `vocab_file`, and the tiny models got 5-token tokenizers."""
    from helpers import VOCAB
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_classifier_dir))
    assert len(tokenizer) == len(set(VOCAB))
    ids = tokenizer("good movie")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 4


def test_a_tokenizer_of_special_tokens_only_is_refused(project: Path, tiny_classifier_dir: Path) -> None:
    """What the tiny models used to carry: a tokenizer of [PAD] [UNK] [CLS] [SEP] [MASK] for an 80-row embedding."""
    from transformers import BertTokenizerFast

    broken = _copy(tiny_classifier_dir, project / "five", keep=("config.json", "model.safetensors"))
    BertTokenizerFast(model_max_length=128).save_pretrained(str(broken))
    result = run_cli("register", str(broken), "--name", "clf", cwd=project)
    assert result.exit_code == 1, result.stdout
    assert "the tokenizer has 5 entries but the model's embedding has 80 rows" in result.stderr
    assert "not this model's tokenizer" in result.stderr and "tokenizer.save_pretrained" in result.stderr
    assert _model_versions(project) == 0


def test_a_tokenizer_larger_than_the_embedding_is_refused(project: Path, tiny_classifier_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    small = _copy(tiny_classifier_dir, project / "small")
    model = AutoModelForSequenceClassification.from_pretrained(str(small))
    model.resize_token_embeddings(60)
    model.save_pretrained(str(small))
    result = run_cli("register", str(small), "--name", "clf", cwd=project)
    assert result.exit_code == 1, result.stdout
    assert "the tokenizer has 79 entries but the model's embedding has 60 rows" in result.stderr
    assert "token id of 60 or more would crash the model" in result.stderr
    assert _model_versions(project) == 0
