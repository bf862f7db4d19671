"""Fixtures of the A/B tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli


@pytest.fixture
def ab_project(registered_copy: Path) -> Path:
    """`registered_copy` with the documented prodai.yaml that `prodai init` writes, plus a user's comments."""
    result = run_cli("init", cwd=registered_copy)
    assert result.exit_code == 0, result.stderr
    path = registered_copy / "prodai.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("ab:\n", "# Traffic split owned by the ML team; ask #ml-serving before changing.\nab:\n", 1)
    text = text.replace("serving:\n", "serving:\n  # port 8000 is taken by the sidecar on staging\n", 1)
    path.write_text(text, encoding="utf-8")
    return registered_copy
