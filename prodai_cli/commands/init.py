"""prodai init: write a documented prodai.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prodai_cli.commands._common import JsonOption, console, state
from prodai_cli.errors import UsageError


def command(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json_flag: JsonOption = False,
) -> None:
    """Write a commented prodai.yaml with every key at its default.

    Example: prodai init && prodai config validate
    """
    from prodai_cli.config import CONFIG_FILENAME, render_default_config, write_atomic

    out = console(ctx, json_flag)
    path = Path(state(ctx).config_path or CONFIG_FILENAME)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="Use --force to overwrite it")
    write_atomic(path, render_default_config())
    out.result({"path": str(path.resolve()), "written": True})
    out.success(f"Wrote {path}")
