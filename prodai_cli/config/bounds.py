"""Bounds on YAML that prodai reads: file size, nesting depth, and nodes after alias expansion.

A YAML alias repeats the node its anchor names; nine levels of nine aliases each (a "billion laughs") is a
few hundred bytes that expand to 387 million nodes, which pins a CPU for a minute and ends in MemoryError.
:func:`check_yaml` walks the document's *event stream* (no node is built, nothing is expanded) and counts
what the loader would build, the aliases' share included; a document over the bounds is refused before any
loader sees it, in time and memory proportional to its text.

The bounds are constants rather than keys of prodai.yaml: a key inside a file cannot protect the reading of
that file. They are far above any real config (prodai's own full default is about 300 nodes).
"""

from __future__ import annotations

from pathlib import Path

from prodai_cli.errors import ConfigError

MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


def check_yaml(text: str, source: str, *, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH) -> None:
    """Refuse a YAML document that would expand past ``max_nodes`` nodes or nest past ``max_depth``.

    Syntax errors are left to the real loader, which reports them with their line.

    Raises:
        ConfigError: Over a bound; the message names ``source`` and the bound.

    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_YAML_BYTES} bytes; refusing to parse it")
    import yaml as pyyaml

    loader = getattr(pyyaml, "CSafeLoader", pyyaml.SafeLoader)
    stack: list[list[object]] = []  # [nodes so far, anchor] per open collection
    sizes: dict[str, int] = {}
    total = 0
    try:
        for event in pyyaml.parse(text, Loader=loader):
            if isinstance(event, pyyaml.CollectionStartEvent):
                stack.append([1, event.anchor])
                if len(stack) > max_depth:
                    raise ConfigError(f"{source}: nested more than {max_depth} levels deep; refusing to load it")
                continue
            if isinstance(event, pyyaml.CollectionEndEvent):
                count, anchor = stack.pop()
                size = int(count)  # type: ignore[call-overload]
                if isinstance(anchor, str):
                    sizes[anchor] = size
            elif isinstance(event, pyyaml.ScalarEvent):
                size = 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, pyyaml.AliasEvent):
                size = sizes.get(event.anchor or "", 1)
            else:
                continue
            if stack:
                stack[-1][0] = int(stack[-1][0]) + size  # type: ignore[call-overload]
                if int(stack[-1][0]) > max_nodes:  # type: ignore[call-overload]
                    raise _over(source, max_nodes)
            else:
                total += size
                if total > max_nodes:
                    raise _over(source, max_nodes)
    except pyyaml.YAMLError:
        return


def _over(source: str, max_nodes: int) -> ConfigError:
    return ConfigError(
        f"{source}: expands to more than {max_nodes} YAML nodes (aliases repeating anchors); refusing to load it",
        hint="A config this large is almost certainly an alias bomb; write the values out or use fewer aliases",
    )


def read_bounded(path: Path, what: str) -> str:
    """Read a YAML file as UTF-8 text, refusing one larger than :data:`MAX_YAML_BYTES` before reading it.

    Raises:
        ConfigError: Unreadable, not UTF-8, or too large (names ``what`` and the path).

    """
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path} is {size} bytes, more than {MAX_YAML_BYTES}; refusing to read it")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {what.lower()} {path}: {exc}") from None
