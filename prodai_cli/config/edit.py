"""Editing prodai.yaml in place: round-trip YAML (comments and layout survive), validate, write atomically.

Every command that changes the file (``ab-set``, ``keys create/revoke/delete``, ``check``'s probe-key
cleanup) goes through :func:`edit_config`, so none can leave an invalid or half-written config.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from prodai_cli.config.bounds import check_yaml, read_bounded
from prodai_cli.config.files import file_lock, write_atomic
from prodai_cli.config.load import parse_config_text, round_trip_yaml
from prodai_cli.config.schema import ProdaiConfig
from prodai_cli.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class YamlEdit(Generic[T]):
    """The outcome of :func:`edit_yaml`: the text before and after, what validation made of it, and if written."""

    before: str
    after: str
    value: T
    written: bool


def edit_yaml(
    path: Path,
    mutate: Callable[[Any], None],
    validate: Callable[[str], T],
    *,
    what: str,
    new_document: Callable[[], Any] | None = None,
    dry_run: bool = False,
) -> YamlEdit[T]:
    """Edit a YAML file in place under its lock: round-trip load, mutate, validate, then replace atomically.

    The one editor behind every change prodai makes to a user's YAML (prodai.yaml, a keys file), so comments
    and layout survive and no edit can leave an invalid or half-written file.

    Args:
        path: The file (created if missing).
        mutate: Called with the round-trip document (a ruamel ``CommentedMap``) to change it.
        validate: Called with the new text; returns what it parsed or raises ConfigError (nothing written).
            It is also called on unparseable old text, so its error names the line.
        what: How messages name the file (``prodai.yaml``, ``Keys file /x/keys.yaml``).
        new_document: Makes the document for a missing or empty file (default: an empty mapping).
        dry_run: Validate and compute the new text but do not write it.

    Returns:
        The edit's outcome.

    Raises:
        ConfigError: The file is not valid YAML, not a mapping, or the edited document fails validation.

    """
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        before = read_bounded(path, what) if path.exists() else ""
        check_yaml(before, what)
        yaml = round_trip_yaml()
        try:
            doc = yaml.load(before) if before.strip() else None
        except YAMLError as exc:
            validate(before)  # raises a ConfigError that names the line
            raise ConfigError(f"{what} is not valid YAML: {exc}") from None
        if doc is None:
            doc = new_document() if new_document is not None else CommentedMap()
        if not isinstance(doc, dict):
            raise ConfigError(f"{what}: the top level must be a mapping, got {type(doc).__name__}")
        mutate(doc)
        buffer = io.StringIO()
        yaml.dump(doc, buffer)
        after = buffer.getvalue()
        value = validate(after)
        written = not dry_run and after != before
        if written:
            write_atomic(path, after)
        return YamlEdit(before=before, after=after, value=value, written=written)


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
    edit = edit_yaml(
        path,
        mutate,
        lambda text: parse_config_text(text, source=path.name),
        what=path.name,
        dry_run=dry_run,
    )
    return ConfigEdit(before=edit.before, after=edit.after, config=edit.value, written=edit.written)
