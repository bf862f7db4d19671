"""Issue 15.9: the help's own examples work and ``--json`` always prints a JSON result or error object."""

from __future__ import annotations

import json
from pathlib import Path


def test_config_validate_accepts_config_after_the_command(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    """The help's example, ``prodai config validate --config deploy/prodai.yaml``, works as written."""
    (project / "deploy").mkdir()
    (project / "deploy" / "prodai.yaml").write_text("serving:\n  port: 8123\n")
    result = cli("config", "validate", "--config", "deploy/prodai.yaml", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"valid": True, "path": str(project / "deploy" / "prodai.yaml")}
    (project / "deploy" / "prodai.yaml").write_text("serving:\n  port: -3\n")
    bad = cli("config", "validate", "-c", "deploy/prodai.yaml")
    assert bad.exit_code == 2
    assert "serving.port" in bad.stderr and "line 2" in bad.stderr


def test_config_validate_json_prints_an_object_for_an_invalid_file(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    (project / "prodai.yaml").write_text("serving:\n  port: -3\n")
    result = cli("config", "validate", "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert data["path"] == str(project / "prodai.yaml")
    assert "serving.port" in data["error"]["message"] and "line 2" in data["error"]["message"]
    assert data["error"]["exit_code"] == 2


def test_json_mode_prints_an_error_object_on_failure(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    """A failing command in JSON mode still prints exactly one JSON document on stdout."""
    result = cli("--json", "models", "show", "nosuchmodel")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["error"]["type"] == "ModelNotFoundError"
    assert "nosuchmodel" in data["error"]["message"]
    assert data["error"]["exit_code"] == 1
    assert "Error:" in result.stderr  # people still read the error on stderr


def test_json_mode_prints_an_error_object_on_a_usage_error(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("models", "list", "--json", "--no-such-option")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["error"]["exit_code"] == 2
    assert "--no-such-option" in data["error"]["message"]
    assert "--no-such-option" in result.stderr
