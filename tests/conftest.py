"""Shared fixtures: tiny random models built locally, isolated project directories, a CLI runner.

Nothing here fakes a service: the registry is a real MLflow SQLite store in a temp directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import CliResult, build_tiny_model, run_cli

# Never let a library reach for a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture
def cli(project: Path):  # type: ignore[no-untyped-def]
    """Run the real CLI in the project directory: ``cli("models", "list", "--json")``."""

    def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        return run_cli(*args, cwd=project, env=env, timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def registered_project(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_classifier_dir: Path,
    tiny_classifier_dir_b: Path,
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
    # As registered: not the model traces that servers on the shared project keep in .prodai/traces.
    shutil.copytree(registered_project, target, symlinks=True, ignore=shutil.ignore_patterns("traces"))
    for name in list(os.environ):
        if name.startswith("PRODAI_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(target)
    return target


@pytest.fixture
def redis_process(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real redis-server on a free loopback port (helpers.RedisServer: url, stop, start, restart, pause)."""
    from helpers import RedisServer, free_port

    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(redis_process) -> str:  # type: ignore[no-untyped-def]
    """The URL of a real, empty redis-server (redis://127.0.0.1:PORT/0); killed after the test."""
    return str(redis_process.url)


@pytest.fixture(scope="session")
def onnx_project(tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path, tiny_embedder_dir: Path) -> Path:
    """A project with ONNX exports made by the real `prodai export` (session-scoped: exports cost seconds).

    `clf` v1 (alias production) is the tiny classifier, v2 its ONNX fp32 export, v3 its int8 export (alias int8).
    `emb` v1 is the tiny embedder, v2 and v3 its fp32 and int8 exports. Each export's `--json` output is in
    exports.json. Tests that change the registry must copy the directory.
    """
    import json

    root = tmp_path_factory.mktemp("onnx-project")
    exports: dict[str, object] = {}
    for args in (
        ("register", str(tiny_classifier_dir), "--name", "clf", "--alias", "production"),
        ("register", str(tiny_embedder_dir), "--name", "emb", "--task", "embedding"),
        ("export", "clf@production", "--to", "onnx", "--json"),
        ("export", "clf/1", "--to", "onnx", "--quantize", "int8", "--alias", "int8", "--json"),
        ("export", "emb/1", "--to", "onnx", "--json"),
        ("export", "emb/1", "--to", "onnx", "--quantize", "int8", "--json"),
    ):
        result = run_cli(*args, cwd=root)
        assert result.exit_code == 0, result.stderr
        if args[0] == "export":
            data = result.json()
            assert isinstance(data, dict)
            exports[f"{data['name']}/{data['version']}"] = data
    (root / "exports.json").write_text(json.dumps(exports, indent=1), encoding="utf-8")
    return root
