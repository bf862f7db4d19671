"""The package's shape holds: layers and no cycles (import-linter), no private names across modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "prodai_cli"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the package under ``root`` with the repository's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(REPO_ROOT / ".importlinter")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(PACKAGE, root / "prodai_cli", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_layer_and_cycle_contracts_hold() -> None:
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_from_config_is_caught(package_copy: Path) -> None:
    # The ground floor reaching up into a feature is exactly what the layers forbid.
    schema = package_copy / "prodai_cli" / "config" / "schema.py"
    original = schema.read_text(encoding="utf-8")
    schema.write_text(original + "\nfrom prodai_cli.serving import pool as _upward  # noqa\n", encoding="utf-8")
    try:
        result = _lint_imports(package_copy)
    finally:
        schema.write_text(original, encoding="utf-8")
    assert result.returncode == 1, result.stdout
    assert "prodai_cli.config is not allowed to import prodai_cli.serving" in result.stdout
    # Removed again, the copy is clean: the failure was the injected import, nothing else.
    assert _lint_imports(package_copy).returncode == 0


def test_a_cycle_between_sibling_modules_is_caught(package_copy: Path) -> None:
    # batch/reader.py is imported by the engine; the reader importing the engine back closes a cycle.
    reader = package_copy / "prodai_cli" / "batch" / "reader.py"
    original = reader.read_text(encoding="utf-8")
    reader.write_text(original + "\nfrom prodai_cli.batch import engine as _cycle  # noqa\n", encoding="utf-8")
    try:
        result = _lint_imports(package_copy)
    finally:
        reader.write_text(original, encoding="utf-8")
    assert result.returncode == 1, result.stdout
    assert "No cycles are allowed in prodai_cli.batch" in result.stdout


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_uses(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """``from prodai_cli.x import _name`` and ``x._name`` on an imported prodai module, outside module x."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path, root)
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> prodai module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prodai_cli"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != here:
                    found.append(f"{here}: from {node.module} import {alias.name}")
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("prodai_cli"):
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and modules[node.value.id] != here
        ):
            found.append(f"{here}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules() -> None:
    offenders = [use for path in sorted(PACKAGE.rglob("*.py")) for use in _private_uses(path)]
    assert offenders == []


def test_the_private_name_check_sees_a_violation(tmp_path: Path) -> None:
    probe = tmp_path / "prodai_cli" / "_probe_private_use.py"
    probe.parent.mkdir()
    probe.write_text("from prodai_cli.keys import _edit_keys\nfrom prodai_cli import registry\nregistry._quote\n")
    assert _private_uses(probe, tmp_path) == [
        "prodai_cli._probe_private_use: from prodai_cli.keys import _edit_keys",
        "prodai_cli._probe_private_use: registry._quote",
    ]


# The server's parts take their own config sections; only these see the whole Settings: the assembly
# (create_app, the uvicorn runner) and what needs registry access (the pool, A/B's router resolution).
SETTINGS_ALLOWED_IN_SERVING = {
    "prodai_cli.serving.app",
    "prodai_cli.serving.server",
    "prodai_cli.serving.pool",
    "prodai_cli.serving.faults",
    "prodai_cli.serving.ab.reload",
    # The jobs API pins a job's model in the registry and hands its runner process the config file and root.
    "prodai_cli.serving.jobs_routes",
}


def _imports_settings(path: Path) -> bool:
    """Whether the module imports ``Settings`` from prodai's config (at run time or for type checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("prodai_cli.config")
        and any(alias.name == "Settings" for alias in node.names)
        for node in ast.walk(tree)
    )


def test_serving_components_take_their_config_sections_not_settings() -> None:
    users = {_module_name(p, REPO_ROOT) for p in sorted((PACKAGE / "serving").rglob("*.py")) if _imports_settings(p)}
    assert users <= SETTINGS_ALLOWED_IN_SERVING, sorted(users - SETTINGS_ALLOWED_IN_SERVING)
    assert not any("protection" in name for name in users)


def test_the_settings_check_sees_a_component_that_takes_settings(tmp_path: Path) -> None:
    probe = tmp_path / "component.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from prodai_cli.config import Settings\n"
    )
    assert _imports_settings(probe)
    probe.write_text("from prodai_cli.config import AuthConfig, RateLimitConfig\n")
    assert not _imports_settings(probe)
