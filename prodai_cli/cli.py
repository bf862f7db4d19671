"""The prodai command line: the Typer root, global options and the one error handler.

Each command lives in its own module under ``commands/``; this file only wires them up. Heavy libraries
(torch, transformers, mlflow, docker, locust) are imported inside the functions that use them, so
``prodai --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from prodai_cli import __version__
from prodai_cli.commands import ab, init, keys, models, register, serve
from prodai_cli.commands import batch as batch_cmd
from prodai_cli.commands import check as check_cmd
from prodai_cli.commands import config as config_cmd
from prodai_cli.commands import deploy as deploy_cmd
from prodai_cli.commands import loadtest as loadtest_cmd
from prodai_cli.commands import ship as ship_cmd
from prodai_cli.commands._common import State
from prodai_cli.errors import EXIT_FAILURE, EXIT_USAGE, ProdaiError

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 failure, 2 usage or configuration error."

app = typer.Typer(
    name="prodai",
    help=f"Take a transformers model to production and keep it there.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prodai {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="prodai.yaml to use (default: $PRODAI_CONFIG, then ./prodai.yaml)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print debug details on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options; see each command's --help."""
    ctx.obj = State(config_path=config, json=json_output, verbose=verbose)


app.command("init")(init.command)
app.add_typer(config_cmd.app, name="config")
app.command("register")(register.command)
app.add_typer(models.app, name="models")
app.command("serve")(serve.command)
app.command("batch")(batch_cmd.command)
app.add_typer(keys.app, name="keys")
app.command("ab-set")(ab.set_command)
app.command("ab-show")(ab.show_command)
app.command("loadtest")(loadtest_cmd.command)
app.command("check")(check_cmd.command)
app.command("ship")(ship_cmd.command)
app.add_typer(deploy_cmd.app, name="deploy")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, mapping ProdaiError to its message and exit code (traceback with PRODAI_DEBUG=1)."""
    from prodai_cli.console import Console

    try:
        app(args=argv, prog_name="prodai")
    except ProdaiError as exc:
        if os.environ.get("PRODAI_DEBUG") == "1":
            raise
        Console().error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Console().error("Interrupted")
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one readable line instead of a traceback
        if os.environ.get("PRODAI_DEBUG") == "1":
            raise
        Console().error(f"Unexpected error: {type(exc).__name__}: {exc}", "Rerun with PRODAI_DEBUG=1 for a traceback")
        sys.exit(EXIT_FAILURE)


__all__ = ["EXIT_USAGE", "app", "main"]
