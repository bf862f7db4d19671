"""Shared fixtures: tiny random models built locally, isolated project directories, a CLI runner.

Nothing here fakes a service: the registry is a real MLflow SQLite store in a temp directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Never let a library reach for a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [str(d) for d in range(10)]
    + ["hello", "world", "good", "bad", "movie", "great", "terrible", "the", "a", "is", "was", "not", "very"]
    + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
)


def build_tiny_model(directory: Path, task: str = "text-classification", seed: int = 0, num_labels: int = 2) -> Path:
    """Save a random 2-layer BERT (classification head or bare encoder) with a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), model_max_length=128)
    labels = ["NEGATIVE", "POSITIVE", "NEUTRAL", "MIXED"][:num_labels]
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if task == "text-classification" else BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-classification model directory (labels NEGATIVE/POSITIVE)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-clf", "text-classification", seed=0)


@pytest.fixture(scope="session")
def tiny_classifier_dir_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny classifier with other weights (a different 'version')."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-clf-b", "text-classification", seed=1)


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder without a head (embedding task)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-emb", "embedding", seed=2)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as the working directory, with no PRODAI_* leaking in."""
    for name in list(os.environ):
        if name.startswith("PRODAI_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class CliResult:
    """Outcome of one real `prodai` process."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run `python -m prodai_cli ARGS` as a real subprocess (exit codes and streams exactly as a user sees them)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "prodai_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(project: Path):  # type: ignore[no-untyped-def]
    """Run the real CLI in the project directory: ``cli("models", "list", "--json")``."""

    def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        return run_cli(*args, cwd=project, env=env, timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def registered_project(
    tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path, tiny_classifier_dir_b: Path,
    tiny_embedder_dir: Path,
) -> Path:
    """A project whose SQLite registry holds `clf` v1 (alias production), v2 (alias staging) and `emb` v1.

    Session-scoped because registering costs seconds; tests that change the registry must copy it
    (see `registered_copy`).
    """
    root = tmp_path_factory.mktemp("registered")
    for args in (
        ("register", str(tiny_classifier_dir), "--name", "clf", "--alias", "production", "--description", "v1"),
        ("register", str(tiny_classifier_dir_b), "--name", "clf", "--alias", "staging", "--description", "v2"),
        ("register", str(tiny_embedder_dir), "--name", "emb", "--task", "embedding"),
    ):
        result = run_cli(*args, cwd=root)
        assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture
def registered_copy(registered_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of `registered_project` (safe to modify), as the working directory."""
    import shutil

    target = tmp_path / "proj"
    shutil.copytree(registered_project, target, symlinks=True)
    for name in list(os.environ):
        if name.startswith("PRODAI_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(target)
    return target


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
