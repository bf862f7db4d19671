"""The CLI's surface: help on every command, generated reference in sync, lazy imports, banned imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from helpers import REPO_ROOT, run_cli

from prodai_cli.cli import app

HEAVY = (
    "torch",
    "transformers",
    "mlflow",
    "docker",
    "locust",
    "ray",
    "fastapi",
    "uvicorn",
    "redis",
    "gevent",
    "pydantic",
    "sentence_transformers",
)


def _all_commands() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(command, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                if not sub.hidden:
                    walk(sub, [*path, name])
        else:
            found.append(path)

    walk(typer.main.get_command(app), [])
    return found


def test_command_reference_is_in_sync() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(path: list[str]) -> None:
    result = run_cli(*path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Example:" in result.stdout, f"prodai {' '.join(path)} --help lacks an Example: line"
    if path not in (["init"],):
        assert "--json" in result.stdout or path[0] in {"serve", "worker"}, f"prodai {' '.join(path)} has no --json"


def test_root_help_lists_the_commands_and_exit_codes() -> None:
    result = run_cli("--help")
    assert result.exit_code == 0
    for name in ("init", "register", "models", "config"):
        assert name in result.stdout
    assert "Exit codes: 0 ok, 1 failure, 2 usage" in result.stdout


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['prodai', '--help']\n"
        "try:\n    runpy.run_module('prodai_cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"print('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    marker = [line for line in result.stdout.splitlines() if line.startswith("LOADED:")]
    assert marker == ["LOADED:"], f"`prodai --help` imported: {marker}"


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_version() -> None:
    from prodai_cli import __version__

    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"prodai {__version__}"


@pytest.mark.parametrize("module", ["typer", "rich", "rich.console"])
def test_ruff_bans_cli_toolkit_in_core_modules(module: str) -> None:
    ruff = REPO_ROOT / ".venv" / "bin" / "ruff"
    source = f"import {module}\n"
    core = subprocess.run(
        [str(ruff), "check", "--select", "TID251", "--stdin-filename", "prodai_cli/runtime/fake_core.py", "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert core.returncode == 1 and "TID251" in core.stdout, core.stdout
    command = subprocess.run(
        [str(ruff), "check", "--select", "TID251", "--stdin-filename", "prodai_cli/commands/fake_cmd.py", "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert command.returncode == 0, command.stdout
