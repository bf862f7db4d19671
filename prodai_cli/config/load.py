"""Reading prodai.yaml: find it, parse it keeping line numbers, apply ``PRODAI_*`` overrides, validate.

Loading keeps ruamel's line information so a validation error names the key path *and* the line
(``serving.port: Input should be less than or equal to 65535 (prodai.yaml line 7)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prodai_cli.config.bounds import check_yaml, read_bounded
from prodai_cli.config.schema import (
    CONFIG_FILENAME,
    ENV_ALIASES,
    ENV_CONFIG,
    ENV_PREFIX,
    ENV_RESERVED,
    ProdaiConfig,
    Settings,
)
from prodai_cli.errors import ConfigError


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate prodai.yaml: ``--config``, then ``$PRODAI_CONFIG``, then ``./prodai.yaml``.

    An explicit path (option or variable) that does not exist is an error; a missing ``./prodai.yaml``
    means "embedded defaults".
    """
    for source, value in (("--config", explicit), (ENV_CONFIG, os.environ.get(ENV_CONFIG))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"Config file {path} (from {source}) does not exist")
            return path
    default = Path.cwd() / CONFIG_FILENAME
    return default if default.is_file() else None


def round_trip_yaml() -> Any:
    """A ruamel round-trip loader/dumper: comments, quotes and layout survive a load-edit-dump cycle."""
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class _Representer(RoundTripRepresenter):
        """Round-trip representer that writes None as ``null`` (ruamel's default leaves ``key:`` empty)."""

    _Representer.add_representer(type(None), lambda rep, _data: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    yaml = YAML(typ="rt")
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def _line_of(doc: Any, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest node on ``loc`` that ruamel recorded a position for."""
    line: int | None = None
    node = doc
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(part, int) and isinstance(node, list):
                if lc is not None:
                    line = lc.item(part)[0] + 1
                node = node[part]
            elif isinstance(node, dict) and part in node:
                if lc is not None:
                    line = lc.key(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
    return line


def _format_validation_error(exc: ValidationError, doc: Any, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "Unknown key (not part of prodai.yaml's schema)"
        where = _line_of(doc, loc) if doc is not None else None
        suffix = f" ({source} line {where})" if where else f" ({source})"
        lines.append(f"{key}: {msg}{suffix}")
    return "\n".join(lines)


def _env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``PRODAI_SECTION__KEY=value`` (and the short aliases) as a nested dict; values parsed as YAML."""
    import yaml as pyyaml

    environ = dict(os.environ if environ is None else environ)
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        if name in ENV_ALIASES:
            path: tuple[str, ...] = ENV_ALIASES[name]
        elif "__" in name:
            path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        else:
            continue
        try:
            check_yaml(raw, name)
            value = pyyaml.safe_load(raw) if raw else None
        except pyyaml.YAMLError:
            value = raw
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_config_text(
    text: str, source: str = CONFIG_FILENAME, *, env: bool = False, empty_ok: bool = True
) -> ProdaiConfig:
    """Validate YAML text as a prodai config.

    Args:
        text: The YAML document.
        source: File name used in error messages.
        env: Apply ``PRODAI_*`` environment overrides on top.
        empty_ok: Accept an empty or comment-only document as "every default". A running server's reloads
            pass False: a config file that became empty is a truncated write, not a request to drop every
            key and split (switching auth off is ``auth.enabled: false``, said explicitly).

    Returns:
        The validated config.

    Raises:
        ConfigError: Malformed YAML or a value that fails validation; the message names key and line.

    """
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    check_yaml(text, source)
    try:
        doc = round_trip_yaml().load(text) if text.strip() else None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc.problem}") from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if doc is None:
        if not empty_ok:
            raise ConfigError(
                f"{source} is empty (or only comments); refused, the last good config stays live",
                hint="Switch keys off explicitly with auth.enabled: false",
            )
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(doc).__name__}")
    data = _plain(doc)
    if env:
        data = _merge(data, _env_overrides())
    try:
        return ProdaiConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid configuration:\n{_format_validation_error(exc, doc, source)}",
            hint="Run `prodai config validate` after fixing; `prodai init` writes a documented example",
        ) from None


def _plain(node: Any) -> Any:
    """Ruamel's commented containers as plain dicts and lists (pydantic wants plain data)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Find, read and validate the config (with environment overrides).

    Args:
        explicit: The ``--config`` option, if given.

    Returns:
        Settings on the file found, or on embedded defaults rooted at the working directory.

    """
    path = find_config_path(explicit)
    if path is None:
        overrides = _env_overrides()
        try:
            config = ProdaiConfig.model_validate(overrides)
        except ValidationError as exc:
            raise ConfigError(
                f"Invalid configuration from the environment:\n{_format_validation_error(exc, None, 'env')}"
            ) from None
        return Settings(config=config, path=None, root=Path.cwd())
    text = read_bounded(path, "Config file")
    config = parse_config_text(text, source=path.name, env=True)
    return Settings(config=config, path=path.resolve(), root=path.resolve().parent)
