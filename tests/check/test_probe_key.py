"""The temporary probe key of `prodai check` and `prodai ship`: created, then revoked and removed, leaving the
config (or keys file) exactly as it was, comments and layout included."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodai_cli.checks.context import forget_key
from prodai_cli.config import load_settings, render_default_config
from prodai_cli.keys import create_key, list_keys

CONFIGS = {
    "init": render_default_config(),
    "no keys list": "# mine\nauth:\n  enabled: true\ncache:\n  enabled: true  # keep me\n",
    "empty list with comment": "auth:\n  enabled: true\n  keys: []  # hashes\n\n# next section\ncache: {}\n",
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forget_key_restores_the_config_byte_for_byte(tmp_path: Path, name: str) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text(CONFIGS[name], encoding="utf-8")
    settings = load_settings(path)
    create_key(settings, "prodai-check-probe")
    assert [k.name for k in list_keys(settings)] == ["prodai-check-probe"]
    forget_key(settings, "prodai-check-probe")
    assert path.read_text(encoding="utf-8") == CONFIGS[name]


def test_forget_key_keeps_the_other_keys_and_their_comments(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text(render_default_config(), encoding="utf-8")
    settings = load_settings(path)
    create_key(settings, "ci")
    create_key(settings, "ops")
    with_two = path.read_text(encoding="utf-8")
    create_key(settings, "prodai-check-probe")  # last: its trailing section comment must move back to ops
    forget_key(settings, "prodai-check-probe")
    assert path.read_text(encoding="utf-8") == with_two
    create_key(settings, "prodai-check-probe-2")
    create_key(settings, "later")
    forget_key(settings, "prodai-check-probe-2")  # in the middle
    assert [k.name for k in list_keys(settings)] == ["ci", "ops", "later"]
    assert "# Output redaction and input hygiene" in path.read_text(encoding="utf-8")


def test_forget_key_in_a_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text("auth:\n  keys_file: keys.yaml\n", encoding="utf-8")
    settings = load_settings(path)
    create_key(settings, "ci")
    keys_text = (tmp_path / "keys.yaml").read_text(encoding="utf-8")
    create_key(settings, "prodai-check-probe")
    forget_key(settings, "prodai-check-probe")
    assert (tmp_path / "keys.yaml").read_text(encoding="utf-8") == keys_text
    assert path.read_text(encoding="utf-8") == "auth:\n  keys_file: keys.yaml\n"
