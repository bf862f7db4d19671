"""`prodai models delete-alias` / `delete-version` (issue 15.9): they delete only what nothing uses, name every
user when they refuse (exit 1, JSON error object), and leave the registry as it was then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def _versions(root: Path, name: str = "clf") -> dict[int, list[str]]:
    shown = run_cli("models", "show", name, "--json", cwd=root)
    assert shown.exit_code == 0, shown.stderr
    return {v["version"]: sorted(v["aliases"]) for v in json.loads(shown.stdout)["versions"]}


def _refused(result, *users: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, (result.stdout, result.stderr)
    error = json.loads(result.stdout)["error"]
    assert "is in use" in error["message"], error
    for user in users:
        assert user in error["message"], error


def test_delete_refuses_what_an_alias_the_ab_split_or_a_deployment_uses(registered_copy: Path) -> None:
    root = registered_copy
    before = _versions(root)
    assert before == {1: ["production"], 2: ["staging"]}
    # An alias points at v2: MLflow would drop it with the version.
    _refused(run_cli("models", "delete-version", "clf", "2", "--json", cwd=root), "alias staging points at it")
    # A live A/B split set by alias uses staging (and so v2).
    assert run_cli("ab-set", "production=50%", "staging=50%", "--model", "clf", cwd=root).exit_code == 0
    _refused(
        run_cli("models", "delete-alias", "clf", "staging", "--json", cwd=root),
        "A/B variant staging (prodai.yaml) was set by it",
    )
    _refused(
        run_cli("models", "delete-version", "clf", "2", "--json", cwd=root),
        "alias staging points at it",
        "A/B variant staging (prodai.yaml) serves it",
    )
    # A deployment record that is not stopped uses v1.
    from prodai_cli.config import load_settings
    from prodai_cli.deploy import records

    settings = load_settings(root / "prodai.yaml")
    records.save(
        settings,
        records.DeploymentRecord(
            name="web", url="http://127.0.0.1:1", model="clf", version=1, target="docker", image="x",
            container_id=None, previous_image=None, created=records.now_iso(), versions=[1],
        ),
    )  # fmt: skip
    run_cli("models", "promote", "clf", "2", "--alias", "production", cwd=root)
    assert run_cli("ab-set", "v2=100%", "--model", "clf", cwd=root).exit_code == 0
    _refused(run_cli("models", "delete-version", "clf", "1", "--json", cwd=root), "deployment web (docker, running)")
    assert _versions(root) == {1: [], 2: ["production", "staging"]}


def test_delete_alias_and_version_when_nothing_uses_them(registered_copy: Path) -> None:
    root = registered_copy
    cached = run_cli("models", "resolve", "clf/2", "--json", cwd=root)
    assert cached.exit_code == 0, cached.stderr
    cache_dir = Path(json.loads(cached.stdout)["path"])
    assert cache_dir.exists()

    deleted = run_cli("models", "delete-alias", "clf", "staging", "--json", cwd=root)
    assert deleted.exit_code == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"name": "clf", "alias": "staging", "version": 2, "deleted": True}
    assert _versions(root) == {1: ["production"], 2: []}

    human = run_cli("models", "delete-version", "clf", "2", cwd=root)
    assert human.exit_code == 0, human.stderr
    assert "Deleted clf version 2" in human.stdout
    assert _versions(root) == {1: ["production"]}
    assert not cache_dir.exists()
    gone = run_cli("models", "delete-version", "clf", "2", "--json", cwd=root)
    assert gone.exit_code == 1 and "error" in json.loads(gone.stdout)
    missing = run_cli("models", "delete-alias", "clf", "nope", cwd=root)
    assert missing.exit_code == 1 and "nope" in missing.stderr
