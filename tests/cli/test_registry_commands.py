"""register / models list|show|promote|resolve through the real CLI against a real SQLite MLflow store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def _versions(root: Path, name: str) -> list[dict]:  # type: ignore[type-arg]
    result = run_cli("models", "show", name, "--json", cwd=root)
    assert result.exit_code == 0, result.stderr
    return result.json()["versions"]  # type: ignore[index, no-any-return]


def _row_counts(root: Path) -> tuple[int, int]:
    with sqlite3.connect(root / ".prodai" / "mlflow.db") as db:
        versions = db.execute("select count(*) from model_versions").fetchone()[0]
        runs = db.execute("select count(*) from runs").fetchone()[0]
    return versions, runs


def test_register_twice_gives_versions_one_and_two(registered_project: Path) -> None:
    versions = _versions(registered_project, "clf")
    assert [v["version"] for v in versions] == [2, 1]
    by_number = {v["version"]: v for v in versions}
    assert by_number[1]["aliases"] == ["production"] and by_number[1]["description"] == "v1"
    assert by_number[2]["aliases"] == ["staging"] and by_number[2]["task"] == "text-classification"
    assert _versions(registered_project, "emb")[0]["task"] == "embedding"


def test_register_prints_the_version_and_json(registered_copy: Path, tiny_classifier_dir: Path) -> None:
    human = run_cli("register", str(tiny_classifier_dir), "--name", "clf", cwd=registered_copy)
    assert human.exit_code == 0, human.stderr
    assert human.stdout.strip() == "Registered clf version 3 (models:/clf/3)"
    as_json = run_cli(
        "register",
        str(tiny_classifier_dir),
        "--name",
        "other",
        "--alias",
        "candidate",
        "--tag",
        "team=nlp",
        "--json",
        cwd=registered_copy,
    )
    assert as_json.exit_code == 0, as_json.stderr
    assert as_json.json() == {
        "name": "other",
        "version": 1,
        "uri": "models:/other/1",
        "aliases": ["candidate"],
        "task": "text-classification",
    }
    shown = _versions(registered_copy, "other")[0]
    assert shown["tags"]["team"] == "nlp"


def test_models_list(registered_project: Path) -> None:
    result = run_cli("models", "list", "--json", cwd=registered_project)
    assert result.exit_code == 0, result.stderr
    models = {m["name"]: m for m in result.json()}  # type: ignore[union-attr]
    assert set(models) == {"clf", "emb"}
    assert models["clf"]["latest_version"] == 2
    assert models["clf"]["aliases"] == {"production": 1, "staging": 2}
    table = run_cli("models", "list", cwd=registered_project)
    assert "clf" in table.stdout and "production->v1" in table.stdout


def test_promote_moves_alias_and_resolve_follows(registered_copy: Path) -> None:
    before = run_cli("models", "resolve", "clf@production", "--json", cwd=registered_copy)
    assert before.exit_code == 0 and before.json()["version"] == 1  # type: ignore[index]
    moved = run_cli("models", "promote", "clf", "2", "--alias", "production", cwd=registered_copy)
    assert moved.exit_code == 0, moved.stderr
    assert moved.stdout.strip() == "clf@production -> version 2 (was version 1)"
    after = run_cli("models", "resolve", "models:/clf@production", "--json", cwd=registered_copy)
    data = after.json()
    assert data["version"] == 2 and sorted(data["aliases"]) == ["production", "staging"]  # type: ignore[index]
    path = Path(data["path"])  # type: ignore[index]
    assert (path / "model" / "config.json").is_file()
    assert (path / "components" / "tokenizer" / "tokenizer.json").is_file()
    new_alias = run_cli("models", "promote", "clf", "1", "--alias", "canary", "--json", cwd=registered_copy)
    assert new_alias.json() == {"name": "clf", "alias": "canary", "version": 1, "previous": None}


def test_resolve_by_version_and_plain_name(registered_project: Path) -> None:
    by_version = run_cli("models", "resolve", "clf/1", cwd=registered_project)
    assert by_version.exit_code == 0
    assert by_version.stdout.startswith("clf version 1\t")
    latest = run_cli("models", "resolve", "clf", "--json", cwd=registered_project)
    assert latest.json()["version"] == 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("models", "resolve", "nosuch@production"), 1, "Unknown model 'nosuch'"),
        (("models", "resolve", "clf@nosuch"), 1, "Model 'clf' has no alias 'nosuch'"),
        (("models", "resolve", "clf/9"), 1, "Model 'clf' has no version 9"),
        (("models", "show", "nosuch"), 1, "Unknown model 'nosuch'"),
        (("models", "promote", "clf", "7", "--alias", "production"), 1, "Model 'clf' has no version 7"),
        (("models", "promote", "clf", "1", "--alias", "v1"), 2, "Invalid alias 'v1'"),
        (("models", "resolve", "bad@@ref"), 2, "Invalid model reference"),
    ],
)
def test_lookup_errors(registered_project: Path, args: tuple[str, ...], code: int, message: str) -> None:
    before = _row_counts(registered_project)
    result = run_cli(*args, cwd=registered_project)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert _row_counts(registered_project) == before


def test_bad_model_dir_writes_nothing(registered_copy: Path, tmp_path: Path) -> None:
    before = _row_counts(registered_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = run_cli("register", str(empty), "--name", "clf", cwd=registered_copy)
    assert no_config.exit_code == 1
    assert "has no config.json" in no_config.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')
    (broken / "model.safetensors").write_bytes(b"not weights")
    (broken / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")  # a tokenizer, broken weights
    bad = run_cli("register", str(broken), "--name", "clf", cwd=registered_copy)
    assert bad.exit_code == 1
    assert "cannot load" in bad.stderr
    missing = run_cli("register", str(tmp_path / "missing"), "--name", "clf", cwd=registered_copy)
    assert missing.exit_code == 1 and "is not a directory" in missing.stderr
    assert _row_counts(registered_copy) == before


def test_usage_errors_write_nothing(registered_copy: Path, tiny_classifier_dir: Path) -> None:
    before = _row_counts(registered_copy)
    bad_tag = run_cli("register", str(tiny_classifier_dir), "--name", "clf", "--tag", "novalue", cwd=registered_copy)
    assert bad_tag.exit_code == 2 and "Invalid --tag 'novalue'" in bad_tag.stderr
    bad_task = run_cli("register", str(tiny_classifier_dir), "--name", "clf", "--task", "ner", cwd=registered_copy)
    assert bad_task.exit_code == 2 and "Unknown task 'ner'" in bad_task.stderr
    (registered_copy / "prodai.yaml").write_text("registry:\n  tracking_url: sqlite:///x.db\n")
    bad_config = run_cli("register", str(tiny_classifier_dir), "--name", "clf", cwd=registered_copy)
    assert bad_config.exit_code == 2
    assert "registry.tracking_url: Unknown key" in bad_config.stderr and "line 2" in bad_config.stderr
    (registered_copy / "prodai.yaml").write_text("serving:\n  port: x\n")
    wrong_type = run_cli("models", "list", cwd=registered_copy)
    assert wrong_type.exit_code == 2 and "serving.port" in wrong_type.stderr
    assert _row_counts(registered_copy) == before


def test_cached_version_resolves_without_the_registry(registered_copy: Path) -> None:
    """A downloaded NAME/VERSION resolves from .prodai/models alone (how baked container images serve)."""
    first = run_cli("models", "resolve", "clf/2", "--json", cwd=registered_copy)
    assert first.exit_code == 0
    (registered_copy / ".prodai" / "mlflow.db").unlink()
    again = run_cli("models", "resolve", "clf/2", "--json", cwd=registered_copy)
    assert again.exit_code == 0, again.stderr
    assert again.json()["path"] == first.json()["path"]  # type: ignore[index]
