"""The prodai command line: the Typer root, global options and the one error handler.

Each command lives in its own module under ``commands/``; this file only wires them up. Heavy libraries
(torch, transformers, mlflow, docker, locust) are imported inside the functions that use them, so
``prodai --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, NoReturn

import typer

from prodai_cli import __version__
from prodai_cli.commands import ab, init, jobs, keys, models, register, serve, worker
from prodai_cli.commands import batch as batch_cmd
from prodai_cli.commands import check as check_cmd
from prodai_cli.commands import config as config_cmd
from prodai_cli.commands import deploy as deploy_cmd
from prodai_cli.commands import export as export_cmd
from prodai_cli.commands import loadtest as loadtest_cmd
from prodai_cli.commands import rollout as rollout_cmd
from prodai_cli.commands import ship as ship_cmd
from prodai_cli.commands._common import State
from prodai_cli.errors import EXIT_FAILURE, EXIT_USAGE, ProdaiError

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 failure, 2 usage or configuration error."

app = typer.Typer(
    name="prodai",
    help=f"Take a transformers model to production and keep it there.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
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
app.command("export")(export_cmd.command)
app.command("serve")(serve.command)
app.command("batch")(batch_cmd.command)
app.add_typer(keys.app, name="keys")
app.command("ab-set")(ab.set_command)
app.command("ab-show")(ab.show_command)
app.command("ab-shadow")(ab.shadow_command)
app.command("loadtest")(loadtest_cmd.command)
app.command("check")(check_cmd.command)
app.command("ship")(ship_cmd.command)
app.command("rollout")(rollout_cmd.command)
app.add_typer(deploy_cmd.app, name="deploy")
app.add_typer(jobs.app, name="jobs")
app.command("worker")(worker.command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, mapping ProdaiError to its message and exit code (traceback with PRODAI_DEBUG=1).

    Args:
        argv: The arguments; None means ``sys.argv[1:]`` and that this is the process's entry point (the
            ``prodai`` script, ``python -m prodai_cli``), which then ends through :func:`exit_process`.

    """
    if argv is not None:
        _dispatch(list(argv))
        return
    try:
        _dispatch(sys.argv[1:])
    except SystemExit as exc:
        exit_process(exc.code)
    exit_process(0)


def exit_process(code: object) -> NoReturn:
    """End the process with ``code`` (a ``SystemExit`` code), skipping the interpreter's module teardown.

    Once torch is imported, Python's own finalization (clearing every module and its objects) takes about a
    second on this project's 2-core machines, after the command's work is done and its output written:
    measured 1.0-1.3 s for ``import torch`` alone, against 0.05 s for this path, which is the whole start-up
    cost of a short ``prodai batch``. Everything a normal exit promises is still done, in the same order:
    non-daemon threads are joined, ``atexit`` callbacks run (logging's flush, ``weakref.finalize`` clean-ups
    such as temporary directories, MLflow's), and stdout/stderr are flushed; only the teardown is skipped.
    Processes that never imported torch exit the usual way.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)  # what sys.exit("message") prints
        code = 0 if code is None else 1
    import atexit
    import threading

    # What the interpreter's finalization does first, by the same function: run threading's own exit hooks
    # (concurrent.futures tells its idle workers to stop there; joining them before that would wait forever),
    # then join every non-daemon thread. Without it (not CPython), or without torch, exit the usual way.
    shutdown = getattr(threading, "_shutdown", None)
    if "torch" not in sys.modules or shutdown is None:
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`prodai ... | head`) or a closed stream: nothing is left to lose.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _dispatch(args: list[str]) -> None:
    """Run the app on ``args`` with the one error handler (exits through ``SystemExit`` like Click)."""
    from prodai_cli.console import Console

    json_mode = _wants_json(args)
    try:
        if json_mode:
            _run_json(args)
        else:
            app(args=args, prog_name="prodai")
    except ProdaiError as exc:
        if os.environ.get("PRODAI_DEBUG") == "1":
            raise
        Console().error(exc.message, exc.hint)
        if json_mode:
            _print_json_error(type(exc).__name__, exc.message, exc.hint, exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Console().error("Interrupted")
        if json_mode:
            _print_json_error("KeyboardInterrupt", "Interrupted", None, 130)
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one readable line instead of a traceback
        if os.environ.get("PRODAI_DEBUG") == "1":
            raise
        hint = "Rerun with PRODAI_DEBUG=1 for a traceback"
        Console().error(f"Unexpected error: {type(exc).__name__}: {exc}", hint)
        if json_mode:
            _print_json_error(type(exc).__name__, f"Unexpected error: {exc}", hint, EXIT_FAILURE)
        sys.exit(EXIT_FAILURE)


def _wants_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the options (before a ``--`` that ends them)."""
    options = args[: args.index("--")] if "--" in args else args
    return "--json" in options


def _run_json(args: list[str]) -> None:
    """Run the app so that usage errors reach us: a script reading stdout gets a JSON error object too."""
    # typer carries its own copy of click; its exceptions are the ones raised.
    from typer._click.exceptions import ClickException

    try:
        code = app(args=args, prog_name="prodai", standalone_mode=False)
    except ClickException as exc:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)  # the same human message as without --json
        _print_json_error("UsageError", exc.format_message(), None, exc.exit_code)
        sys.exit(exc.exit_code)
    except typer.Abort:
        raise KeyboardInterrupt from None
    if isinstance(code, int) and code:
        sys.exit(code)


def _print_json_error(kind: str, message: str, hint: str | None, exit_code: int) -> None:
    """The one error object of JSON mode: ``{"error": {type, message, hint, exit_code}}`` on stdout."""
    import json

    from prodai_cli.console import Console

    if Console.json_result_printed:
        return
    error = {"type": kind, "message": message, "hint": hint, "exit_code": exit_code}
    sys.stdout.write(json.dumps({"error": error}, indent=2) + "\n")
    sys.stdout.flush()


__all__ = ["EXIT_USAGE", "app", "main"]
