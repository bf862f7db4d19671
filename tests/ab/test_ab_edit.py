"""The ab: edit in-process: layout kept, comments on variants kept, and edit_config's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from prodai_cli.abconfig import ResolvedVariant, write_ab_variants
from prodai_cli.config import parse_config_text, render_default_config
from prodai_cli.errors import ConfigError

SPLIT = [ResolvedVariant("v1", 1, 0.8, 1), ResolvedVariant("v2", 2, 0.2, 2)]


def test_generated_file_keeps_nulls_and_every_other_line(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text(render_default_config(), encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    result = write_ab_variants(path, "clf", SPLIT)
    after = path.read_text(encoding="utf-8")
    assert result.written
    # ruamel would write `key:` for null; the file keeps its `null`s outside the lines ab-set owns.
    removed = [line for line in result.diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert removed == [
        "-  enabled: false  # Route by the variants below instead of serving.model",
        "-  model: null  # Registered model name the variants belong to",
        "-  variants: {}  # name -> {version, weight}",
    ]
    assert after.count(": null") == before.count(": null") - 1
    assert parse_config_text(after).ab.variants["v1"].version == 1


def test_existing_variants_are_edited_in_place_keeping_their_comments(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text(
        "ab:\n"
        "  enabled: true\n"
        "  model: clf\n"
        "  variants:\n"
        "    v2:  # the candidate\n"
        "      version: 2\n"
        "      weight: 0.5  # raise slowly\n"
        "    v1:  # current production\n"
        "      version: 1\n"
        "      weight: 0.5\n"
        "    old:  # to be removed\n"
        "      version: 1\n"
        "      weight: 0\n",
        encoding="utf-8",
    )
    write_ab_variants(path, "clf", [*SPLIT, ResolvedVariant("v3", 3, 0.0, 3)])
    text = path.read_text(encoding="utf-8")
    assert "    v2:  # the candidate\n      version: 2\n      weight: 0.2  # raise slowly\n" in text
    assert "    v1:  # current production\n      version: 1\n      weight: 0.8\n" in text
    assert "old" not in text and "to be removed" not in text
    assert text.index("v2:") < text.index("v1:") < text.index("v3:")  # the file's order is kept
    assert {n: v.weight for n, v in parse_config_text(text).ab.variants.items()} == {"v2": 0.2, "v1": 0.8, "v3": 0.0}


def test_flow_style_sections_become_valid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text("ab: {enabled: false, variants: {a: {version: 1, weight: 1}}}\n", encoding="utf-8")
    write_ab_variants(path, "clf", SPLIT)
    ab = parse_config_text(path.read_text(encoding="utf-8")).ab
    assert ab.enabled and set(ab.variants) == {"v1", "v2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("serving:\n  port: [8000\n", "not valid YAML (line 3"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("serving:\n  port: 99999\n", "serving.port: Input should be less than or equal to 65535 (prodai.yaml line 2)"),
    ],
)
def test_a_broken_file_is_reported_and_left_alone(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prodai.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        write_ab_variants(path, "clf", SPLIT)
    assert message in info.value.message
    assert path.read_text(encoding="utf-8") == text
    assert not list(tmp_path.glob(".prodai.yaml.*.tmp"))
