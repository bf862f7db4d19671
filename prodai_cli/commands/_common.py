"""Options and helpers every command shares (kept here so each command stays a few lines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from prodai_cli.console import Console

if TYPE_CHECKING:
    from prodai_cli.config import Settings


@dataclass
class State:
    """Global options from the root callback."""

    config_path: str | None = None
    json: bool = False
    verbose: bool = False


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def state(ctx: typer.Context) -> State:
    """The root callback's options (a default State when a command runs standalone in tests)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State()


def console(ctx: typer.Context, json_flag: bool = False) -> Console:
    """The Console for this invocation (``--json`` given globally or on the command)."""
    st = state(ctx)
    return Console(json_mode=json_flag or st.json, verbose=st.verbose)


def settings(ctx: typer.Context) -> Settings:
    """Load prodai.yaml as the global ``--config`` option, ``$PRODAI_CONFIG`` or ``./prodai.yaml`` say."""
    # pydantic model construction costs ~150 ms: keep it out of `prodai --help`.
    from prodai_cli.config import load_settings

    return load_settings(state(ctx).config_path)
