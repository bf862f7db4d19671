"""`prodai keys create/list/revoke/delete` through the real CLI: hashes only, comments kept, the key shown once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import CliResult

from prodai_cli.config import load_settings
from prodai_cli.keys import KEY_PATTERN, hash_key
from prodai_cli.serving.protection.auth import AuthFailure, KeyStore

CUSTOM_COMMENT = "# our team's note: keys rotate every quarter"


def comment_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]


@pytest.mark.slow
def test_create_list_revoke_stores_hashes_keeps_comments_and_shows_the_key_once(cli: Any, project: Path) -> None:
    assert cli("init").exit_code == 0
    config = project / "prodai.yaml"
    config.write_text(config.read_text().replace("# API keys\n", f"# API keys\n{CUSTOM_COMMENT}\n"))
    original_comments = comment_lines(config.read_text())
    other_outputs: list[str] = []

    created = cli("keys", "create", "--name", "ci")
    assert created.exit_code == 0, created.stderr
    key = created.stdout.strip()
    assert KEY_PATTERN.fullmatch(key), created.stdout
    assert key not in created.stderr
    assert "cannot be shown again" in created.stderr and "'ci'" in created.stderr

    created_json = cli("keys", "create", "--name", "ops", "--scope", "admin", "--expires", "30", "--json")
    assert created_json.exit_code == 0, created_json.stderr
    doc = created_json.json()
    assert isinstance(doc, dict)
    admin_key = doc["key"]
    assert KEY_PATTERN.fullmatch(admin_key) and admin_key != key
    assert doc["name"] == "ops" and doc["scopes"] == ["admin"] and doc["stored_in"] == str(config)
    assert doc["expires"] > doc["created"]
    assert admin_key not in created_json.stderr

    text = config.read_text()
    assert key not in text and admin_key not in text
    assert hash_key(key) in text and hash_key(admin_key) in text
    assert comment_lines(text) == original_comments  # every comment survives, in order

    listing = cli("keys", "list")
    listing_json = cli("keys", "list", "--json")
    assert listing.exit_code == listing_json.exit_code == 0
    other_outputs += [listing.stdout, listing.stderr, listing_json.stdout, listing_json.stderr]
    rows = listing_json.json()
    assert isinstance(rows, list)
    assert [(r["name"], r["scopes"], r["status"]) for r in rows] == [
        ("ci", ["predict"], "active"),
        ("ops", ["admin"], "active"),
    ]
    assert rows[0]["fingerprint"] == "sha256:" + hash_key(key)[:8]
    for full_hash in (hash_key(key), hash_key(admin_key)):
        assert full_hash not in listing.stdout and full_hash not in listing_json.stdout
    assert "ci" in listing.stdout and "ops" in listing.stdout

    revoked = cli("keys", "revoke", "ci")
    assert revoked.exit_code == 0, revoked.stderr
    assert "Revoked key 'ci'" in revoked.stdout
    again = cli("keys", "revoke", "ci", "--json")
    assert again.exit_code == 0 and again.json() == {"name": "ci", "revoked": True, "already_revoked": True}
    other_outputs += [revoked.stdout, revoked.stderr, again.stdout, again.stderr]
    statuses = {r["name"]: r["status"] for r in cli("keys", "list", "--json").json()}  # type: ignore[union-attr]
    assert statuses == {"ci": "revoked", "ops": "active"}
    assert comment_lines(config.read_text()) == original_comments

    # The server side sees exactly what the CLI wrote.
    settings = load_settings(config)
    store = KeyStore.from_files(settings.config.auth, config_path=settings.path, root=settings.root)
    assert store.verify(key).failure is AuthFailure.REVOKED
    assert store.verify(admin_key, "admin").key_name == "ops"

    for args in (("config", "show"), ("config", "show", "--json"), ("config", "validate")):
        shown = cli(*args)
        assert shown.exit_code == 0, shown.stderr
        other_outputs += [shown.stdout, shown.stderr]
        assert hash_key(admin_key) not in shown.stdout
    for output in other_outputs:
        assert key not in output and admin_key not in output


@pytest.mark.slow
def test_bad_input_gets_a_clear_error_and_changes_nothing(cli: Any, project: Path) -> None:
    assert cli("init").exit_code == 0
    config = project / "prodai.yaml"
    assert cli("keys", "create", "--name", "ci").exit_code == 0
    before = config.read_text()

    def check(result: CliResult, code: int, message: str) -> None:
        assert result.exit_code == code, (result.stdout, result.stderr)
        assert message in result.stderr
        assert not KEY_PATTERN.search(result.stdout + result.stderr)
        assert config.read_text() == before

    check(cli("keys", "create", "--name", "ci"), 2, "A key named 'ci' already exists")
    check(cli("keys", "create", "--name", "bad name!"), 2, "Invalid key name 'bad name!'")
    check(cli("keys", "create", "--name", "x", "--expires", "0"), 2, "--expires must be a positive number of days")
    check(cli("keys", "create", "--name", "x", "--scope", "root"), 2, "root")
    check(cli("keys", "revoke", "nobody"), 1, "No key named 'nobody'")


def test_create_without_a_config_writes_prodai_yaml(cli: Any, project: Path) -> None:
    result = cli("keys", "create", "--name", "first")
    assert result.exit_code == 0, result.stderr
    text = (project / "prodai.yaml").read_text()
    assert hash_key(result.stdout.strip()) in text and result.stdout.strip() not in text
    assert cli("config", "validate").exit_code == 0


@pytest.mark.slow
def test_keys_file_receives_the_keys_when_configured(cli: Any, project: Path) -> None:
    assert cli("init").exit_code == 0
    config = project / "prodai.yaml"
    config.write_text(config.read_text().replace("keys_file: null", "keys_file: keys.yaml"))
    before = config.read_text()
    created = cli("keys", "create", "--name", "svc", "--json")
    assert created.exit_code == 0, created.stderr
    doc = created.json()
    assert isinstance(doc, dict) and doc["stored_in"] == str(project / "keys.yaml")
    assert config.read_text() == before
    stored = (project / "keys.yaml").read_text()
    assert hash_key(doc["key"]) in stored and doc["key"] not in stored
    assert cli("keys", "revoke", "svc").exit_code == 0
    assert "revoked: true" in (project / "keys.yaml").read_text()
    listed = cli("keys", "list", "--json").json()
    assert isinstance(listed, list) and listed[0]["status"] == "revoked"
    # A broken keys file is an error naming the file, not a traceback.
    (project / "keys.yaml").write_text("keys:\n  - name: x\n    hash: not-a-hash\n")
    broken = cli("keys", "list")
    assert broken.exit_code == 2 and "keys.yaml is invalid" in broken.stderr


@pytest.mark.slow
@pytest.mark.parametrize("home", ["prodai.yaml", "keys.yaml"])
def test_delete_refuses_an_active_key_then_removes_the_record_keeping_comments(
    cli: Any, project: Path, home: str
) -> None:
    assert cli("init").exit_code == 0
    config = project / "prodai.yaml"
    if home == "keys.yaml":
        config.write_text(config.read_text().replace("keys_file: null", "keys_file: keys.yaml"))
    else:
        config.write_text(config.read_text().replace("# API keys\n", f"# API keys\n{CUSTOM_COMMENT}\n"))
    target = project / home
    assert cli("keys", "create", "--name", "keep").exit_code == 0
    assert cli("keys", "create", "--name", "gone").exit_code == 0
    comments = comment_lines(target.read_text())
    before = target.read_text()

    refused = cli("keys", "delete", "gone")
    assert refused.exit_code == 2 and "still active" in refused.stderr and "keys revoke gone" in refused.stderr
    assert target.read_text() == before
    missing = cli("keys", "delete", "nobody")
    assert missing.exit_code == 1 and "No key named 'nobody'" in missing.stderr

    assert cli("keys", "revoke", "gone").exit_code == 0
    deleted = cli("keys", "delete", "gone", "--json")
    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.json() == {"name": "gone", "deleted": True, "was_revoked": True}
    listed = cli("keys", "list", "--json").json()
    assert isinstance(listed, list) and [row["name"] for row in listed] == ["keep"]
    assert comment_lines(target.read_text()) == comments
    assert cli("config", "validate").exit_code == 0
    # --force deletes an active key; the server would answer "invalid key" from then on.
    assert cli("keys", "delete", "keep", "--force").exit_code == 0
    assert cli("keys", "list", "--json").json() == []


@pytest.mark.slow
def test_concurrent_creates_all_land(project: Path) -> None:
    names = [f"worker-{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "prodai_cli", "keys", "create", "--name", name, "--json"],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    keys = {}
    for name, proc in zip(names, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        keys[name] = json.loads(out)["key"]
    text = (project / "prodai.yaml").read_text()
    for name, key in keys.items():
        assert re.search(rf"name: {name}\b", text)
        assert hash_key(key) in text
    settings = load_settings(project / "prodai.yaml")
    store = KeyStore.from_files(settings.config.auth, config_path=settings.path, root=settings.root)
    assert all(store.verify(key).key_name == name for name, key in keys.items())
