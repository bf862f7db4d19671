"""Editing prodai.yaml in place: round-trip YAML (comments and layout survive), validate, write atomically.

Every command that changes the file (``ab-set``, ``keys create/revoke/delete``, ``check``'s probe-key
cleanup) goes through :func:`edit_config`, so none can leave an invalid or half-written config.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodai_cli.config.files import file_lock, write_atomic
from prodai_cli.config.load import parse_config_text, round_trip_yaml
from prodai_cli.config.schema import ProdaiConfig
from prodai_cli.errors import ConfigError


@dataclass(frozen=True)
class ConfigEdit:
    """The outcome of :func:`edit_config`."""

    before: str
    after: str
    config: ProdaiConfig
    written: bool


def edit_config(path: Path, mutate: Callable[[Any], None], *, dry_run: bool = False) -> ConfigEdit:
    """Edit prodai.yaml in place, keeping comments and layout; validate, then write atomically.

    Args:
        path: The config file (created empty if missing).
        mutate: Called with the round-trip YAML document (a ruamel ``CommentedMap``) to change it.
        dry_run: Validate and compute the new text but do not write it.

    Returns:
        The text before and after and the validated new config.

    Raises:
        ConfigError: The edited document fails validation; nothing is written.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        yaml = round_trip_yaml()
        from ruamel.yaml.error import YAMLError

        try:
            doc = yaml.load(before) if before.strip() else None
        except YAMLError:
            parse_config_text(before, source=path.name)  # raises ConfigError naming the line
            raise
        if doc is None:
            from ruamel.yaml.comments import CommentedMap

            doc = CommentedMap()
        if not isinstance(doc, dict):
            raise ConfigError(f"{path.name}: the top level must be a mapping of sections, got {type(doc).__name__}")
        mutate(doc)
        buffer = io.StringIO()
        yaml.dump(doc, buffer)
        after = buffer.getvalue()
        config = parse_config_text(after, source=path.name)
        if not dry_run and after != before:
            write_atomic(path, after)
        return ConfigEdit(before=before, after=after, config=config, written=not dry_run and after != before)
